"""Batch mixing, attacks, losses, EMA, and the resumable loop, on tiny inputs."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genrobust.attacks.pgd import pgd, project
from genrobust.attacks.threat import Threat
from genrobust.training.ema import EMA
from genrobust.training.losses import pgd_at_loss, trades_loss
from genrobust.training.loop import Recipe, TrainingData, fit
from genrobust.training.validation import Validation
from genrobust.training.mixing import BatchMixer

from .conftest import LINF


def test_mixer_counts_and_every_real_image_once_per_pass() -> None:
    mixer = BatchMixer(n_real=50, n_generated=1000, batch_size=20, generated_fraction=0.7, seed=0)
    assert (mixer.real_per_batch, mixer.generated_per_batch) == (6, 14)
    stream = np.concatenate([mixer.batch(t)[0] for t in range(25)])      # 150 real draws = 3 passes
    for p in range(3):
        assert sorted(stream[p * 50:(p + 1) * 50].tolist()) == list(range(50))
    assert all(len(mixer.batch(t)[1]) == 14 for t in range(5))
    assert np.array_equal(mixer.batch(7)[1], mixer.batch(7)[1])          # a pure function of the step


def test_mixer_without_replacement_and_without_generated_data() -> None:
    mixer = BatchMixer(10, 30, 10, 0.5, seed=1, replacement=False)
    drawn = np.concatenate([mixer.batch(t)[1] for t in range(6)])
    assert sorted(drawn.tolist()) == list(range(30))
    real_only = BatchMixer(10, 0, 4, 0.7, seed=1)
    assert (real_only.real_per_batch, real_only.generated_per_batch, real_only.steps_per_epoch()) == (4, 0, 3)


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


@pytest.mark.parametrize("norm, eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_pgd_stays_in_the_ball_and_the_box(norm: str, eps: float) -> None:
    model = _linear_model()
    x = torch.rand(16, 3, 2, 2)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.randint(0, 3, (16,))
    adv = pgd(model, x, y, Threat(norm, eps, eps / 4), 10)
    delta = (adv - x).flatten(1)
    bound = delta.abs().max(1).values if norm == "Linf" else delta.norm(dim=1)
    assert (bound <= eps + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
    assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)


def test_losses_match_hand_computation_at_zero_radius() -> None:
    """With eps = 0 the attack cannot move, so TRADES is CE + beta * KL(p || p) = CE and PGD-AT is CE."""
    model = _linear_model()
    x, y = torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))
    expected = F.cross_entropy(model(x), y, label_smoothing=0.1)
    for trades_attack in ("batch", "eval"):
        trades = trades_loss(model, x, y, Threat("Linf", 0.0, 0.01), 3, beta=5.0, label_smoothing=0.1,
                             trades_attack=trades_attack)
        assert torch.allclose(trades, expected, atol=1e-6)
    assert torch.allclose(pgd_at_loss(model, x, y, Threat("Linf", 0.0, 0.01), 3), F.cross_entropy(model(x), y),
                          atol=1e-6)


def test_trades_kl_term_by_hand() -> None:
    model = _linear_model()
    x, y = torch.rand(4, 3, 2, 2), torch.randint(0, 3, (4,))
    torch.manual_seed(5)
    threat = Threat("Linf", 0.1, 0.05)
    loss = trades_loss(model, x, y, threat, 2, beta=2.0, trades_attack="eval")
    torch.manual_seed(5)
    with torch.no_grad():
        clean = F.softmax(model(x), 1)
    start = project(x + 0.001 * torch.randn_like(x), x, threat)
    adv = start
    for _ in range(2):
        adv = adv.detach().requires_grad_(True)
        grad, = torch.autograd.grad(F.kl_div(F.log_softmax(model(adv), 1), clean, reduction="sum"), adv)
        adv = project(adv + 0.05 * grad.sign(), x, threat)
    p, q = F.softmax(model(x), 1), F.softmax(model(adv), 1)
    by_hand = F.cross_entropy(model(x), y) + 2.0 * (p * (p.log() - q.log())).sum() / 4
    assert torch.allclose(loss, by_hand, atol=1e-5)


def test_ema_copies_during_warm_up_then_decays_and_copies_batchnorm_buffers() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.995, warmup_steps=2.5)
    assert [ema.decay_at(t) for t in (1, 2)] == [0.0, 0.0]          # the reference's factor int(step >= warmup)
    assert ema.decay_at(3) == pytest.approx(1.5 / 10.5) and ema.decay_at(10_000) == 0.995
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    assert torch.equal(ema.model[0].weight, model[0].weight) and torch.equal(ema.model[1].running_mean,
                                                                              model[1].running_mean)
    ema.updates = 2
    before = ema.model[0].weight.clone()
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    ema.update(model)                                             # update 3: decay 1.5 / 10.5
    assert torch.allclose(ema.model[0].weight, before * (1.5 / 10.5) + 2.0 * (9 / 10.5))
    assert not ema.model.training


def test_killed_training_resumes_from_its_last_epoch(tmp_path) -> None:
    """Stopping after epoch 2 of 4 and resuming gives the same weights as an uninterrupted run."""
    rng = np.random.default_rng(0)
    labels = np.arange(40, dtype=np.int64) % 2
    images = (labels[:, None, None, None] * 120 + rng.integers(0, 60, (40, 32, 32, 3))).astype(np.uint8)
    data = TrainingData(images, labels)
    mixer = BatchMixer(40, 0, 10, 0.0, seed=0)

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 2))

    full = Recipe("trades", 16, 0.05, 0.9, True, 5e-4, 0.1, 0.9, 0, LINF, 2, 5.0)
    reference = fit(model(), data, mixer, full, tmp_path / "a", log=lambda _: None)
    history = reference.history
    assert [row["step"] for row in history] == [4, 8, 12, 16]

    class Killed(Exception):
        pass

    def kill_in_epoch_two(line: str) -> None:     # raised before epoch 2's state is saved
        if line.startswith("epoch=2"):
            raise Killed

    with pytest.raises(Killed):
        fit(model(), data, mixer, full, tmp_path / "b", log=kill_in_epoch_two)
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=False)["step"] == 4
    logs: list[str] = []
    resumed = fit(model(), data, mixer, full, tmp_path / "b", log=logs.append)
    history = resumed.history
    assert logs[0] == f"resuming from {tmp_path / 'b' / 'state.pt'} at step 4/16"
    assert [row["step"] for row in history] == [4, 8, 12, 16]
    for name, value in reference.last.state_dict().items():
        assert torch.allclose(value.float(), resumed.last.state_dict()[name].float(), atol=1e-6), name


def _no_batchnorm_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _three_class_data(count: int = 48) -> TrainingData:
    rng = np.random.default_rng(0)
    labels = np.arange(count, dtype=np.int64) % 3
    images = (labels[:, None, None, None] * 80 + rng.integers(0, 60, (count, 32, 32, 3))).astype(np.uint8)
    return TrainingData(images, labels)


def test_gradient_accumulation_matches_one_large_batch(tmp_path) -> None:
    """Four micro-batches of 4 give the step of one batch of 16 (no batch norm, so only float order differs)."""
    recipe = Recipe("trades", 6, 0.05, 0.9, True, 5e-4, 0.1, 0.9, 0, LINF, 2, 5.0)
    mixer = BatchMixer(48, 0, 16, 0.0, seed=0)
    whole = fit(_no_batchnorm_model(), _three_class_data(), mixer, recipe, tmp_path / "a", log=lambda _: None)
    pieces = fit(_no_batchnorm_model(), _three_class_data(), mixer, replace(recipe, accumulation_steps=4),
                 tmp_path / "b", log=lambda _: None)
    assert [row["loss"] for row in whole.history] == pytest.approx([row["loss"] for row in pieces.history], rel=1e-5)
    for name, value in whole.last.state_dict().items():
        assert torch.allclose(value, pieces.last.state_dict()[name], atol=1e-5), name


def test_validation_keeps_the_epoch_with_the_best_held_out_robust_accuracy(tmp_path) -> None:
    data = _three_class_data(60)
    held_out = Validation(data.real_images[:12], data.real_labels[:12], every=1, attack_steps=3)
    train = TrainingData(data.real_images[12:], data.real_labels[12:])
    recipe = Recipe("trades", 12, 0.2, 0.9, True, 5e-4, 0.1, 0.9, 0, LINF, 2, 5.0, epoch_steps=2)
    result = fit(_no_batchnorm_model(), train, BatchMixer(48, 0, 12, 0.0, seed=0), recipe, tmp_path,
                 log=lambda _: None, validation=held_out)
    scores = [row["val_robust_accuracy"] for row in result.history]
    assert len(scores) == 6 and all(0 <= s <= row["val_clean_accuracy"] for s, row in zip(scores, result.history))
    assert result.best_epoch == 1 + scores.index(max(scores))
    assert held_out.measure(result.best, recipe.threat, recipe.sigma, recipe.seed)[1] == max(scores)
    assert held_out.measure(result.last, recipe.threat, recipe.sigma, recipe.seed)[1] == scores[-1]


def test_speed_options_follow_the_device(monkeypatch) -> None:
    from genrobust.training import common

    cfg = {"precision": "auto", "channels_last": "auto", "compile": False}
    assert common.speed_options(cfg) == {"bf16": False, "channels_last": True, "compile": False}    # CPU
    monkeypatch.setattr(common, "device", lambda: torch.device("cuda"))
    assert common.speed_options(cfg) == {"bf16": True, "channels_last": True, "compile": False}
    assert common.speed_options(dict(cfg, precision="fp32", channels_last=False)) == \
        {"bf16": False, "channels_last": False, "compile": False}


def test_every_slice_of_a_batch_holds_the_batch_mix() -> None:
    """Micro-batches and data-parallel shares must not be segregated by source (their batch statistics would differ)."""
    from genrobust.training.batches import interleave
    order = interleave(154, 358)                     # batch 512 at fraction 0.7
    assert sorted(order.tolist()) == list(range(512))
    for k in (2, 4, 8):
        for piece in np.array_split(order, k):
            generated = int((piece >= 154).sum())
            assert abs(generated - 358 * len(piece) / 512) <= 1, (k, generated, len(piece))


def test_generated_images_are_cropped_and_flipped_too(tmp_path) -> None:
    from genrobust import shards
    from genrobust.provenance import StageClock
    from genrobust.training.batches import make_batch
    images = np.zeros((16, 32, 32, 3), np.uint8)
    images[:, :, :16] = 255                          # left half white: any shift or mirror shows
    shards.write_shard(tmp_path, 0, images, np.arange(16) % 10, {})
    shards.write_manifest(tmp_path, [(0, 16)], 10, StageClock("sample_diffusion"), generator="edm")
    data = TrainingData(np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8, np.int64), shards.ShardSet.open(tmp_path),
                        np.arange(16), np.arange(16) % 10, flip=True)
    x, y = make_batch(data, BatchMixer(8, 16, 64, 0.75, seed=0), 0, 0)
    generated = x[x.reshape(len(x), -1).max(1) > 0]
    assert len(generated) == 48 and len(y) == 64
    assert sum(not np.array_equal(g, generated[0]) for g in generated) > 0       # not all left untouched
    assert (generated[:, :, 16:].sum((1, 2, 3)) > 0).any()                        # some mirrored or shifted right


def test_training_length_follows_the_amount_of_generated_data() -> None:
    from genrobust.training.mixed import length_for
    cfg = {"epochs": 400, "batch_size": 512, "generated_fraction": 0.7,
           "by_num_generated": [{"min_images": 20_000_000, "epochs": 2400, "batch_size": 2048, "generated_fraction": 0.8},
                                {"min_images": 50_000_000, "epochs": 2000}]}
    assert length_for(cfg, 1_000_000)["epochs"] == 400
    assert {k: length_for(cfg, 20_000_000)[k] for k in ("epochs", "batch_size", "generated_fraction")} == \
        {"epochs": 2400, "batch_size": 2048, "generated_fraction": 0.8}
    assert (length_for(cfg, 50_000_000)["epochs"], length_for(cfg, 50_000_000)["batch_size"]) == (2000, 512)


def test_sehwag_mixing_adds_generated_images_to_a_whole_real_batch() -> None:
    from genrobust.errors import UserError
    from genrobust.training.mixed import whole_batch
    sehwag = {"batch_size": 128, "generated_fraction": 0.5, "mixing": "add"}
    assert whole_batch(sehwag, 1000, "smooth_train") == 256                      # 128 real + 128 generated
    assert whole_batch({**sehwag, "mixing": "replace"}, 1000, "smooth_train") == 128
    assert whole_batch(sehwag, 0, "smooth_train") == 128                         # no generated data: the real batch
    for batch, fraction in ((512, 0.7), (400, 0.3), (7, 0.9)):
        total = whole_batch({"batch_size": batch, "generated_fraction": fraction, "mixing": "add"}, 10, "adv_train")
        mixer = BatchMixer(1000, 1000, total, fraction, seed=0)
        assert mixer.real_per_batch == batch and mixer.steps_per_epoch() == math.ceil(1000 / batch)
    with pytest.raises(UserError, match=r"smooth_train.mixing = 'add' .* generated_fraction = 1.0 leaves no room"):
        whole_batch({**sehwag, "generated_fraction": 1.0}, 10, "smooth_train")
