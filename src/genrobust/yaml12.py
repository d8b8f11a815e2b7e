"""Scalars typed the way YAML 1.2 types them, for values that arrive as text.

PyYAML implements YAML 1.1, where `1e-6` (no dot) is a string, and Snakemake reads nested
`--config` values with YAML's BaseLoader, where everything is. YAML 1.2's core schema (what
users expect, and what JSON agrees with) makes them numbers; params.yaml's schema then decides
whether the type is right.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULL = {"null", "Null", "NULL", "~", ""}


def scalar(text: str) -> Any:
    """A plain scalar's YAML 1.2 (core schema) value."""
    if text in _BOOL:
        return _BOOL[text]
    if text in _NULL:
        return None
    if _INT.fullmatch(text):
        return int(text, 0) if text[:2] in ("0o", "0x") else int(text)
    if _FLOAT.fullmatch(text):
        return float(text.replace(".", "", 1)) if text.lower().lstrip("+-").startswith(".inf") or \
            text.lower() == ".nan" else float(text)
    return text


def typed(value: Any) -> Any:
    """`value` with every string that is a YAML 1.2 number, boolean or null turned into one."""
    if isinstance(value, str):
        return scalar(value)
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return value


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads a plain `1e-06` as a float, as YAML 1.2 does.

    DVC writes `dvc exp run -S key=1e-6` into params.yaml as a plain `1e-06`, which YAML 1.1
    reads as text. Quoted scalars stay text: resolvers only see plain ones.
    """


Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789"))


def load(text: str) -> Any:
    """A command-line value: YAML flow syntax (`0.5`, `[a, b]`, `{k: 1}`), scalars typed as YAML 1.2 does."""
    return typed(yaml.load(text, Loader=yaml.BaseLoader))
