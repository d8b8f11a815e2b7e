"""The report stage: table, figures and the scaling fit, from result JSONs in the layout the pipelines write."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genrobust.errors import UserError
from genrobust.report.collect import collect
from genrobust.report.scaling import fit_curve, saturating_power_law

from .conftest import ENV


def test_the_power_law_fit_recovers_known_parameters() -> None:
    x = np.array([2e3, 2e4, 2e5, 1e6, 2e7, 5e7])
    fit = fit_curve(x, saturating_power_law(x, 0.72, 1.5, 0.35))
    assert fit["status"] == "ok"
    assert fit["params"] == pytest.approx({"a": 0.72, "b": 1.5, "c": 0.35}, rel=1e-3)
    assert fit["rmse"] < 1e-6


def test_too_few_sizes_are_reported_not_fitted() -> None:
    fit = fit_curve([0, 1000, 1000, 5000], [0.3, 0.4, 0.41, 0.45])
    assert fit["status"] == "too few points" and len(fit["points"]) == 4


def _result(dataset: str, generator: str, num: int, robust: float, activation: str = "silu") -> dict:
    return {"dataset": dataset, "threat": "linf", "clean_accuracy": robust + 0.3, "robust_accuracy": robust,
            "model": {"arch": "wrn", "depth": 10, "width": 1, "activation": activation}, "generator": generator,
            "num_generated": num, "preset": "smoke", "n_examples": 64, "images_seen": 12800,
            "attack": {"version": "standard"}, "stage_wall_time_s": {"adv_train": 10.0 + num / 100},
            "training": {"history": [{"images_seen": 2560 * e, "loss": 1.0 / e, "val_robust_accuracy": 0.1 * e}
                                     for e in (1, 2, 3)]}}


def test_report_lists_every_result_by_grid_and_draws_figures_that_open(tmp_path: Path) -> None:
    results = tmp_path / "results"
    (results / "grid" / "sehwag_smoke").mkdir(parents=True)
    (results / "digits_linf.json").write_text(json.dumps(_result("digits", "edm", 600, 0.45)))
    (results / "digits_linf.model_info.json").write_text("{}")      # a side file, not a result
    for num, robust in ((0, 0.30), (60, 0.36), (200, 0.40), (600, 0.43)):
        cell = f"digits_linf_{'none' if num == 0 else 'edm'}_{num}_silu"
        record = _result("digits", "none" if num == 0 else "edm", num, robust)
        (results / "grid" / "sehwag_smoke" / f"{cell}.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "genrobust", "report", "--results", str(results),
                           "--summary-csv", str(out / "summary.csv"), "--summary-md", str(out / "summary.md"),
                           "--scaling", str(out / "scaling.json"), "--plots", str(out / "plots")],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["grid"], r["num_generated"]) for r in rows] == [
        ("pipeline", "600"), ("sehwag_smoke", "0"), ("sehwag_smoke", "60"), ("sehwag_smoke", "200"),
        ("sehwag_smoke", "600")]
    markdown = (out / "summary.md").read_text()
    assert "## pipeline" in markdown and "## sehwag_smoke" in markdown and "digits_linf_edm_60_silu" in markdown
    fits = json.loads((out / "scaling.json").read_text())
    assert fits["digits_linf_edm"]["data"]["status"] == "ok"            # 60, 200, 600 (and the pipeline's 600)
    assert fits["digits_linf_none"]["data"]["status"] == "too few points"
    for name in ("robust_vs_generated", "clean_vs_robust", "training_curves", "scaling"):
        with Image.open(out / "plots" / f"{name}.png") as image:
            image.verify()
            assert image.size[0] > 200 and image.size[1] > 200, name


def test_a_broken_result_is_named(tmp_path: Path) -> None:
    (tmp_path / "digits_linf.json").write_text('{"dataset": "digits"}')
    with pytest.raises(UserError, match=r"digits_linf.json: not a genrobust result \(missing threat"):
        collect(tmp_path)
