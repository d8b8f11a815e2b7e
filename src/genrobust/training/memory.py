"""How much GPU memory a training step keeps, counted before the first step, and the accumulation that fits it.

Activations dominate: TRADES keeps two full forwards (clean and adversarial) for one backward.
They are counted on the meta device (shapes, no arithmetic, no GPU): every tensor autograd saves
during the step's forwards, at the step's precision, for one image (they are linear in the batch).
Weights, gradients, SGD momentum and the EMA copy add 16 bytes a parameter (fp32). Counted
this way, WRN-28-10 at batch 2048 in fp32 keeps 113 GiB of activations (it needs 2 micro-batches
on an 80 GB H100) and WRN-70-16 at 512 per GPU in bf16 61 GiB (at the edge; 1,024 cannot fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import torch

from ..errors import UserError
from ..models.checkpoint import build_classifier

GiB = 2 ** 30
USABLE = 0.9            # of the device's memory: the CUDA context, allocator fragmentation and workspaces take the rest
STATIC_BYTES = 16       # per parameter: fp32 weights, gradients, SGD momentum, EMA copy
FORWARDS = {"trades": 2, "pgd": 1, "ce": 1, "gaussian": 1}   # forwards whose activations one backward keeps


@dataclass(frozen=True)
class StepMemory:
    """Bytes a step keeps: `per_image` of activations for every image of the micro-batch, plus `static`."""

    per_image: int
    static: int
    precision: str

    def peak(self, micro_batch: int) -> int:
        return self.static + micro_batch * self.per_image


@lru_cache(maxsize=16)
def _counted(spec: tuple[tuple[str, Any], ...], num_classes: int, bf16: bool) -> tuple[int, int]:
    """(activation bytes of one forward of one image, parameter count), on the meta device.

    Under bf16 autocast the saved activations are bf16 (2 bytes an element; the fp32 stem's few are
    counted so too); the meta device has no autocast, so the elements are counted and sized here.
    """
    element = 2 if bf16 else 4
    with torch.device("meta"):
        model = build_classifier(dict(spec), num_classes, [0.5] * 3, [0.25] * 3).train()

    def saved_bytes(batch: int) -> int:
        saved: dict[int, torch.Tensor] = {}

        def keep(tensor: torch.Tensor) -> torch.Tensor:
            saved.setdefault(id(tensor), tensor)
            return tensor
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            model(torch.empty(batch, 3, 32, 32, device="meta"))
        return element * sum(t.numel() for t in saved.values() if t.is_floating_point())
    # Saved weights do not grow with the batch: the difference of two batches is the per-image part alone.
    activations = (saved_bytes(4) - saved_bytes(2)) // 2
    return activations, sum(p.numel() for p in model.parameters())


def model_name(spec: Mapping[str, Any]) -> str:
    """WRN-28-10, PreActResNet-18: how the papers name the network."""
    if spec["arch"] == "wrn":
        return f"WRN-{spec['depth']}-{spec['width']}"
    return f"PreActResNet-{spec['depth']}"


def step_memory(spec: Mapping[str, Any], num_classes: int, loss: str, bf16: bool) -> StepMemory:
    activations, params = _counted(tuple(sorted(spec.items())), num_classes, bf16)
    return StepMemory(FORWARDS[loss] * activations, STATIC_BYTES * params, "bf16" if bf16 else "fp32")


def accumulation_for(memory: StepMemory, batch: int, requested: int | str, device_bytes: int | None,
                     describe: str) -> tuple[int, str | None]:
    """The micro-batches per step (`requested`, or for `auto` the fewest that fit) and the log line saying why.

    `batch` is this process's share of the batch; `device_bytes` None (a CPU) fits anything. A
    configuration that cannot fit, even one image at a time, stops here with the numbers.
    """
    if device_bytes is None:
        return (1 if requested == "auto" else int(requested)), None
    usable = int(USABLE * device_bytes)
    if memory.static + memory.per_image > usable:
        raise UserError(f"{describe}: even one image per micro-batch needs {memory.peak(1) / GiB:.1f} GiB in "
                        f"{memory.precision}; the GPU has {device_bytes / GiB:.1f} GiB ({USABLE:.0%} usable)")
    fewest = math.ceil(memory.per_image * batch / (usable - memory.static))
    steps = next(k for k in range(max(fewest, 1), batch + 1) if batch % k == 0) if requested == "auto" \
        else int(requested)
    micro = math.ceil(batch / steps)
    line = (f"{describe}: {micro} images per micro-batch in {memory.precision} keep about "
            f"{memory.peak(micro) / GiB:.1f} GiB ({memory.per_image * micro / GiB:.1f} GiB activations) of the GPU's "
            f"{device_bytes / GiB:.1f} GiB: accumulation_steps {steps}")
    if memory.peak(micro) > usable:
        raise UserError(f"{line} does not fit ({USABLE:.0%} usable); set accumulation_steps to {fewest} or more, "
                        "or auto")
    return steps, line
