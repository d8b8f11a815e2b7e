"""Training batches: real images from RAM and generated ones from their shards, augmented and interleaved."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.transform import to_tensor
from ..shards import ShardSet
from .augment import crop_flip
from .mixing import BatchMixer


@dataclass
class TrainingData:
    """Real images in RAM (uint8, small); generated ones stay memory-mapped in their shards."""

    real_images: np.ndarray
    real_labels: np.ndarray
    generated: ShardSet | None = None
    generated_index: np.ndarray | None = None     # mixer index -> global shard index (kept images only)
    generated_labels: np.ndarray | None = None    # pseudo-labels, aligned with generated_index
    flip: bool = True                             # mirror images at random (datasets.<name>.flip)


def interleave(n_real: int, n_generated: int) -> np.ndarray:
    """An order of [real | generated] in which every contiguous slice holds the batch's mix (to one image).

    Gradient accumulation and data-parallel processes each take a slice of the batch; batch-norm
    statistics computed on a slice of one source would differ from the whole batch's.
    """
    keys = np.concatenate([(np.arange(n_real) + 0.5) / max(n_real, 1),
                           (np.arange(n_generated) + 0.5) / max(n_generated, 1)])
    return np.argsort(keys, kind="stable")


def make_batch(data: TrainingData, mixer: BatchMixer, step: int, seed: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch `step`: every image, real or generated, cropped (pad 4) and flipped as in the reference."""
    real_idx, gen_idx = mixer.batch(step)
    images, labels = [data.real_images[real_idx]], [data.real_labels[real_idx]]
    if len(gen_idx):
        generated, _ = data.generated.take(data.generated_index[gen_idx])
        images.append(generated)
        labels.append(data.generated_labels[gen_idx])
    order = interleave(len(real_idx), len(gen_idx))
    batch = np.concatenate(images)[order]
    augmented = crop_flip(batch, np.random.default_rng([seed, 2, step]), flip=data.flip)
    return to_tensor(augmented, device), torch.from_numpy(np.concatenate(labels)[order]).to(device)
