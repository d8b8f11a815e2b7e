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


def read_torch_file(path: Path, expected: str) -> Any:
    """torch.load with weights only; a damaged file is one line naming it and what was `expected`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a zoo of types for damaged files, some with pages of advice
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable torch file ({first_line}); expected {expected}") from exc


def load_classifier(path: str | os.PathLike, num_classes: int | None = None,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model in eval mode and its checkpoint dict; refuses a checkpoint made for another task."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    ckpt = read_torch_file(path, "a genrobust classifier checkpoint (made by train_classifier or adv_train)")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise UserError(f"{path}: holds {_describe(ckpt)}; expected a genrobust classifier checkpoint "
                        f"(made by train_classifier or adv_train)")
    if num_classes is not None and ckpt["num_classes"] != num_classes:
        raise UserError(f"{path}: made for {ckpt['num_classes']} classes; this dataset has {num_classes} "
                        f"(datasets.<name>.num_classes)")
    state = ckpt["state_dict"]
    try:
        model = build_classifier(ckpt["model"], ckpt["num_classes"], state["mean"].flatten().tolist(),
                                 state["std"].flatten().tolist())
    except (ValueError, KeyError) as exc:  # made by another version of genrobust, or edited
        raise UserError(f"{path}: names an architecture this genrobust cannot build ({_spec(ckpt['model'])}): "
                        f"{exc}") from exc
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise UserError(f"{path}: weights do not fit the architecture it names ({_spec(ckpt['model'])}): {mismatch}")
    model.load_state_dict(state)
    return model.to(device).eval(), ckpt


def _describe(ckpt: Any) -> str:
    if not isinstance(ckpt, dict):
        return f"a {type(ckpt).__name__}"
    if "kind" in ckpt or "format" in ckpt:
        return f"a {ckpt.get('kind') or ckpt.get('format')!r} file"
    return f"a plain state dict or dict of {len(ckpt)} entries (first: {next(iter(ckpt), None)!r})"


def _spec(spec: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in spec.items())


def state_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """One line on how a state dict differs from a model's, or '' when it fits (load_state_dict's own
    message runs over many lines)."""
    missing = [key for key in expected if key not in found]
    extra = [key for key in found if key not in expected]
    shapes = [key for key in expected if key in found and tuple(found[key].shape) != tuple(expected[key].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (first {missing[0]!r})")
    if extra:
        parts.append(f"{len(extra)} unexpected (first {extra[0]!r})")
    if shapes:
        key = shapes[0]
        parts.append(f"{len(shapes)} of another shape (first {key!r}: {tuple(found[key].shape)}, "
                     f"expected {tuple(expected[key].shape)})")
    return "; ".join(parts)
