"""Build classifiers from params and save/load them with everything needed to rebuild them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .. import io
from ..errors import UserError
from .activations import activation
from .preact_resnet import PreActResNet
from .wideresnet import WideResNet

KIND = "genrobust-classifier"


def build_classifier(spec: Mapping[str, Any], num_classes: int, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    act = activation(spec["activation"])
    if spec["arch"] == "wrn":
        return WideResNet(num_classes, spec["depth"], spec["width"], act, mean, std)
    if spec["arch"] == "preact_resnet":
        return PreActResNet(num_classes, spec["depth"], act, mean, std)
    raise ValueError(f"unknown architecture {spec['arch']!r}; expected wrn or preact_resnet")


def save_classifier(path: str | os.PathLike, model: nn.Module, spec: Mapping[str, Any], num_classes: int,
                    meta: Mapping[str, Any]) -> None:
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    with io.atomic_path(path) as tmp:
        torch.save({"kind": KIND, "model": dict(spec), "num_classes": num_classes, "state_dict": state,
                    "meta": dict(meta)}, tmp)


def load_classifier(path: str | os.PathLike, num_classes: int | None = None,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model in eval mode and its checkpoint dict; refuses a checkpoint made for another task."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a zoo of types for damaged files
        raise UserError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise UserError(f"{path}: not a genrobust classifier checkpoint")
    if num_classes is not None and ckpt["num_classes"] != num_classes:
        raise UserError(f"{path}: made for {ckpt['num_classes']} classes; this dataset has {num_classes}")
    state = ckpt["state_dict"]
    model = build_classifier(ckpt["model"], ckpt["num_classes"], state["mean"].flatten().tolist(),
                             state["std"].flatten().tolist())
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit the architecture it names ({ckpt['model']}): {exc}") from exc
    return model.to(device).eval(), ckpt
