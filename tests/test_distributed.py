"""Data-parallel training: 2 processes on gloo (CPU) end identical and match one process with the same global batch."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from genrobust.training.loop import Recipe, TrainingData, fit
from genrobust.training.mixing import BatchMixer
from genrobust.training.validation import Validation

from .conftest import LINF, write_images

TOLERANCE = 1e-5   # float32 reduction order differs between one process and two


def _data() -> TrainingData:
    rng = np.random.default_rng(0)
    labels = np.arange(48, dtype=np.int64) % 3
    images = (labels[:, None, None, None] * 80 + rng.integers(0, 60, (48, 32, 32, 3))).astype(np.uint8)
    return TrainingData(images, labels)


def _model() -> nn.Module:
    """No batch norm: with it each process would normalise with its own half-batch statistics."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


RECIPE = Recipe("trades", 12, 0.05, 0.9, True, 5e-4, 0.1, 0.9, 0, LINF, 2, 5.0)


def _train(work: Path) -> dict[str, torch.Tensor]:
    """The last weights, and the held-out figures of every epoch (each process attacks its share of 11 images)."""
    data = _data()
    held_out = Validation(data.real_images[:11], data.real_labels[:11], every=1, attack_steps=2)
    result = fit(_model(), data, BatchMixer(48, 0, 16, 0.0, seed=0), RECIPE, work, log=lambda _: None,
                 validation=held_out)
    return {**{key: value.detach().clone() for key, value in result.last.state_dict().items()},
            "history": [{k: v for k, v in row.items() if k.startswith("val_")} for row in result.history]}


def _worker(rank: int, world: int, store: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(_train(Path(out) / f"work{rank}"), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def check_ranks_match_one(tmp_path: Path) -> None:
    """The two ranks' models (written by _worker) are equal, match one process, and only rank 0 kept state;
    tests/test_slurm.py checks the same for two SLURM tasks."""
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    single = _train(tmp_path / "single")
    assert rank0.pop("history") == rank1.pop("history")         # both ranks hold the summed counts
    held_out = single.pop("history")
    assert len(held_out) == 4 and all(0 <= row["val_robust_accuracy"] <= row["val_clean_accuracy"] for row in held_out)
    for name, value in single.items():
        assert torch.equal(rank0[name], rank1[name]), name
        assert torch.allclose(rank0[name], value, atol=TOLERANCE), name
    assert (tmp_path / "work0" / "state.pt").exists() and not (tmp_path / "work1" / "state.pt").exists()


def test_two_gloo_processes_match_one(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    check_ranks_match_one(tmp_path)


def _diffusion_settings(digits: dict) -> dict:
    """EDM's DDPM++ at a toy size, 2 steps of a global batch of 4."""
    settings = copy.deepcopy(digits)
    settings["diffusion"].update(arch="ddpmpp", resolution=8, steps=2, batch_size=4, checkpoint_every=10, grid_every=0,
                                 ddpmpp={"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
                                         "attn_resolutions": [], "dropout": 0.1, "label_dropout": 0.0},
                                 optimizer="adam", lr_rampup_images=0, ema_halflife_images=8, ema_rampup_ratio=None)
    return settings


def _train_diffusion_recording(settings: dict, train: Path, out: Path, name: str) -> None:
    """train_diffusion, keeping every sigma draw and noise its loss sees (in this process)."""
    from genrobust.diffusion import edm
    from genrobust.diffusion.train import train_diffusion
    seen, loss = [], edm.edm_loss

    def recording(net, y, labels, rnd_normal, noise, *rest, **kwargs):
        seen.append((rnd_normal.detach().clone(), noise.detach().clone()))
        return loss(net, y, labels, rnd_normal, noise, *rest, **kwargs)

    edm.edm_loss = recording
    try:
        train_diffusion(settings, "edm", train, out / f"model_{name}.pt", out / f"work_{name}")
    finally:
        edm.edm_loss = loss
    torch.save(seen, out / f"draws_{name}.pt")


def _diffusion_worker(rank: int, world: int, store: str, settings: dict, train: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        _train_diffusion_recording(settings, Path(train), Path(out), f"rank{rank}")
    finally:
        dist.destroy_process_group()


def test_diffusion_ranks_draw_their_own_share_of_one_global_batch(tmp_path: Path, digits_settings: dict) -> None:
    """Each process's sigma and noise are its rows of what one process draws for the global batch: never the same
    draws on every rank (4 GPUs would otherwise train on 128 distinct draws of a batch of 512)."""
    settings, train = _diffusion_settings(digits_settings), tmp_path / "train.npz"
    write_images(train, 40)
    mp.spawn(_diffusion_worker, args=(2, str(tmp_path / "store"), settings, str(train), str(tmp_path)), nprocs=2,
             join=True)
    _train_diffusion_recording(settings, train, tmp_path, "single")
    single, rank0, rank1 = (torch.load(tmp_path / f"draws_{name}.pt") for name in ("single", "rank0", "rank1"))
    assert len(single) == len(rank0) == len(rank1) == 2
    for (sigma, noise), (sigma0, noise0), (sigma1, noise1) in zip(single, rank0, rank1):
        assert torch.equal(sigma0, sigma[0::2]) and torch.equal(sigma1, sigma[1::2])
        assert torch.equal(noise0, noise[0::2]) and torch.equal(noise1, noise[1::2])
        assert not torch.equal(sigma0, sigma1) and not torch.equal(noise0, noise1)
