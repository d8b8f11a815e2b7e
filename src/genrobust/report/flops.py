"""Training compute in FLOPs, counted by torch.utils.flop_counter the one way both the report and the benchmark use.

Wall time depends on the device, its precision and load; FLOPs do not, so runs from a laptop,
a cluster node and an H200 land on one compute axis. A training step is made of three kinds of
pass, counted separately because the counter cannot follow torch.autograd.grad:
  forward  a forward without gradients (TRADES' clean probabilities)
  attack   a forward and a backward to the input only (weights frozen: autograd.grad computes
           no weight gradients), once per attack step
  train    a forward and a backward with weight gradients (the loss the optimiser steps on)
Per training image, TRADES costs forward + steps x attack + 2 x train (clean and adversarial
views), PGD-AT steps x attack + train (adv_train's two losses). Only what FlopCounterMode
counts is counted (convolutions and matrix products, not element-wise ops, batch norm or the
optimiser); the counts are linear in the batch, so one image on the meta device (shapes, no
arithmetic) gives them exactly: about 0.4 s for a WRN-28-10 on a CPU core, once per configuration.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..data.transform import SIZE
from ..models.checkpoint import build_classifier

SPEC = {"arch", "depth", "width", "activation"}
NUM_CLASSES = 10        # the result JSON does not record it; the head is under 0.1% of a step's FLOPs
COUNTED_FOR = (f"{SIZE}x{SIZE}x3 inputs and a {NUM_CLASSES}-class head, torch.utils.flop_counter part by part "
               f"(benchmarks/adv_train.py's count); adversarial-training steps only, no held-out validation")


class Passes(NamedTuple):
    """FLOPs of each kind of pass over one batch."""

    forward: int
    attack: int
    train: int


def _counted(work: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def pass_flops(model: nn.Module, x: torch.Tensor) -> Passes:
    """Count the three kinds of pass on batch x; the model's parameters are left as they were found."""
    params = [p for p in model.parameters() if p.requires_grad]

    def attack() -> None:
        for p in params:
            p.requires_grad_(False)
        try:
            model(x.detach().clone().requires_grad_(True)).sum().backward()
        finally:
            for p in params:
                p.requires_grad_(True)

    with torch.no_grad():
        forward = _counted(lambda: model(x))
    passes = Passes(forward, _counted(attack), _counted(lambda: model(x).sum().backward()))
    model.zero_grad(set_to_none=True)
    return passes


def step_flops(passes: Passes, loss: str, attack_steps: int) -> int:
    """FLOPs of one training step with `loss` (trades | pgd) over the batch the passes were counted on."""
    if loss == "trades":
        return passes.forward + attack_steps * passes.attack + 2 * passes.train
    if loss == "pgd":
        return attack_steps * passes.attack + passes.train
    raise ValueError(f"unknown training loss {loss!r}; expected trades or pgd")


def trades_step_flops(model: nn.Module, x: torch.Tensor, attack_steps: int) -> int:
    """FLOPs of one TRADES step on batch x (benchmarks/adv_train.py's TFLOP/s)."""
    return step_flops(pass_flops(model, x), "trades", attack_steps)


@lru_cache(maxsize=None)
def _passes_per_image(arch: str, depth: int, width: int, activation: str) -> Passes:
    """Per model, not per result: a grid's cells share one model, counted once."""
    spec = {"arch": arch, "depth": depth, "width": width, "activation": activation}
    with torch.device("meta"):
        model = build_classifier(spec, NUM_CLASSES, [0.5] * 3, [0.25] * 3)
        x = torch.zeros(1, 3, SIZE, SIZE)
    return pass_flops(model.train(), x)


def flops_per_image(model: Mapping[str, Any], loss: str | None, attack_steps: int | None) -> int | None:
    """FLOPs per training image of a result's model and loss; None where the result does not say enough."""
    if loss is None or attack_steps is None or not SPEC <= model.keys():
        return None
    passes = _passes_per_image(model["arch"], model["depth"], model["width"], model["activation"])
    return step_flops(passes, loss, attack_steps)
