"""Data-parallel training: 2 processes on gloo (CPU) end identical and match one process with the same global batch."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genrobust.training.rank_check import check_ranks_match_one, worker

from .conftest import write_images


def test_two_gloo_processes_match_one(tmp_path: Path) -> None:
    mp.spawn(worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
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
