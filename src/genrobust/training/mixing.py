"""Which real and generated images make up batch t: a pure function of (seed, t).

Real indices are read off an endless stream of per-pass permutations, so every batch has
exactly the configured number of real images and every pass over the real set shows each
image exactly once. Because nothing depends on earlier batches, resuming at step t needs
only t: no sampler state to save.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REAL, GENERATED = 0, 1


def _stream(size: int, start: int, count: int, seed: int, tag: int) -> np.ndarray:
    """Positions [start, start+count) of the concatenation of permutations of range(size)."""
    positions = np.arange(start, start + count)
    passes = positions // size
    out = np.empty(count, dtype=np.int64)
    for p in np.unique(passes):
        perm = np.random.default_rng([seed, tag, int(p)]).permutation(size)
        mask = passes == p
        out[mask] = perm[positions[mask] % size]
    return out


@dataclass(frozen=True)
class BatchMixer:
    n_real: int
    n_generated: int
    batch_size: int
    generated_fraction: float
    seed: int
    replacement: bool = True

    @property
    def generated_per_batch(self) -> int:
        if self.n_generated == 0:
            return 0
        return int(self.batch_size * self.generated_fraction)    # the reference's int(batch * unsup_fraction)

    @property
    def real_per_batch(self) -> int:
        return self.batch_size - self.generated_per_batch

    def steps_per_epoch(self) -> int:
        """An epoch is one pass over the real set (or over the generated set if a batch holds no real image)."""
        if self.real_per_batch:
            return math.ceil(self.n_real / self.real_per_batch)
        return math.ceil(self.n_generated / self.generated_per_batch)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        real = _stream(self.n_real, step * self.real_per_batch, self.real_per_batch, self.seed, REAL) \
            if self.real_per_batch else np.empty(0, dtype=np.int64)
        count = self.generated_per_batch
        if not count:
            return real, np.empty(0, dtype=np.int64)
        if self.replacement:
            generated = np.random.default_rng([self.seed, GENERATED, step]).integers(0, self.n_generated, count)
        else:
            generated = _stream(self.n_generated, step * count, count, self.seed, GENERATED)
        return real, generated
