"""The install pins agree everywhere they are written down."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib

import yaml

from .conftest import ENV, ROOT


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


def test_a_plain_install_runs_from_another_directory(tmp_path) -> None:
    """`pip install .` (not editable): the schemas ship inside the package, so stages run anywhere."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=600)
    assert (target / "genrobust" / "schemas" / "params.schema.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(ENV, PYTHONPATH=str(target))
    where = subprocess.run([sys.executable, "-c", "import genrobust; print(genrobust.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target))
    helped = subprocess.run([sys.executable, "-m", "genrobust", "adv_train", "--help"], cwd=elsewhere, env=env,
                            capture_output=True, text=True)
    assert helped.returncode == 0 and "--threat" in helped.stdout, helped.stderr
    ran = subprocess.run([sys.executable, "-m", "genrobust", "prepare_data", "--dataset", "digits",
                          "--params", str(ROOT / "params.yaml"), "--train-out", "train.npz", "--test-out", "test.npz",
                           "--extra-out", "extra.npz"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert (elsewhere / "train.npz").is_file() and (elsewhere / "test.npz").is_file()
