"""Gowal et al.'s gap study: a seeded, class-balanced training subset whose left-out images are the extra real arm,
and the grid that compares real only, extra real, generated and Gaussian arms on the same subset."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from genrobust import config, io
from genrobust.data.prepare import prepare_data
from genrobust.data.subset import class_balanced
from genrobust.errors import UserError

from .conftest import ENV, ROOT, copy_project


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


def test_the_gap_grid_plans_every_arm_and_only_the_subset_trains_the_generators(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    done = subprocess.run(["snakemake", "-n", "-p", "--cores", "2", "grid_gowal_gap_smoke", "--configfile",
                           "workflow/demo.yaml", "workflow/gap_smoke.yaml"], cwd=project, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = re.findall(r"^rule (\w+):\n((?:    .*\n)*)", done.stdout, re.M)
    cells = [body for rule, body in jobs if rule == "evaluate_cell"]
    assert len(cells) == 12                                        # 4 arms x 3 seeds
    for arm in ("none_0", "external_1000", "edm_1000", "gaussian_1000"):
        assert sum(f"digits_gap_linf_{arm}_" in body for body in cells) == 3, arm
    inputs = {rule: re.search(r"input: (.*)", body).group(1) for rule, body in jobs if rule != "evaluate_cell"}
    for rule in ("train_diffusion", "train_classifier", "fit_gaussian"):
        assert "data/digits_gap/train.npz" in inputs[rule].split(", "), rule
    assert "data/digits_gap/extra_real.npz" in inputs["import_external"].split(", ")
