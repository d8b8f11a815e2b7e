"""Sample grids written during diffusion training, so a person can see what the model makes.

One row per class (up to ten classes, spread over the label range), the same starting noise
at every step, so successive grids show the model improving rather than new random draws.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.utils import save_image

from .. import io

ROWS = 10
COLUMNS = 8
PADDING = 2


def grid_path(work_dir: Path, step: int) -> Path:
    return Path(work_dir) / "grids" / f"step-{step:06d}.png"


def grid_classes(num_classes: int) -> np.ndarray:
    """The class of each grid cell, row by row."""
    rows = np.unique(np.linspace(0, num_classes - 1, min(num_classes, ROWS)).round().astype(np.int64))
    return np.repeat(rows, COLUMNS)


@torch.no_grad()
def write_grid(model: nn.Module, num_classes: int, steps: int, seed: int, path: Path) -> None:
    """Sample the grid with `steps` steps of the model's deterministic sampler and write it atomically.

    The starting noise comes from a generator of its own and the sampler draws nothing else, so
    drawing a grid leaves the training RNG untouched: grids never change what training does.
    """
    device = next(model.parameters()).device
    classes = torch.from_numpy(grid_classes(num_classes)).to(device)
    images = model.sample(classes, torch.Generator().manual_seed(seed), steps=steps)
    with io.atomic_path(path) as tmp:
        save_image(images.float().cpu(), tmp, nrow=COLUMNS, padding=PADDING, format="png")
