"""Random crop (4-pixel zero padding) and horizontal flip on uint8 NHWC images, before they become floats.

Slicing uint8 arrays image by image is an order of magnitude cheaper than gathering
float tensors, and keeps augmentation off the critical path on a CPU.
"""

from __future__ import annotations

import numpy as np


def crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 4, flip: bool = True) -> np.ndarray:
    """`flip=False` for data whose mirror image is another thing (digits, house numbers, shoes)."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    shifts = rng.integers(0, 2 * pad + 1, size=(n, 2))
    flips = (rng.random(n) < 0.5) & flip
    out = np.empty_like(images)
    for i, ((dy, dx), mirrored) in enumerate(zip(shifts, flips)):
        crop = padded[i, dy:dy + h, dx:dx + w]
        out[i] = crop[:, ::-1] if mirrored else crop
    return out
