"""Bring any image array to the pipeline's one image format: uint8 NHWC 32x32x3.

Every later stage (diffusion, Gaussian fit, classifiers, AutoAttack) assumes this format,
so sources that differ in size (8x8 digits, 28x28 Fashion-MNIST), channels (greyscale) or
value range (digits' 0..16, floats in [0, 1]) are converted once, here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 32
CHUNK = 4096  # images resized at a time, so a 60k-image set never needs a whole float copy


def to_rgb32(images: np.ndarray, max_value: float = 255.0) -> np.ndarray:
    """Convert (N,H,W), (N,H,W,1) or (N,H,W,3) images with values in [0, max_value] to uint8 (N,32,32,3).

    The caller states `max_value` because the range cannot be read off the data: a dark
    uint8 image and a 0..16 digits image can hold the same numbers. Greyscale becomes three
    identical channels; other sizes are resized bilinearly (antialiased when shrinking, so
    downscaling does not alias). The result depends on the input alone.
    """
    images = _as_nhwc(np.asarray(images))
    if max_value <= 0:
        raise ValueError(f"max_value must be positive, got {max_value}")
    if not len(images):
        return np.zeros((0, SIZE, SIZE, 3), dtype=np.uint8)
    low, high = images.min(), images.max()
    if not (low >= 0 and high <= max_value):  # written so that NaN fails too
        raise ValueError(f"pixel values span [{low}, {high}]; expected [0, {max_value}]")
    if images.dtype == np.uint8 and max_value == 255 and images.shape[1:3] == (SIZE, SIZE):
        out = images
    else:
        out = np.concatenate([_resize(images[start:start + CHUNK], max_value)
                              for start in range(0, len(images), CHUNK)])
    return np.broadcast_to(out, (*out.shape[:3], 3)).copy()  # always a new, writable C-order array


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    """Greyscale gets a channel axis of 1 (broadcast to 3 at the very end, after resizing one channel)."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images have shape {images.shape}; expected (N,H,W), (N,H,W,1) or (N,H,W,3)")
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise ValueError(f"images have dtype {images.dtype}; expected integers or floats")
    return images


def _resize(images: np.ndarray, max_value: float) -> np.ndarray:
    """Scale to [0, 255] and resize in float32, then round once, so no precision is lost twice."""
    tensor = torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    tensor = tensor * (255.0 / max_value)
    height, width = tensor.shape[-2:]
    if (height, width) != (SIZE, SIZE):
        shrinking = height > SIZE or width > SIZE
        tensor = F.interpolate(tensor, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=shrinking)
    return tensor.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def resized(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC images at size x size (antialiased when shrinking), a chunk at a time: what a model that
    works below the pipeline's 32x32 (`diffusion.resolution`) trains on."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[-1]), dtype=np.uint8)
    for start in range(0, len(images), CHUNK):
        tensor = torch.from_numpy(np.asarray(images[start:start + CHUNK], dtype=np.float32)).permute(0, 3, 1, 2)
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=size < images.shape[1])
        out[start:start + CHUNK] = tensor.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The format as the networks take it: float NCHW in [0, 1] on `device`."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2))).to(device).float().div_(255)
