"""What both training stages need before the loop: the device, the real data, a fresh model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .. import io
from .. import distributed
from ..distributed import device
from ..errors import UserError
from ..models.checkpoint import build_classifier


def load_real(train_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = io.load_images(train_path, num_classes)
    return np.asarray(images), np.asarray(labels)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1], which the model uses to normalise its own input."""
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    return pixels.mean(0).tolist(), np.maximum(pixels.std(0), 1e-3).tolist()


def new_model(spec: Mapping[str, Any], num_classes: int, images: np.ndarray, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    mean, std = channel_stats(images)
    return build_classifier(spec, num_classes, mean, std).to(device())


def speed_options(cfg: Mapping[str, Any]) -> dict[str, bool]:
    """bf16 autocast pays on a GPU's tensor cores and costs on a CPU, hence `auto`; channels_last pays on both.

    Measured with benchmarks/adv_train.py (WRN-16-4, batch 128, 2 CPU cores): channels_last 1.30x and 1.43x
    the reference's step, against 0.98x and 0.96x in NCHW.
    """
    on_gpu = device().type == "cuda"
    return {"bf16": cfg["precision"] == "bf16" or (cfg["precision"] == "auto" and on_gpu),
            "channels_last": cfg["channels_last"] in (True, "auto"),
            "compile": cfg["compile"]}


def loader_workers() -> int:
    """Loader processes per training process: GENROBUST_LOADER_WORKERS, else 4 on a GPU (within the cores each
    process has) and 0 on a CPU, where a worker would take a core from the step itself.

    An environment setting, not a param: it changes how fast batches come, never which batches, so
    changing it must not make Snakemake or DVC retrain.
    """
    value = os.environ.get("GENROBUST_LOADER_WORKERS", "auto")
    if value == "auto":
        cores = len(os.sched_getaffinity(0)) // distributed.world_size()
        return min(4, max(cores - 1, 0)) if device().type == "cuda" else 0
    if not value.isdigit():
        raise UserError(f"GENROBUST_LOADER_WORKERS={value!r}: expected auto or a number of processes (0 or more)")
    return int(value)


def device_memory() -> int | None:
    """Bytes of this process's GPU, or None on a CPU (nothing to plan for)."""
    return torch.cuda.get_device_properties(device()).total_memory if device().type == "cuda" else None
