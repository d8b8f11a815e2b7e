"""The adversarial training stage as users run it: killed and resumed, and actually learning robustness."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from genrobust.attacks.pgd import robust_accuracy
from genrobust.data.sources import digits
from genrobust.data.transform import to_tensor
from genrobust.training.common import new_model
from genrobust.training.loop import Recipe, TrainingData, fit
from genrobust.training.mixing import BatchMixer

from .conftest import ENV, LINF, ROOT, write_images

SHORT = ["presets.smoke.adv_train.epochs=5", "presets.smoke.adv_train.epoch_images=384",
         "presets.smoke.adv_train.validation.every=1",
         "presets.smoke.adv_train.validation.size=40", "presets.smoke.adv_train.validation.attack_steps=3"]


def _command(tmp_path: Path) -> list[str]:
    out = tmp_path / "models"
    overrides = [arg for item in SHORT for arg in ("--set", item)]
    return [sys.executable, "-m", "genrobust", "adv_train", "--dataset", "digits", "--threat", "linf",
            "--train", str(tmp_path / "train.npz"), "--out", str(out / "model.pt"), "--last", str(out / "last.pt"),
            "--metrics", str(out / "metrics.tsv"), "--work", str(tmp_path / "work"),
            "--params", str(ROOT / "params.yaml"), *overrides]


def test_sigkilled_adv_train_resumes_and_loses_no_epoch(tmp_path: Path) -> None:
    write_images(tmp_path / "train.npz", 300)
    state = tmp_path / "work" / "state.pt"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(_command(tmp_path), env=ENV, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not state.exists():
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no epoch was saved within 2 minutes"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
    assert not (tmp_path / "models" / "model.pt").exists()
    saved_step = torch.load(state, weights_only=False)["step"]
    assert 0 < saved_step < 30

    rerun = subprocess.run(_command(tmp_path), env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {state} at step {saved_step}/30" in rerun.stdout
    with open(tmp_path / "models" / "metrics.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4, 5]            # none lost, none repeated
    assert [int(row["images_seen"]) for row in rows] == [384, 768, 1152, 1536, 1920]
    assert all(row["val_robust_accuracy"] != "" for row in rows)
    best = torch.load(tmp_path / "models" / "model.pt", weights_only=True)["meta"]
    assert best["images_seen"] == 1920 and best["checkpoint"] == "best" and 1 <= best["best_epoch"] <= 5


def test_adversarial_training_on_digits_beats_standard_training_under_attack(tmp_path: Path) -> None:
    """The same WRN-10-1 and budget, with and without TRADES: only the former resists PGD at 8/255."""
    train_x, train_y, test_x, test_y = digits(0.2, seed=0)
    x, y = to_tensor(test_x[:200], torch.device("cpu")), torch.from_numpy(test_y[:200])
    spec = {"arch": "wrn", "depth": 10, "width": 1, "activation": "silu"}
    accuracy = {}
    for loss in ("ce", "trades"):
        recipe = Recipe(loss, 80, 0.1, 0.9, True, 5e-4, 0.1, 0.99, 0, LINF, 3, 5.0)
        model = fit(new_model(spec, 10, train_x, 0), TrainingData(train_x, train_y),
                    BatchMixer(len(train_x), 0, 64, 0.0, 0), recipe, tmp_path / loss, log=lambda _: None).last
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        torch.manual_seed(0)
        accuracy[loss] = (clean, robust_accuracy(model, x, y, LINF, 10))
    assert accuracy["trades"][0] > 0.6, accuracy                      # it still classifies clean digits
    assert accuracy["trades"][1] > accuracy["ce"][1] + 0.2, accuracy  # measured: 0.625 vs 0.165
