"""Training batches: real images from RAM and generated ones from their shards, augmented and interleaved.

Batch t is a pure function of (seed, t): which images (`BatchMixer`), their order, their crops
and mirrors. A data-parallel rank builds only its share (every W-th image of the global batch),
reading only those images from the shards, with exactly the draws they get in the whole batch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from ..shards import ShardSet
from .augment import crop_flip, crop_flip_draws
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

    def identity(self) -> str:
        """A digest of what training reads: the real images and labels, the generated shards (by their manifest's
        hashes), which of their images are kept and with which labels. A resume state records it, so that a run
        on other data (a new subset, a re-filtered or resampled set) never continues another run's weights."""
        digest = hashlib.sha256(bytes([self.flip]))
        for array in (self.real_images, self.real_labels, self.generated_index, self.generated_labels):
            digest.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
        if self.generated is not None:
            digest.update(json.dumps([shard["sha256"] for shard in self.generated.manifest["shards"]]).encode())
        return digest.hexdigest()[:16]


def interleave(n_real: int, n_generated: int) -> np.ndarray:
    """An order of [real | generated] in which every contiguous slice holds the batch's mix (to one image).

    Gradient accumulation and data-parallel processes each take a slice of the batch; batch-norm
    statistics computed on a slice of one source would differ from the whole batch's.
    """
    keys = np.concatenate([(np.arange(n_real) + 0.5) / max(n_real, 1),
                           (np.arange(n_generated) + 0.5) / max(n_generated, 1)])
    return np.argsort(keys, kind="stable")


def make_batch(data: TrainingData, mixer: BatchMixer, step: int, seed: int, rank: int = 0,
               world: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rank `rank`'s share of batch `step` as uint8 NHWC images and labels, cropped (pad 4) and flipped as in
    the reference; with world 1, the whole batch."""
    real_idx, gen_idx = mixer.batch(step)
    order = interleave(len(real_idx), len(gen_idx))
    shifts, mirrored = crop_flip_draws(len(order), np.random.default_rng([seed, 2, step]))
    mine = slice(rank, None, world)
    picked = order[mine]                        # positions in [real | generated]
    from_real = picked < len(real_idx)
    images = np.empty((len(picked), *data.real_images.shape[1:]), np.uint8)
    labels = np.empty(len(picked), np.int64)
    images[from_real] = data.real_images[real_idx[picked[from_real]]]
    labels[from_real] = data.real_labels[real_idx[picked[from_real]]]
    if (~from_real).any():
        chosen = gen_idx[picked[~from_real] - len(real_idx)]
        images[~from_real] = data.generated.take(data.generated_index[chosen])[0]
        labels[~from_real] = data.generated_labels[chosen]
    return crop_flip(images, shifts[mine], mirrored[mine] & data.flip), labels
