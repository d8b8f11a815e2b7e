"""The data-parallel check: two ranks train one global batch and end identical, and equal to one process.

A toy TRADES run (no batch norm: with it each rank would normalise with its own half-batch statistics)
that `tests/test_distributed.py` runs on two gloo processes, `tests/test_slurm.py` as two SLURM tasks
and `benchmarks/gpu_check.py` on the GPU: the same code, so the three checks cannot drift apart.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..attacks.threat import Threat
from .loop import Recipe, TrainingData, fit
from .mixing import BatchMixer
from .validation import Validation

TOLERANCE = 1e-5   # float32 reduction order differs between one process and two
RECIPE = Recipe("trades", 12, 0.05, 0.9, True, 5e-4, 0.1, 0.9, 0, Threat("Linf", 8 / 255, 2 / 255), 2, 5.0)


def _data() -> TrainingData:
    rng = np.random.default_rng(0)
    labels = np.arange(48, dtype=np.int64) % 3
    images = (labels[:, None, None, None] * 80 + rng.integers(0, 60, (48, 32, 32, 3))).astype(np.uint8)
    return TrainingData(images, labels)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def train(work: Path) -> dict:
    """The last weights, and the held-out figures of every epoch (each process attacks its share of 11 images)."""
    data = _data()
    held_out = Validation(data.real_images[:11], data.real_labels[:11], every=1, attack_steps=2)
    result = fit(_model(), data, BatchMixer(48, 0, 16, 0.0, seed=0), RECIPE, work, log=lambda _: None,
                 validation=held_out)
    return {**{key: value.detach().clone() for key, value in result.last.state_dict().items()},
            "history": [{k: v for k, v in row.items() if k.startswith("val_")} for row in result.history]}


def worker(rank: int, world: int, store: str, out: str) -> None:
    """One rank: join the gloo group through the file `store`, train, write `out`/rank<rank>.pt."""
    os.environ.update(MASTER_ADDR="127.0.0.1")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(train(Path(out) / f"work{rank}"), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def check_ranks_match_one(folder: Path) -> None:
    """The two ranks' models (written by `worker` into `folder`) are equal, match one process, and only rank 0
    kept resume state; raises AssertionError naming the first difference."""
    rank0, rank1 = (torch.load(folder / f"rank{r}.pt") for r in (0, 1))
    single = train(folder / "single")
    if rank0.pop("history") != rank1.pop("history"):
        raise AssertionError("the ranks' held-out figures differ: each should hold the summed counts")
    held_out = single.pop("history")
    if len(held_out) != 4 or not all(0 <= row["val_robust_accuracy"] <= row["val_clean_accuracy"] for row in held_out):
        raise AssertionError(f"one process's held-out figures are off: {held_out}")
    for name, value in single.items():
        if not torch.equal(rank0[name], rank1[name]):
            raise AssertionError(f"{name}: the two ranks differ")
        if not torch.allclose(rank0[name], value, atol=TOLERANCE):
            raise AssertionError(f"{name}: two ranks differ from one process by {(rank0[name] - value).abs().max():.2e}")
    if not (folder / "work0" / "state.pt").exists() or (folder / "work1" / "state.pt").exists():
        raise AssertionError("resume state: rank 0 alone should write work0/state.pt")
