"""Training batches of train_diffusion and the random streams behind them, one process or many.

Under torchrun every process draws the same global batch (the same image indices and mirrorings from `Rngs.batch`)
and, for EDM's network, the same per-image draws of the whole global batch (sigma, augmentation, noise from
`Rngs.draws`), then keeps its share, images rank, rank + W, ...: so W processes train on exactly the draws one
process would, and no two processes repeat an image's sigma or noise. What each process draws inside the network
(dropout) comes from torch's global RNG, seeded per process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch


@dataclass(frozen=True)
class Options:
    """How each step runs, resolved from params and the device."""

    flip: bool            # datasets.<name>.flip and diffusion.xflip: may a batch image be mirrored left-right?
    bf16: bool            # autocast the forward pass to bfloat16
    channels_last: bool   # model and batches in NHWC, which GPU convolutions run faster in


def options(settings: Mapping[str, Any], device: torch.device) -> Options:
    precision = settings["diffusion"]["precision"]
    return Options(flip=bool(settings["dataset"].get("flip", False)) and settings["diffusion"]["xflip"],
                   bf16=precision == "bf16" or (precision == "auto" and device.type == "cuda"),
                   channels_last=device.type == "cuda")


def layout(opts: Options) -> torch.memory_format:
    return torch.channels_last if opts.channels_last else torch.contiguous_format


@dataclass(frozen=True)
class Rngs:
    """The streams every process shares: `batch` (CPU: indices, mirrorings) and `draws` (the device: EDM's draws)."""

    batch: torch.Generator
    draws: torch.Generator

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> "Rngs":
        return cls(torch.Generator().manual_seed(seed), torch.Generator(device).manual_seed(seed + 1))


def seed_process(seed: int, rank: int) -> None:
    """torch's, numpy's and Python's global RNGs, different in every process (rank 0: `seed` itself)."""
    seed = seed + 1_000_003 * rank
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def draw_batch(images: np.ndarray, labels: np.ndarray, batch_size: int, opts: Options, device: torch.device,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random global batch in [0, 1], NCHW (with `flip`, half of it mirrored); only these rows are read from disk."""
    index = torch.randint(len(images), (batch_size,), generator=generator).numpy()
    x = torch.from_numpy(images[index]).to(device).permute(0, 3, 1, 2).float().div_(255)
    if opts.flip:
        mirror = (torch.rand(batch_size, generator=generator) < 0.5).to(device).view(-1, 1, 1, 1)
        x = torch.where(mirror, x.flip(3), x)
    return x.contiguous(memory_format=layout(opts)), torch.from_numpy(labels[index]).to(device)


def rng_state(rngs: Rngs) -> dict[str, Any]:
    """This process's RNG states as tensors and plain Python values, so the checkpoint loads with weights_only=True.

    Only the first process saves: its own device's CUDA state (the index a 4-GPU job saw may not exist when it is
    resumed on fewer), and the shared streams, which are the same everywhere.
    """
    numpy_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state(torch.cuda.current_device())] if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
            "python": [version, list(internal), gauss],
            "batch": rngs.batch.get_state(), "draws": rngs.draws.get_state()}


def set_rng_state(state: Mapping[str, Any], rngs: Rngs, device: torch.device, seed: int, rank: int,
                  step: int) -> None:
    """Continue the saved streams; a process other than the first (whose own state was not saved) reseeds its global
    RNGs from (seed, rank, step), so processes still differ."""
    rngs.batch.set_state(state["batch"])
    rngs.draws.set_state(state["draws"])
    if rank:
        seed_process(seed + 7919 * step, rank)
        return
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state(state["cuda"][0], torch.cuda.current_device())
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
