"""Stage sample_diffusion: class-balanced images from a trained model, written as shards.

Shard k holds images [start, stop) of `shard_bounds(generated_count(sample, generator), shard_size)` with labels
`shard_labels(start, stop, K)`. Its noise comes only from a CPU `torch.Generator` seeded with
`shard_seed(seed, k)`, and the batches within it are fixed by `sample.batch_size`, so a shard
is a pure function of (weights, seed, k): shards can be made on many machines at once, and a
rerun regenerates a missing one identically. Finished shards of the same model, seed and step
count are kept, so a run killed half-way redoes only what it had not finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .. import io
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
                "clamp_denoised": cfg["clamp_denoised"],
                "model_sha256": io.sha256(model_path)}
    fill(Path(out_dir), generated_count(cfg, generator), cfg["shard_size"], num_classes, seed, shards, identity,
         lambda labels, shard_seed: _generate(model, labels, shard_seed, cfg["batch_size"], device), clock)


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


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[0, 1] NCHW (any float precision) to uint8 NHWC, rounding to nearest as EDM's generate.py does."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
