"""The pipeline's image size, and samples of a lower-resolution model brought up to it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32


def to_pipeline_size(images: torch.Tensor) -> torch.Tensor:
    """Samples of a lower-resolution model, resized up bilinearly as `data.transform` resizes small datasets."""
    if images.shape[-1] == IMAGE_SIZE:
        return images
    return F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
