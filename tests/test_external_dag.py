"""A released set (DM-Improves-AT's npz format) through the real Snakemake DAG: import, judge, label, train, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_digits

from genrobust.data.transform import to_rgb32

from .conftest import copy_project, run
from .test_faults import SHORT


def _released_parts(directory: Path) -> list[str]:
    """Two files as the authors release them: `image` uint8 Nx32x32x3 and `label`, here real digits (mirrored
    left-right, so they are not the training images themselves)."""
    digits = load_digits()
    images = to_rgb32(digits.images[:, :, ::-1], max_value=16.0)
    directory.mkdir()
    paths = []
    for part, rows in enumerate((slice(0, 200), slice(200, 400))):
        path = directory / f"part{part}.npz"
        np.savez(path, image=images[rows], label=digits.target[rows].astype(np.int64))
        paths.append(str(path))
    return paths


@pytest.mark.e2e
def test_a_released_set_imports_trains_and_evaluates_through_snakemake(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in SHORT.items():
        params["presets"]["smoke"][section].update(values)
    params["presets"]["smoke"]["sample"]["num_images"] = 300     # of the 400 released: across the two files
    params["generator"] = "external"
    params["datasets"]["digits"]["external"] = {"paths": _released_parts(tmp_path / "released"), "labels": "given"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    done = run(["snakemake", "--cores", "2", "results/digits_linf.json"], project)
    assert "train_diffusion" not in done.stdout + done.stderr                      # imported, not generated
    result = json.loads((project / "results/digits_linf.json").read_text())
    assert result["generator"] == "external" and result["num_generated"] == 300
    quality = json.loads((project / "data/digits/generated/external/quality.json").read_text())
    assert result["generated_quality"]["classifier_fd"] == quality["classifier_fd"]["value"]
    manifest = json.loads((project / "data/digits/generated/external/shards/manifest.json").read_text())
    assert manifest["count"] == 300 and manifest["labels"] == "given"
    assert {"import_external", "quality", "pseudo_label", "adv_train"} <= set(result["stage_wall_time_s"])
