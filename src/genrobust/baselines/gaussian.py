"""Gowal et al. 2021's non-realistic baseline: a Gaussian per class, fitted in pixel space.

The covariance is kept as a factor F (r x d, r = rank) with F^T F = the sample covariance,
taken from the SVD of the centred class data. That is exact, never forms the d x d matrix
when a class has fewer images than pixels (CIFAR-100: 500 images, 3072 pixels), and
sampling is mean + z F with z ~ N(0, I_r).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io, shards
from ..errors import UserError
from ..provenance import StageClock, meta_array, read_meta

KIND = "genrobust-gaussian"


def fit_class(pixels: np.ndarray, rank_tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance factor (r, d) of one class's images, flattened to [0, 1] floats."""
    mean = pixels.mean(0)
    if len(pixels) < 2:
        return mean, np.zeros((0, pixels.shape[1]))
    _, singular, vt = np.linalg.svd(pixels - mean, full_matrices=False)
    keep = singular > rank_tolerance * singular[0] if singular[0] > 0 else np.zeros_like(singular, dtype=bool)
    return mean, singular[keep, None] / np.sqrt(len(pixels) - 1) * vt[keep]


def fit_gaussian(settings: dict[str, Any], train_path: Path, fit_out: Path) -> None:
    num_classes = settings["dataset"]["num_classes"]
    arrays = io.open_npz(train_path)
    clock = StageClock("fit_gaussian", read_meta(arrays))
    images, labels = io.validate_images(train_path, arrays, num_classes)
    labels = np.asarray(labels)
    fitted: dict[str, np.ndarray] = {}
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        if len(members) == 0:
            raise UserError(f"{train_path}: class {k} has no images; the per-class Gaussian needs every class")
        pixels = np.asarray(images[members], dtype=np.float64).reshape(len(members), -1) / 255
        mean, factor = fit_class(pixels, settings["gaussian"]["rank_tolerance"])
        fitted[f"mean_{k}"], fitted[f"factor_{k}"] = mean.astype(np.float32), factor.astype(np.float32)
    io.save_npz(fit_out, kind=np.array(KIND), num_classes=np.array(num_classes), **fitted,
                meta=meta_array(clock.meta()))
    ranks = [fitted[f"factor_{k}"].shape[0] for k in range(num_classes)]
    print(f"fit_gaussian: {num_classes} classes, covariance ranks {min(ranks)}..{max(ranks)}; wrote {fit_out}")


def load_fit(path: Path, num_classes: int) -> dict[str, np.ndarray]:
    arrays = io.open_npz(path, mmap=False)
    if "kind" not in arrays or str(arrays["kind"][()]) != KIND:
        raise UserError(f"{path}: not a genrobust Gaussian fit; rerun fit_gaussian")
    if int(arrays["num_classes"]) != num_classes:
        raise UserError(f"{path}: fitted for {int(arrays['num_classes'])} classes; this dataset has {num_classes}")
    return arrays


def sample_class(mean: np.ndarray, factor: np.ndarray, count: int, generator: torch.Generator) -> np.ndarray:
    z = torch.randn(count, factor.shape[0], generator=generator, dtype=torch.float64)
    pixels = torch.from_numpy(mean).double() + z @ torch.from_numpy(factor).double()
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def sample_gaussian(settings: dict[str, Any], fit_path: Path, out_dir: Path, only: list[int] | None = None) -> None:
    """Write the missing shards (those in `only`, or all and then the manifest); shard k depends only on (fit, seed, k)."""
    num_classes, cfg = settings["dataset"]["num_classes"], settings["sample"]
    fitted = load_fit(fit_path, num_classes)
    clock = StageClock("sample_gaussian", read_meta(fitted))
    identity = {"generator": "gaussian", "seed": settings["seed"], "model_sha256": io.sha256(fit_path)}

    def make(start: int, labels: np.ndarray, seed: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        images = np.empty((len(labels), *io.IMAGE_SHAPE), dtype=np.uint8)
        for k in range(num_classes):
            members = np.flatnonzero(labels == k)
            images[members] = sample_class(fitted[f"mean_{k}"], fitted[f"factor_{k}"], len(members),
                                           generator).reshape(-1, *io.IMAGE_SHAPE)
        return images

    shards.fill(Path(out_dir), shards.generated_count(cfg, "gaussian"), cfg["shard_size"], num_classes, settings["seed"], only,
                identity, make, clock)
