"""The report stage: table, figures and the scaling fit, from result JSONs in the layout the pipelines write."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from genrobust.errors import UserError
from genrobust.models.checkpoint import build_classifier
from genrobust.report.collect import collect
from genrobust.report.flops import flops_per_image
from genrobust.report.report import report
from genrobust.report.scaling import fit_curve, fit_scaling, saturating_power_law

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
    return {"dataset": dataset, "threat": "linf", "eps": 8 / 255, "clean_accuracy": min(robust + 0.3, 1.0),
            "robust_accuracy": robust, "model": {"arch": "wrn", "depth": 10, "width": 1, "activation": activation},
            "generator": generator, "num_generated": num, "preset": "smoke", "n_examples": 64,
            "n_examples_requested": 64, "partial": False, "images_seen": 12800 + 10 * num, "training_loss": "trades",
            "attack": {"version": "standard"}, "stage_wall_time_s": {"adv_train": 10.0 + num / 100},
            "sanity": {"checks": {"autoattack_at_most_pgd": {"passed": True, "detail": "AutoAttack <= PGD-20"}},
                       "warnings": []},
            "training": {"attack_steps": 2,
                         "history": [{"images_seen": 2560 * e, "loss": 1.0 / e, "val_robust_accuracy": 0.1 * e}
                                     for e in (1, 2, 3)]}}


def _write(results: Path, grid: str, cell: str, record: dict) -> None:
    (results / "grid" / grid).mkdir(parents=True, exist_ok=True)
    (results / "grid" / grid / f"{cell}.json").write_text(json.dumps(record))


def _group(fits: dict, **key: object) -> dict:
    found = [g for g in fits["groups"] if all(g["key"][k] == v for k, v in key.items())]
    assert len(found) == 1, [g["name"] for g in fits["groups"]]
    return found[0]


def test_report_lists_every_result_by_grid_and_draws_figures_that_open(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "digits_linf.json").write_text(json.dumps(_result("digits", "edm", 600, 0.45)))
    (results / "digits_linf.model_info.json").write_text("{}")      # a side file, not a result
    for num, robust in ((0, 0.30), (60, 0.36), (200, 0.40), (600, 0.43)):
        cell = f"digits_linf_{'none' if num == 0 else 'edm'}_{num}_silu"
        _write(results, "sehwag_smoke", cell, _result("digits", "none" if num == 0 else "edm", num, robust))
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
    assert {(r["attack_version"], r["partial"], r["sanity"], r["flagged"]) for r in rows} == {
        ("standard", "False", "ok", "False")}
    markdown = (out / "summary.md").read_text()
    assert "## pipeline" in markdown and "## sehwag_smoke" in markdown and "digits_linf_edm_60_silu" in markdown
    assert "⚠" not in markdown
    fits = json.loads((out / "scaling.json").read_text())
    assert _group(fits, generator="edm")["fits"]["data"]["status"] == "ok"   # 60, 200, 600 (and the pipeline's 600)
    assert _group(fits, generator="none")["fits"]["data"]["status"] == "too few points"
    for name in ("robust_vs_generated", "clean_vs_robust", "training_curves", "scaling"):
        with Image.open(out / "plots" / f"{name}.png") as image:
            image.verify()
            assert image.size[0] > 200 and image.size[1] > 200, name


def test_a_flagged_result_is_marked_in_the_csv_and_the_markdown(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "out"
    _write(results, "g", "clean_cell", _result("digits", "edm", 60, 0.40))
    masked = _result("digits", "edm", 200, 0.80)
    masked["sanity"]["checks"]["pgd_falls_when_eps_doubles"] = {"passed": False, "detail": "PGD at 2 eps < at eps"}
    masked["sanity"]["warnings"] = ["sanity check pgd_falls_when_eps_doubles failed: expected PGD at 2 eps < at eps "
                                    "(gradient masking?)"]
    _write(results, "g", "masked_cell", masked)
    _write(results, "g", "partial_cell", dict(_result("digits", "edm", 600, 0.45), partial=True, n_examples=32,
                                              note="partial: the test set holds only 32 points; 64 were asked for"))
    report(results, out / "summary.csv", out / "summary.md", out / "scaling.json", out / "plots")
    with open(out / "summary.csv") as handle:
        rows = {r["cell"]: r for r in csv.DictReader(handle)}
    assert (rows["clean_cell"]["sanity"], rows["clean_cell"]["partial"], rows["clean_cell"]["flagged"]) == \
        ("ok", "False", "False")
    assert (rows["masked_cell"]["sanity"], rows["masked_cell"]["flagged"]) == ("pgd_falls_when_eps_doubles", "True")
    assert (rows["partial_cell"]["partial"], rows["partial_cell"]["flagged"]) == ("True", "True")
    assert {r["attack_version"] for r in rows.values()} == {"standard"}
    markdown = (out / "summary.md").read_text()
    assert "| ⚠ masked_cell[^1] |" in markdown and "| ⚠ partial_cell[^2] |" in markdown
    assert "| clean_cell |" in markdown
    assert "[^1]: g/masked_cell: sanity check pgd_falls_when_eps_doubles failed" in markdown
    assert "[^2]: g/partial_cell: partial: the test set holds only 32 points" in markdown


def _law(num: int, a: float, b: float, c: float) -> float:
    return float(saturating_power_law(np.array(float(num)), a, b, c))


def test_configurations_are_fitted_apart_and_flagged_results_left_out(tmp_path: Path) -> None:
    results = tmp_path / "results"
    sizes = (100, 300, 1000, 3000, 10000)
    for num in sizes:
        _write(results, "g", f"silu_{num}", _result("digits", "edm", num, _law(num, 0.60, 1.5, 0.4)))
        _write(results, "g", f"relu_{num}", _result("digits", "edm", num, _law(num, 0.50, 1.0, 0.3), "relu"))
    masked = _result("digits", "edm", 30000, 0.95)
    masked["sanity"]["checks"]["autoattack_at_most_pgd"]["passed"] = False
    _write(results, "g", "silu_masked", masked)
    _write(results, "g", "silu_rand", dict(_result("digits", "edm", 1000, 0.9), attack={"version": "rand"}))
    fits = fit_scaling(collect(results)[0])
    assert len(fits["groups"]) == 3 and "never fitted" in fits["excluded"]
    silu, relu = _group(fits, activation="silu", attack_version="standard"), _group(fits, activation="relu")
    assert silu["fits"]["data"]["params"] == pytest.approx({"a": 0.60, "b": 1.5, "c": 0.4}, rel=1e-3)
    assert relu["fits"]["data"]["params"] == pytest.approx({"a": 0.50, "b": 1.0, "c": 0.3}, rel=1e-3)
    assert silu["results"] == 6 and silu["fitted"] == 5 and [e["cell"] for e in silu["excluded"]] == ["silu_masked"]
    assert silu["excluded"][0]["why"] == ["sanity check autoattack_at_most_pgd failed"]
    assert 30000 not in [p[0] for p in silu["fits"]["data"]["points"]]
    assert _group(fits, attack_version="rand")["fits"]["data"]["status"] == "too few points"
    per_image = flops_per_image({"arch": "wrn", "depth": 10, "width": 1, "activation": "silu"}, "trades", 2)
    images = [p[0] for p in silu["fits"]["images"]["points"]]
    assert images == [12800 + 10 * n for n in sizes]
    assert [p[0] for p in silu["fits"]["flops"]["points"]] == [per_image * n for n in images]
    assert [p[0] for p in silu["fits"]["wall"]["points"]] == [10.0 + n / 100 for n in sizes]
    assert all(silu["fits"][axis]["status"] == "ok" for axis in ("images", "flops", "wall"))
    by_images, by_flops = silu["fits"]["images"]["params"], silu["fits"]["flops"]["params"]
    assert (by_flops["a"], by_flops["c"]) == pytest.approx((by_images["a"], by_images["c"]), rel=1e-4)  # x's unit


def _written_out_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, steps: int) -> None:
    """A whole TRADES or PGD-AT step as training runs it, with .backward() (weights frozen) in the attack.

    training.losses takes the input gradient with torch.autograd.grad, which the counter cannot follow.
    """
    with torch.no_grad():
        clean_probs = F.softmax(model(x), dim=1) if loss == "trades" else None
    x_adv = x + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        model.requires_grad_(False)
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        objective = F.kl_div(F.log_softmax(logits, dim=1), clean_probs, reduction="sum") if loss == "trades" \
            else F.cross_entropy(logits, y)
        objective.backward()
        x_adv = (x + (x_adv.detach() + 2 / 255 * x_adv.grad.sign() - x).clamp(-8 / 255, 8 / 255)).clamp(0, 1)
        model.requires_grad_(True)
    if loss == "trades":
        clean_logits, adv_logits = model(x), model(x_adv)
        total = F.cross_entropy(clean_logits, y) + 6.0 * F.kl_div(F.log_softmax(adv_logits, dim=1),
                                                                  F.softmax(clean_logits, dim=1), reduction="batchmean")
    else:
        total = F.cross_entropy(model(x_adv), y)
    total.backward()


@pytest.mark.parametrize("loss", ["trades", "pgd"])
def test_flops_per_image_match_a_count_of_a_real_training_step(loss: str) -> None:
    spec = {"arch": "wrn", "depth": 10, "width": 2, "activation": "silu"}
    torch.manual_seed(0)
    model = build_classifier(spec, 10, [0.5] * 3, [0.25] * 3).train()
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    with FlopCounterMode(display=False) as counter:
        _written_out_step(model, x, y, loss, 3)
    assert flops_per_image(spec, loss, 3) * len(x) == pytest.approx(counter.get_total_flops(), rel=0.01)
    assert flops_per_image(spec, "trades", None) is None and flops_per_image(spec, None, 3) is None


def test_a_broken_result_is_named(tmp_path: Path) -> None:
    (tmp_path / "digits_linf.json").write_text('{"dataset": "digits"}')
    with pytest.raises(UserError, match=r"digits_linf.json: not a genrobust result \(missing threat"):
        collect(tmp_path)
    unknown = dict(_result("digits", "edm", 60, 0.4), training_loss="mart")
    (tmp_path / "digits_linf.json").write_text(json.dumps(unknown))
    with pytest.raises(UserError, match=r"digits_linf.json: unknown training loss 'mart'"):
        collect(tmp_path)


def test_the_paired_bootstrap_matches_a_case_counted_by_hand() -> None:
    """One seed, three points, the arm right where real-only is wrong on one of them: a resample's mean is k/3 with
    k ~ Bin(3, 1/3), so P(0) = 8/27 (above 2.5%) and P(k <= 2) = 26/27 (below 97.5%): the interval is [0, 1]."""
    from genrobust.report.paired import paired_difference
    mean, low, high = paired_difference(np.array([[0, 1, 1]]), np.array([[1, 1, 1]]), replicates=20000)
    assert (mean, low, high) == (pytest.approx(1 / 3), 0.0, 1.0)
    # Two seeds that disagree point by point: the same mean, and the pairing keeps the interval inside [-1, 1].
    mean, low, high = paired_difference(np.array([[0, 1], [1, 1]]), np.array([[1, 1], [1, 0]]), replicates=4000)
    assert mean == 0.0 and -1.0 <= low < 0 < high <= 1.0
    constant = paired_difference(np.zeros((3, 50)), np.ones((3, 50)))
    assert constant == (1.0, 1.0, 1.0)                      # every resample sees the same difference


def test_the_report_compares_each_arm_with_real_data_alone_point_by_point(tmp_path: Path) -> None:
    """Three seeds of none and edm on the same 64 points: edm right on 8 more of them in every seed."""
    results = tmp_path / "results"
    for seed in (0, 1, 2):
        base = np.random.default_rng(seed).random(64) < 0.4
        better, best = base.copy(), base.copy()
        better[np.flatnonzero(~base)[:8]] = True
        best[np.flatnonzero(~base)[:16]] = True                # extra real data: right on 16 more
        for generator, robust in (("none", base), ("edm", better), ("external", best)):
            record = _result("digits", generator, 0 if generator == "none" else 600, float(robust.mean()))
            record |= {"seed": seed, "per_point": {"clean": "1" * 64, "robust": "".join("01"[int(v)] for v in robust)}}
            _write(results, "gowal_smoke", f"digits_linf_{generator}_s{seed}", record)
    out = tmp_path / "out"
    report(results, out / "summary.csv", out / "summary.md", out / "scaling.json", out / "plots")
    paired = (out / "summary.md").read_text().split("## Against real data alone, paired")[1]
    row, = [line for line in paired.splitlines() if line.startswith("| gowal_smoke | digits | linf | edm |")]
    cells = [c.strip() for c in row.split("|")]
    assert cells[6:8] == ["3", "64"] and cells[9] == "+0.00 [+0.00, +0.00]"
    mean, low, high = (float(v) for v in cells[8].replace("[", "").replace("]", "").replace(",", "").split())
    assert mean == 12.5 and 0 < low < mean < high           # 8 of 64 points in every seed: an effect it can see
    share, share_low, share_high = (float(v.rstrip("%")) for v in re.findall(r"[\d.]+%", cells[10]))
    assert share == 50 and share_low <= 50 <= share_high   # half of what the extra real data gained
    with Image.open(out / "plots" / "paired_vs_none.png") as image:
        image.verify()


def test_certified_grids_get_the_best_over_sigma_and_the_paired_difference_per_radius() -> None:
    from genrobust.report.certified import envelope, markdown, with_minus_without

    def cell(generator: str, sigma: float, radii: list) -> dict:
        points = [{"index": i, "label": 0, "prediction": None if r is None else 0, "radius": r}
                  for i, r in enumerate(radii)]
        return {"grid": "g", "cell": f"{generator}{sigma}", "dataset": "digits", "sigma": sigma, "generator": generator,
                "num_generated": 0 if generator == "none" else 300, "certify": {"seed": 0, "n": 100},
                "certified_accuracy": {"0": sum(r is not None for r in radii) / 4,
                                       "0.5": sum(r is not None and r >= 0.5 for r in radii) / 4},
                "points": points, "abstention_rate": 0.0, "n_examples": 4}
    rows = [cell("none", 0.25, [0.3, None, None, 0.1]), cell("edm", 0.25, [0.3, 0.6, None, 0.1]),
            cell("none", 0.5, [0.7, 0.2, None, None]), cell("edm", 0.5, [0.9, 0.8, 0.6, None])]
    edm25, edm50 = sorted(with_minus_without(rows), key=lambda c: c["sigma"])
    assert edm25["radii"]["0"][0] == 0.25 and edm25["radii"]["0.5"][0] == 0.25     # point 1: newly certified
    assert edm50["radii"]["0"][0] == 0.25 and edm50["radii"]["0.5"][0] == 0.5
    best = {e["generator"]: e["best"] for e in envelope(rows)}
    assert best["none"] == {"0": (0.5, 0.5), "0.5": (0.25, 0.5)} and best["edm"]["0"] == (0.75, 0.5)
    text = "\n".join(markdown(rows))
    assert "## Certified, best over sigma" in text and "| g | digits | 0.5 | edm | 300 | +25.0 [" in text
