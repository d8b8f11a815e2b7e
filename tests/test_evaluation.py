"""Pseudo-label selection, the AutoAttack adapter and the evaluate stage, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pyautoattack import AutoAttack
from torch import nn

from genrobust.attacks.threat import Threat
from genrobust.errors import UserError
from genrobust.evaluation.autoattack import run_autoattack
from genrobust.evaluation.evaluate import evaluate
from genrobust.models.checkpoint import build_classifier, load_classifier, save_classifier
from genrobust.pseudo_label import keep_most_confident

from .conftest import write_images


def test_keep_most_confident_keeps_the_top_fraction_per_class() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2])
    confidence = np.array([0.9, 0.2, 0.8, 0.5, 0.1, 0.3, 0.99, 0.4, 0.6, 0.7], dtype=np.float32)
    keep = keep_most_confident(labels, confidence, 0.4, 3)
    assert np.flatnonzero(keep).tolist() == [0, 2, 6, 8, 9]     # ceil(0.4*4)=2, ceil(0.4*5)=2, ceil(0.4*1)=1


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()


def test_adapter_matches_calling_pyautoattack_directly() -> None:
    model = _tiny_model()
    x, y = torch.rand(12, 3, 32, 32), torch.randint(0, 10, (12,))
    with torch.no_grad():
        y[:6] = model(x[:6]).argmax(1)                  # some points start correct
    ours = run_autoattack(model, x, y, Threat("Linf", 2 / 255, 0.5 / 255), "custom", ["apgd-ce"], 12, seed=0)
    direct = AutoAttack(model, norm="Linf", eps=2 / 255, version="custom", attacks=["apgd-ce"], seed=0)
    x_adv, _ = direct.run_standard_evaluation(x, y, batch_size=12)
    with torch.no_grad():
        expected = float((model(x_adv).argmax(1) == y).float().mean())
    assert ours.robust_accuracy == pytest.approx(expected)
    assert ours.per_attack == {"apgd-ce": pytest.approx(expected)} and ours.attacks == ["apgd-ce"]
    assert ours.clean_accuracy >= 0.5


def test_standard_autoattack_gives_the_package_verdicts_point_by_point() -> None:
    """Our speed-ups (frozen weights, deferred logit checks) must leave every attack's result as the package's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.SiLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))      # 8x8: FAB's projections and Square stay cheap
    with torch.no_grad():
        y[:12] = model(x[:12]).argmax(1)
    threat = Threat("Linf", 8 / 255, 2 / 255)
    ours = run_autoattack(model, x, y, threat, "standard", None, 16, seed=0)
    assert all(parameter.requires_grad for parameter in model.parameters())     # unfrozen again
    direct = AutoAttack(model, norm="Linf", eps=threat.eps, version="standard", seed=0)
    x_adv, y_adv = direct.run_standard_evaluation(x, y, batch_size=16)
    assert ours.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert torch.equal(ours.robust, y_adv == y)
    # measured: clean 75%, 37.5% after APGD-CE, 31.25% after APGD-T: more than one attack changed verdicts
    assert 0 < ours.robust_accuracy < ours.per_attack["apgd-ce"] < ours.clean_accuracy
    with torch.no_grad():
        assert torch.equal(model(x_adv).argmax(1) == y, ours.robust)


def test_nan_logits_stop_the_evaluation() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((len(x), 10), float("nan"))

    with pytest.raises(UserError, match="NaN or infinite logits"):
        run_autoattack(Broken(), torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), Threat("Linf", 0.03, 0.01),
                       "custom", ["apgd-ce"], 2, seed=0)


def test_checkpoint_refuses_another_class_count_and_garbage(tmp_path) -> None:
    spec = {"arch": "wrn", "depth": 10, "width": 1, "activation": "relu"}
    save_classifier(tmp_path / "m.pt", build_classifier(spec, 10, [0.5] * 3, [0.25] * 3), spec, 10, {})
    with pytest.raises(UserError, match="m.pt: made for 10 classes; this dataset has 100"):
        load_classifier(tmp_path / "m.pt", 100)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.pt: not a readable torch file"):
        load_classifier(tmp_path / "bad.pt")
    with pytest.raises(UserError, match="missing.pt: checkpoint not found"):
        load_classifier(tmp_path / "missing.pt")


def test_evaluate_writes_a_result_with_its_provenance(tmp_path, digits_settings) -> None:
    write_images(tmp_path / "test.npz", 20)
    spec = {"arch": "wrn", "depth": 10, "width": 1, "activation": "silu"}
    model = build_classifier(spec, 10, [0.5] * 3, [0.25] * 3)
    save_classifier(tmp_path / "m.pt", model, spec, 10, {"stage_wall_time_s": {"adv_train": 1.5}, "images_seen": 64})
    settings = dict(digits_settings, evaluate={"n_examples": 30, "allow_fewer": True, "version": "custom",
                                               "attacks": ["apgd-ce"], "batch_size": 10})
    evaluate(settings, "linf", tmp_path / "m.pt", tmp_path / "test.npz", tmp_path / "r.json")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["n_examples"] == 20 and result["partial"] is True and "only 20 points" in result["note"]
    assert result["attack"]["attacks"] == ["apgd-ce"] and result["norm"] == "Linf"
    assert set(result["stage_wall_time_s"]) == {"adv_train", "evaluate"}
    assert len(result["hashes"]["checkpoint_sha256"]) == 64 and result["package_versions"]["pyautoattack"] == "0.2.0"
    assert 0 <= result["robust_accuracy"] <= result["clean_accuracy"] <= 1
