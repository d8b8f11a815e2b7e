"""Tensors and small values in the forms the npz and JSON store, so every measurement names and converts them alike."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def one_hot(classes: list[int]) -> torch.Tensor:
    """Class labels the way EDMPrecond takes them (label_dim 10)."""
    return torch.eye(10)[classes]


def arrays(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """npz entries `prefix/key`, copied so later in-place updates of the tensors cannot change them."""
    return {f"{prefix}/{k}": v.detach().cpu().numpy().copy() for k, v in tensors.items()}


def weight_figures(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """npz entries `prefix/key` holding `figures_of` each tensor instead of the tensor: a network's weights at
    every stage would take megabytes, and these few numbers are enough to tell a wrong weight."""
    return {f"{prefix}/{k}": figures_of(v) for k, v in tensors.items()}


SAMPLED = 16


def figures_of(tensor: torch.Tensor) -> np.ndarray:
    """float64 [sum, norm, projection, up to SAMPLED elements] of a tensor.

    The sum and norm catch a uniform shift or scale; the projection onto a fixed sinusoid (no RNG, so the same on
    every machine) catches a permutation or transpose, which leaves both unchanged; the evenly spaced elements
    catch a small error anywhere, element for element, as a full comparison would.
    """
    x = tensor.detach().double().flatten().cpu()
    pattern = torch.sin(torch.arange(x.numel(), dtype=torch.float64) * 12.9898)
    sampled = x[torch.linspace(0, x.numel() - 1, min(SAMPLED, x.numel())).round().long()]
    return np.concatenate([[float(x.sum()), float(x.norm()), float((x * pattern).sum())], sampled.numpy()])


def named_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the parameters (buffers left out), taken while the training loop goes on changing them."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def jsonable(value: Any) -> Any:
    """Plain JSON values of init kwargs and similar small structures (numpy scalars included)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return repr(value)                      # 'inf': strict JSON has no Infinity
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
