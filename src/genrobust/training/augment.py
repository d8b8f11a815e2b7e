"""Random crop (4-pixel zero padding) and horizontal flip on uint8 NHWC images, before they become floats.

Gathering uint8 pixels is four times cheaper than gathering floats, and one fancy-indexing
gather for the whole batch replaces a Python loop over images, so loader workers keep
augmentation off the GPU's critical path.
"""

from __future__ import annotations

import numpy as np


def crop_flip_draws(n: int, rng: np.random.Generator, pad: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Each image's (dy, dx) shift and mirror coin, drawn for the whole global batch in one fixed order,
    so a data-parallel rank that augments only its share applies exactly the draws its images get in it."""
    return rng.integers(0, 2 * pad + 1, size=(n, 2)), rng.random(n) < 0.5


def crop_flip(images: np.ndarray, shifts: np.ndarray, mirrored: np.ndarray, pad: int = 4) -> np.ndarray:
    """Image i cropped at `shifts[i]` from its zero-padded copy, then mirrored left-right where `mirrored[i]`."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = shifts[:, :1] + np.arange(h)                              # (n, h)
    cols = shifts[:, 1:] + np.where(mirrored[:, None], np.arange(w)[::-1], np.arange(w))   # (n, w)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
