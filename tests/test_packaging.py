"""The install pins agree everywhere they are written down."""

from __future__ import annotations

import tomllib

import yaml

from .conftest import ROOT


def test_conda_env_pins_match_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "envs" / "genrobust.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert pip == project


def test_constraints_pin_every_direct_dependency() -> None:
    pinned = dict(line.split("==") for line in (ROOT / "envs" / "constraints.txt").read_text().splitlines()
                  if "==" in line)
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, _, version = requirement.partition("==")
        if version:
            assert pinned[name] == version, name
