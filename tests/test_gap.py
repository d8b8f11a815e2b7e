"""Gowal et al.'s gap study: a seeded, class-balanced training subset whose left-out images are the extra real arm,
and the grid that compares real only, extra real, generated and Gaussian arms on the same subset."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from genrobust import config, io
from genrobust.data.prepare import prepare_data
from genrobust.data.subset import class_balanced
from genrobust.errors import UserError

from .conftest import ROOT, parse_dry_run, run, run_two_at_a_time


def _rows(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


def test_the_subset_is_class_balanced_seeded_and_disjoint_from_the_extra_and_test_sets(tmp_path: Path) -> None:
    settings = config.resolve(config.load_params(ROOT / "params.yaml"), "digits_gap")
    prepare_data(settings, tmp_path / "train.npz", tmp_path / "test.npz", tmp_path / "extra_real.npz")
    train_x, train_y = io.load_images(tmp_path / "train.npz", num_classes=10)
    test_x, _ = io.load_images(tmp_path / "test.npz", num_classes=10)
    extra = io.open_npz(tmp_path / "extra_real.npz")
    assert np.bincount(train_y).tolist() == [20] * 10 and len(extra["label"]) == 1437 - 200 and len(test_x) == 360
    assert not _rows(train_x) & _rows(np.asarray(extra["image"]))                  # no image in both
    assert not (_rows(train_x) | _rows(np.asarray(extra["image"]))) & _rows(test_x)
    whole = config.resolve(config.load_params(ROOT / "params.yaml"), "digits")
    prepare_data(whole, tmp_path / "all.npz", tmp_path / "all_test.npz", tmp_path / "none.npz")
    all_x, _ = io.load_images(tmp_path / "all.npz", num_classes=10)
    assert _rows(train_x) | _rows(np.asarray(extra["image"])) == _rows(all_x)     # the two split the training set
    assert np.array_equal(io.load_images(tmp_path / "all_test.npz", 10)[0], test_x)   # the test set untouched
    assert len(io.open_npz(tmp_path / "none.npz")["label"]) == 0                  # no subset: no extra real data
    labels = np.arange(100) % 10
    assert np.array_equal(class_balanced(labels, 3, 7, 10, "x"), class_balanced(labels, 3, 7, 10, "x"))
    assert not np.array_equal(class_balanced(labels, 3, 7, 10, "x"), class_balanced(labels, 3, 8, 10, "x"))
    with pytest.raises(UserError, match=r"^datasets.d.subset.per_class = 11: class 0 has only 10 training images"):
        class_balanced(labels, 11, 0, 10, "datasets.d")


# The gap grid at its smallest: every stage of every arm runs, in about two minutes (one seed, 40 images an arm,
# one epoch, 16 test points), over the README's overlays.
TINY = {"presets": {"smoke": {
    "diffusion": {"steps": 20, "checkpoint_every": 20, "grid_every": 20},
    "sample": {"num_images": 40, "shard_size": 40, "steps": 2},
    "classifier": {"epochs": 1},
    "quality": {"arc": {"images": 40, "epochs": 1}},
    "adv_train": {"epochs": 1, "epoch_images": 64},
    "evaluate": {"n_examples": 16}}},
    "grids": {"gowal_gap_smoke": {"num_images": [40], "seed": [0]}}}
ARMS = ("none_0", "external_40", "edm_40", "gaussian_40")


@pytest.mark.e2e
def test_a_tiny_gap_grid_runs_every_arm_on_the_subset_and_the_report_pairs_each_with_real_only(main_run: Path,
                                                                                                 tmp_path: Path) -> None:
    """The README's gap-study command at toy sizes on a copy of the main run; then the report, as `make report` runs it."""
    project = tmp_path / "p"
    shutil.copytree(main_run, project, symlinks=True)
    (project / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    command = ["snakemake", "--cores", "2", "grid_gowal_gap_smoke", "--configfile", "workflow/demo.yaml",
               "workflow/gap_smoke.yaml", "tiny.yaml"]
    jobs = parse_dry_run(run_two_at_a_time(command, project).stderr)     # the jobs it ran, as it logged them
    cells = [job["output"][0] for job in jobs["evaluate_cell"]]
    assert sorted(cells) == sorted(f"results/grid/gowal_gap_smoke/digits_gap_linf_{arm}_silu_seed0.json" for arm in ARMS)
    for rule in ("train_diffusion", "train_classifier", "fit_gaussian"):      # the generators see the subset only
        inputs = jobs[rule][0]["input"]
        assert inputs[0] == "data/digits_gap/train.npz" and not any("extra_real" in path for path in inputs), rule
    assert "data/digits_gap/extra_real.npz" in jobs["import_external"][0]["input"]
    run(["python", "-m", "genrobust", "report", "--results", "results", "--summary-csv", "results/summary.csv",
         "--summary-md", "results/summary.md", "--scaling", "results/scaling.json", "--plots", "results/plots"], project)
    _, labels = io.load_images(project / "data/digits_gap/train.npz", num_classes=10)
    assert np.bincount(labels).tolist() == [20] * 10
    trained_on = {io.sha256(project / "data/digits_gap/train.npz")}
    for arm in ARMS:
        result = json.loads((project / f"results/grid/gowal_gap_smoke/digits_gap_linf_{arm}_silu_seed0.json").read_text())
        assert {result["hashes"]["train_data_sha256"]} == trained_on and len(result["per_point"]["robust"]) == 16, arm
    paired = (project / "results/summary.md").read_text().split("## Against real data alone, paired")[1]
    for generator in ("external", "edm", "gaussian"):
        row = rf"^\| gowal_gap_smoke \| digits_gap \| linf \| {generator} \| 40 \| 1 \| 16 \| "
        assert re.search(row, paired, re.M), paired
    with Image.open(project / "results/plots/paired_vs_none.png") as image:
        image.verify()
