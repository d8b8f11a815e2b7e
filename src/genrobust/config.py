"""Load, override, validate and resolve params.yaml.

One loader serves both pipelines: the Snakefile calls `validate` on Snakemake's `config`
(so `--config` overrides are checked too) and passes any overrides on to the CLI as
`--set key=value`, and every CLI stage calls `load_params`, which is what DVC runs. So a
stage sees the same values whichever tool started it.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import yaml

from . import yaml12
from .errors import UserError

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "params.schema.yaml"   # package data (workflow/schemas links here)
GLOBAL_KEYS = ("seed", "preset", "datasets")   # every stage resolves its dataset and preset from these
STAGE_SECTIONS = ("diffusion", "sample", "gaussian", "classifier", "quality", "pseudo_label", "adv_train",
                  "smooth_train", "certify", "evaluate")


@lru_cache(maxsize=1)
def _schema() -> dict:
    """The params schema, with each preset section made partial (a preset overrides only what it names)."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    defs = schema["$defs"]
    for section in STAGE_SECTIONS:
        partial = _without_required(defs[section], defs)
        defs[f"{section}_partial"] = partial
        defs["preset"]["properties"][section] = {"$ref": f"#/$defs/{section}_partial"}
    return schema


def _without_required(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _without_required(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _without_required(value, defs) for key, value in node.items() if key != "required"}
    if isinstance(node, list):
        return [_without_required(item, defs) for item in node]
    return node


def _key(path: Iterable[Any]) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def describe_error(error: jsonschema.ValidationError) -> str:
    """One line naming the key, the bad value and what is allowed."""
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        prefix = f"{key}." if error.absolute_path else ""
        return f"unknown key {prefix}{extra[0]}; allowed keys here: {', '.join(allowed)}"
    if error.validator == "required":
        return f"{key}: {error.message}"
    if error.validator == "enum":
        return f"{key} = {error.instance!r}: must be one of {', '.join(map(repr, error.validator_value))}"
    if error.validator == "type":
        expected = error.validator_value
        return f"{key} = {error.instance!r}: must be of type {expected if isinstance(expected, str) else ' or '.join(expected)}"
    bounds = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "greater than",
              "exclusiveMaximum": "less than", "minItems": "a list with at least this many items:"}
    if error.validator in bounds:
        return f"{key} = {error.instance!r}: must be {bounds[error.validator]} {error.validator_value}"
    return f"{key} = {error.instance!r}: {error.message}"


def validate(params: Mapping[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """Check params against the schema and the cross-key rules; return a plain-dict copy."""
    params = json.loads(json.dumps(params))  # plain types only (Snakemake hands us its own Config class)
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise UserError(f"{source}: {describe_error(jsonschema.exceptions.best_match(errors))}")
    for name in params["pipeline"]["datasets"]:
        if name not in params["datasets"]:
            raise UserError(f"{source}: pipeline.datasets names {name!r}, which is not declared under datasets "
                            f"(declared: {', '.join(sorted(params['datasets']))})")
    generator = params["generator"]
    if generator in ("edm", "ddpm") and generator not in params["pipeline"]["diffusion"]:
        raise UserError(f"{source}: generator = {generator!r} but pipeline.diffusion = {params['pipeline']['diffusion']}; "
                        f"add {generator!r} there so that DVC trains that diffusion model")
    for name in params["datasets"]:
        resolve(params, name, source)
    external = [name for name in params["pipeline"]["datasets"] if "external" not in params["datasets"][name]]
    if generator == "external" and external:
        raise UserError(f"{source}: generator = 'external' but datasets.{external[0]} has no `external` "
                        "(paths: the released npz files, labels: given | classifier)")
    for grid, spec in params["grids"].items():
        if spec["dataset"] not in params["datasets"]:
            raise UserError(f"{source}: grids.{grid}.dataset = {spec['dataset']!r} is not declared under datasets "
                            f"(declared: {', '.join(sorted(params['datasets']))})")
        if "external" in spec.get("generator", []) and "external" not in params["datasets"][spec["dataset"]]:
            raise UserError(f"{source}: grids.{grid}.generator lists 'external' but datasets.{spec['dataset']} "
                            "has no `external` (paths: the released npz files, labels: given | classifier)")
    for grid in params["pipeline"]["grids"]:
        if grid not in params["grids"]:
            raise UserError(f"{source}: pipeline.grids names {grid!r}, which is not declared under grids "
                            f"(declared: {', '.join(sorted(params['grids']))})")
    return params


def resolve(params: Mapping[str, Any], dataset: str, source: str = "params.yaml") -> dict[str, Any]:
    """The effective settings for one dataset: the base sections with its preset merged on top."""
    if dataset not in params["datasets"]:
        raise UserError(f"{source}: dataset {dataset!r} is not declared under datasets "
                        f"(declared: {', '.join(sorted(params['datasets']))})")
    info = params["datasets"][dataset]
    preset = info["auto_preset"] if params["preset"] == "auto" else params["preset"]
    settings = {section: _merge(params[section], params["presets"][preset][section]) for section in STAGE_SECTIONS}
    settings["sample"] = _merge(settings["sample"], info.get("sample", {}))   # per dataset (DM-Improves-AT's steps)
    settings.update(preset=preset, dataset=dict(info, name=dataset), seed=params["seed"],
                    generator=params["generator"], threats=params["threats"])
    arc = settings["quality"]["arc"]
    if list(arc["eps"]) != sorted(arc["eps"]) or arc["eps"][0] != 0 or arc["select_eps"] not in arc["eps"]:
        raise UserError(f"{source}: quality.arc.eps = {arc['eps']} (preset {preset}): must increase from 0 and hold "
                        f"quality.arc.select_eps = {arc['select_eps']}")
    diffusion = settings["diffusion"]
    if diffusion["ema_halflife_images"] is None and diffusion["ema_decay"] is None:
        raise UserError(f"{source}: diffusion.ema_halflife_images and diffusion.ema_decay are both null (preset "
                        f"{preset}): one of them sets the weight average")
    classes, count = info["num_classes"], settings["sample"]["num_images"]
    if count % classes:
        raise UserError(f"{source}: sample.num_images = {count} (preset {preset}, dataset {dataset}): "
                        f"must be a multiple of the class count {classes} so that samples are class-balanced")
    return settings


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else copy.deepcopy(value)
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        data = yaml.load(path.read_text(), Loader=yaml12.Loader)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    return data


def apply_overrides(params: dict[str, Any], overrides: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """Apply `dotted.key=value` overrides, the value read as YAML 1.2 (so `1e-6`, `true`, `[a, b]` work)."""
    params = copy.deepcopy(params)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"{source} {item!r}: expected KEY=VALUE, e.g. adv_train.generated_fraction=0.5")
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"{source} {item!r}: {part} is not a section")
        node[leaf] = yaml12.load(raw)
    return params


def load_params(path: str | Path = "params.yaml", overrides: Iterable[str] = ()) -> dict[str, Any]:
    return validate(apply_overrides(read_yaml(path), overrides), str(path))


def overrides_between(base: Mapping[str, Any], config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """`key=value` strings that turn `base` into `config`: how Snakemake's --config reaches the CLI."""
    changes = []
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            changes += overrides_between(base[key], value, f"{dotted}.")
        elif key not in base or base[key] != value:
            changes.append(f"{dotted}={json.dumps(value)}")
    return changes


def changes_for(changes: Iterable[str], sections: Iterable[str]) -> list[str]:
    """The `key=value` changes that can alter what a stage reads: its sections, or the global keys.

    Snakemake reruns a rule when its params change; handing each rule only these keeps a change to
    one section from replanning rules that never read it.
    """
    sections = set(sections) | set(GLOBAL_KEYS)
    kept = []
    for item in changes:
        parts = item.partition("=")[0].split(".")
        if parts[0] in sections or (parts[0] == "presets" and len(parts) > 2 and parts[2] in sections):
            kept.append(item)
    return kept
