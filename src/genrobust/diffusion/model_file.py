"""The model file `train_diffusion` writes and `sample_diffusion` reads: EMA weights, config, provenance."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .model import FORMAT, build_model


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model; on CUDA also channels_last, which the convolutions run faster in."""
    if device.type == "cuda":
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


def load_model(path: Path, generator: str, num_classes: int, sample_steps: int, device: torch.device,
               guidance: float = 1.0, clamp_denoised: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The EMA model (sampling with `guidance`, clipping D(x) if `clamp_denoised`) and provenance from a
    `train_diffusion` file, or a UserError naming the file."""
    if not path.is_file():
        raise UserError(f"{path}: file not found; run train_diffusion for generator {generator!r} first")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{path}: not a readable genrobust diffusion model ({exc})") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise UserError(f"{path}: not a genrobust diffusion model (written by train_diffusion)")
    if checkpoint["generator"] != generator:
        raise UserError(f"{path}: holds a {checkpoint['generator']!r} model, but generator {generator!r} was asked for")
    if checkpoint["num_classes"] != num_classes:
        raise UserError(f"{path}: model has {checkpoint['num_classes']} classes, the dataset has {num_classes}")
    model = build_model(generator, checkpoint["config"], num_classes, sample_steps)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit the recorded model config ({exc})") from exc
    model.guidance = guidance
    model.clamp_denoised = clamp_denoised
    return to_device(model, device).eval(), checkpoint["meta"]
