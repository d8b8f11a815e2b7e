"""Stage sample_diffusion: class-balanced images from a trained model, written as shards.

Shard k holds images [start, stop) of `shard_bounds(generated_count(sample, generator), shard_size)` with labels
`shard_labels(start, stop, K)` (image i is of class i mod K). Where its noise comes from is `sample.layout`:
- `shard`: one CPU `torch.Generator` seeded with `shard_seed(seed, k)`, drawn batch by batch (`sample.batch_size`);
- `seed_per_image` (DM-Improves-AT's `edm/generate.py`, arch ddpmpp): image i starts from the latents of seed
  i // K, drawn by a generator of its own on the sampling device as their `StackedRandomGenerator` does, so each
  latent seed is used once per class and seeds 0..S-1 of every class are what their `--seeds=0-(S-1)` makes.
Either way a shard is a pure function of (weights, seed, k, device kind): shards can be made on many machines at
once, and a rerun regenerates a missing one identically. Finished shards of the same model, seed, layout and
step count are kept, so a run killed half-way redoes only what it had not finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .. import io
from ..errors import UserError
from ..provenance import StageClock
from ..shards import fill, generated_count
from .model_file import load_model


def sample_diffusion(settings: Mapping[str, Any], generator: str, model_path: Path, out_dir: Path,
                     shards: list[int] | None = None) -> None:
    """Generate the shards not yet done (all, or those listed in `shards`); the manifest once all exist."""
    cfg, seed = settings["sample"], settings["seed"]
    num_classes = settings["dataset"]["num_classes"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, model_meta = load_model(Path(model_path), generator, num_classes, cfg["steps"], device, cfg["guidance"],
                                   cfg["clamp_denoised"])
    clock = StageClock("sample_diffusion", model_meta)
    identity = {"generator": generator, "seed": seed, "steps": cfg["steps"], "guidance": cfg["guidance"],
                "clamp_denoised": cfg["clamp_denoised"], "layout": cfg["layout"],
                "model_sha256": io.sha256(model_path)}
    if cfg["layout"] == "seed_per_image":
        if not hasattr(model, "sample_from"):
            raise UserError("sample.layout = 'seed_per_image' starts each image from its own latents: it needs "
                            "diffusion.arch: ddpmpp (or a released EDM model)")
        identity["latent_device"] = device.type   # a CUDA generator draws other numbers than a CPU one
    identity |= _speed_up(model, cfg["precision"], cfg["compile"])
    clock.precision = cfg["precision"]

    def make(start: int, labels: np.ndarray, shard_seed: int) -> np.ndarray:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["precision"] == "bf16"):
            if cfg["layout"] == "seed_per_image":
                return _generate_per_image(model, start, labels, cfg["batch_size"], device)
            return _generate(model, labels, shard_seed, cfg["batch_size"], device)

    fill(Path(out_dir), generated_count(cfg, generator), cfg["shard_size"], num_classes, seed, shards, identity,
         make, clock, conditional=generator == "edm")


def _speed_up(model: nn.Module, precision: str, compiled: bool) -> dict[str, Any]:
    """Compile the denoiser network if asked; the shard identity's entries for what changes the images' bits.

    bf16 autocast and a compiled network each round differently from fp32 eager, so a shard made
    one way is not one made the other way; fp32 eager, what shards have always been, adds no entry,
    so their shards stay done.
    """
    if compiled:
        name = "net" if hasattr(model, "net") else "model"     # EDM models' network, or the DDPM package's
        setattr(model, name, torch.compile(getattr(model, name)))
    return ({"precision": precision} if precision != "fp32" else {}) | ({"compile": True} if compiled else {})


@torch.inference_mode()
def _generate(model: nn.Module, labels: np.ndarray, seed: int, batch_size: int,
              device: torch.device) -> np.ndarray:
    """uint8 NHWC images of the given classes; every random number comes from `seed`, batch by batch."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for begin in range(0, len(labels), batch_size):
        classes = torch.from_numpy(labels[begin:begin + batch_size]).to(device)
        batches.append(to_uint8(model.sample(classes, generator)))
    return np.ascontiguousarray(np.concatenate(batches))


def image_latents(seeds: np.ndarray, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """One latent per seed, each from a generator of its own on `device` (DM-Improves-AT's StackedRandomGenerator)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator(device).manual_seed(int(seed) % (1 << 32)),
                                    device=device) for seed in seeds])


@torch.inference_mode()
def _generate_per_image(model: nn.Module, start: int, labels: np.ndarray, batch_size: int,
                        device: torch.device) -> np.ndarray:
    """Images start, start + 1, ...: image i of class i mod K from the latents of seed i // K."""
    shape = (model.channels, model.image_size, model.image_size)
    batches = []
    for begin in range(0, len(labels), batch_size):
        index = np.arange(start + begin, start + min(begin + batch_size, len(labels)))
        classes = torch.from_numpy(labels[begin:begin + batch_size]).to(device)
        latents = image_latents(index // model.num_classes, shape, device)
        batches.append(to_uint8(model.sample_from(latents, model.one_hot(classes))))
    return np.ascontiguousarray(np.concatenate(batches))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[0, 1] NCHW (any float precision) to uint8 NHWC, rounding to nearest as EDM's generate.py does."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
