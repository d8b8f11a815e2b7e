"""Randomized smoothing's certificate (Cohen et al. 2019): the bound, the radius, a classifier whose smoothed
prediction is known in closed form, the stage's refusals, and a certification killed and resumed."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from scipy.stats import binom, norm
from torch import nn

from genrobust.__main__ import main
from genrobust.certification.bounds import certified_radius, lower_confidence_bound
from genrobust.certification.certify import certify_point, class_counts
from genrobust.host_syncs import HostSyncs
from genrobust.models.checkpoint import build_classifier, save_classifier

from .conftest import ENV, ROOT, write_images

SPEC = {"arch": "wrn", "depth": 10, "width": 1, "activation": "relu"}


@pytest.mark.parametrize("successes, trials", [(1, 10), (87, 100), (990, 1000), (99_000, 100_000)])
def test_clopper_pearson_lower_bound_is_where_seeing_that_many_becomes_alpha_unlikely(successes, trials) -> None:
    """The one-sided bound p solves P(Binomial(n, p) >= k) = alpha (the exact test it inverts)."""
    p = lower_confidence_bound(successes, trials, 0.001)
    assert binom.sf(successes - 1, trials, p) == pytest.approx(0.001, rel=1e-6)
    assert p < successes / trials


def test_bound_and_radius_known_values() -> None:
    # All n draws agree: the bound is alpha ** (1 / n) (Beta(n, 1)'s quantile), Cohen et al.'s largest certificate.
    assert lower_confidence_bound(100_000, 100_000, 0.001) == pytest.approx(0.001 ** 1e-5, rel=1e-12)
    assert certified_radius(0.001 ** 1e-5, 0.25) / 0.25 == pytest.approx(norm.ppf(0.001 ** 1e-5))
    assert 3.80 < norm.ppf(0.001 ** 1e-5) < 3.82             # "about 4 sigma" at n = 100,000, alpha = 0.001
    assert lower_confidence_bound(0, 50, 0.001) == 0.0
    assert certified_radius(0.5, 0.5) == 0.0                  # certified, at radius 0
    assert certified_radius(0.4999, 0.5) is None              # abstain
    assert certified_radius(norm.cdf(1.0), 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        lower_confidence_bound(11, 10, 0.001)


def _linear(distance: float) -> tuple[nn.Module, torch.Tensor]:
    """Two classes split by a hyperplane, and a point of class 1 at L2 `distance` from it.

    The smoothed classifier's top-class probability is exactly Phi(distance / sigma), so its true
    radius is `distance`: what CERTIFY must approach from below.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    w = torch.randn(48)
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(48), w]))
        model[1].bias.zero_()
    x = (torch.rand(48) - 0.5) * 0.1
    x = x - (x @ w) / (w @ w) * w + distance * w / w.norm()    # on the hyperplane, then `distance` along its normal
    return model.eval(), x.reshape(3, 4, 4)


def test_linear_classifier_certifies_its_distance_to_the_hyperplane() -> None:
    cfg = {"n0": 100, "n": 20_000, "alpha": 0.001, "batch_size": 4096}
    model, x = _linear(0.3)
    prediction, radius, hits = certify_point(model, x, 0.25, cfg, seed=0, index=0, num_classes=2)
    assert prediction == 1
    assert hits / cfg["n"] == pytest.approx(norm.cdf(0.3 / 0.25), abs=0.01)
    assert 0.28 < radius <= 0.3           # below the truth, as a (1 - alpha) bound should be; close at n = 20,000
    again = certify_point(model, x, 0.25, cfg, seed=0, index=0, num_classes=2)
    assert again == (prediction, radius, hits)     # seeded by (seed, index): reproducible
    _, near_radius, _ = certify_point(*_linear(0.005), 0.25, cfg, seed=0, index=0, num_classes=2)
    assert near_radius is None            # pA ~ 0.508: no certificate at this n


def _argv(checkpoint: Path, test: Path, out: Path, work: Path, sigma: str = "0.25", *overrides: str) -> list[str]:
    return ["certify", "--dataset", "digits", "--sigma", sigma, "--checkpoint", str(checkpoint), "--test", str(test),
            "--out", str(out), "--work", str(work), "--params", str(ROOT / "params.yaml"),
            *[arg for item in overrides for arg in ("--set", item)]]


@pytest.fixture
def model_and_test(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    checkpoint = tmp_path / "m.pt"
    save_classifier(checkpoint, build_classifier(SPEC, 10, [0.5] * 3, [0.25] * 3), SPEC, 10, {"sigma": 0.25})
    write_images(tmp_path / "test.npz", 40)
    return checkpoint, tmp_path / "test.npz"


@pytest.mark.parametrize("sigma, overrides, expected", [
    ("0", (), "certify --sigma: sigma = 0.0; expected a positive noise standard deviation"),
    ("-0.5", (), "certify --sigma: sigma = -0.5; expected a positive"),
    ("0.25", ("presets.smoke.certify.n=0",), "presets.smoke.certify.n"),
    ("0.25", ("certify.alpha=0.7",), "certify.alpha"),
])
def test_bad_sigma_or_sample_counts_are_refused_naming_them(model_and_test, tmp_path, capsys, sigma, overrides,
                                                            expected) -> None:
    checkpoint, test = model_and_test
    out = tmp_path / "r.json"
    assert main(_argv(checkpoint, test, out, tmp_path / "w", sigma, *overrides)) == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("genrobust certify: error: ") and expected in line, line
    assert not out.exists()


def test_a_rerun_asked_for_fewer_points_reports_those_and_other_batches_start_again(model_and_test, tmp_path,
                                                                                    capsys) -> None:
    """Issue 23 item 5: the saved rows of 6 points, rerun for 3, gave 6 (and base accuracy on other points)."""
    checkpoint, test = model_and_test
    base = ("presets.smoke.certify.n=200", "presets.smoke.certify.batch_size=100")
    work, out = tmp_path / "work", tmp_path / "r.json"
    assert main(_argv(checkpoint, test, out, work, "0.25", *base, "presets.smoke.certify.n_examples=6")) == 0
    assert main(_argv(checkpoint, test, out, work, "0.25", *base, "presets.smoke.certify.n_examples=3")) == 0
    fewer = json.loads(out.read_text())
    assert fewer["n_examples"] == 3 and len(fewer["points"]) == 3
    assert "3 of 3 points already certified" in capsys.readouterr().out
    fresh = tmp_path / "fresh.json"
    assert main(_argv(checkpoint, test, fresh, tmp_path / "w2", "0.25", *base, "presets.smoke.certify.n_examples=3")) == 0
    assert json.loads(fresh.read_text())["base_clean_accuracy"] == fewer["base_clean_accuracy"]
    assert main(_argv(checkpoint, test, out, work, "0.25", "presets.smoke.certify.n=200",
                      "presets.smoke.certify.batch_size=50", "presets.smoke.certify.n_examples=3")) == 0
    assert "already certified" not in capsys.readouterr().out       # other batches, other draws: certified anew


def _rows(state: Path) -> int:
    try:
        return len(torch.load(state, weights_only=True)["rows"])
    except Exception:                 # not yet written, or caught mid-rename
        return 0


def test_killed_certification_resumes_at_the_next_point_and_matches_an_unbroken_run(model_and_test, tmp_path) -> None:
    checkpoint, test = model_and_test
    overrides = ("presets.smoke.certify.n=800", "presets.smoke.certify.n_examples=12", "presets.smoke.certify.batch_size=405")
    command = [sys.executable, "-m", "genrobust"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command + _argv(checkpoint, test, killed / "r.json", killed / "work", "0.25", *overrides),
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while _rows(killed / "work" / "state.pt") < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _rows(killed / "work" / "state.pt")
    assert 2 <= done_before < 12 and not (killed / "r.json").exists()
    resumed = subprocess.run(command + _argv(checkpoint, test, killed / "r.json", killed / "work", "0.25", *overrides),
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done_before} of 12 points already certified" in resumed.stdout
    whole = tmp_path / "whole"
    assert main(_argv(checkpoint, test, whole / "r.json", whole / "work", "0.25", *overrides)) == 0
    first, second = (json.loads((d / "r.json").read_text()) for d in (killed, whole))
    strip = lambda points: [{k: v for k, v in p.items() if k != "seconds"} for p in points]  # noqa: E731
    assert strip(first["points"]) == strip(second["points"])
    assert first["certified_accuracy"] == second["certified_accuracy"] and first["n_examples"] == 12
    assert math.isclose(first["certify"]["samples_per_point"], 810)


def test_counting_noisy_copies_never_waits_for_the_device() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    x, generator = torch.rand(3, 4, 4), torch.Generator().manual_seed(1)
    with HostSyncs() as syncs:
        counts = class_counts(model, x, 0.5, 250, 100, generator, 5)
    assert syncs.seen == []
    noise = torch.randn((250, 3, 4, 4), generator=torch.Generator().manual_seed(1)) * 0.5
    with torch.no_grad():
        predicted = torch.cat([model(x + part).argmax(1) for part in noise.split(100)])
    assert counts.tolist() == torch.bincount(predicted, minlength=5).tolist()
