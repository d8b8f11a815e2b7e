"""Projected gradient descent in the Linf or L2 ball, intersected with the [0, 1] pixel box."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .threat import Threat

LossFn = Callable[[torch.Tensor], torch.Tensor]


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, threat: Threat) -> torch.Tensor:
    """A point within eps of x and inside the pixel box.

    Linf: the nearest one. L2: into the box first, then scaled back to the sphere, as the
    reference implementations do (scaling towards x cannot leave the box, which holds x).
    """
    if threat.norm == "Linf":
        return (x + (x_adv - x).clamp(-threat.eps, threat.eps)).clamp(0.0, 1.0)
    delta = x_adv.clamp(0.0, 1.0) - x
    return x + delta * (threat.eps / _flat_norm(delta)).clamp(max=1.0)


def ascend(x_adv: torch.Tensor, grad: torch.Tensor, threat: Threat) -> torch.Tensor:
    if threat.norm == "Linf":
        return x_adv + threat.step_size * grad.sign()
    return x_adv + threat.step_size * grad / _flat_norm(grad)


def random_start(x: torch.Tensor, threat: Threat) -> torch.Tensor:
    """Uniform in the Linf ball; for L2, towards a uniformly random image, cut at eps (DM-Improves-AT's PGD)."""
    if threat.norm == "Linf":
        return project(x + torch.empty_like(x).uniform_(-threat.eps, threat.eps), x, threat)
    return project(torch.rand_like(x), x, threat)


def maximise(loss_fn: LossFn, x: torch.Tensor, start: torch.Tensor, threat: Threat, steps: int) -> torch.Tensor:
    """Gradient ascent on loss_fn(x_adv) from `start`, projecting after every step."""
    x_adv = start.detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(loss_fn(x_adv), x_adv)
        x_adv = project(ascend(x_adv.detach(), grad, threat), x, threat).detach()
    return x_adv


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, steps: int) -> torch.Tensor:
    """Madry et al.'s PGD on cross-entropy with a random start."""
    return maximise(lambda adv: F.cross_entropy(model(adv), y, reduction="sum"), x, random_start(x, threat),
                    threat, steps)


@torch.no_grad()
def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per point, whether the model classifies it right; in batches, so that a full test set never
    has to fit on the device at once."""
    return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size] for i in range(0, len(x), batch_size)]
                     or [torch.zeros(0, dtype=torch.bool, device=x.device)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    return int(correct(model, x, y, batch_size).sum()) / len(x) if len(x) else 0.0


@torch.no_grad()
def robust_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, steps: int,
                   batch_size: int = 256) -> torch.Tensor:
    """Per point, whether the model (in eval mode) still classifies its PGD example right; kept on the device."""
    verdicts = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        with torch.enable_grad():
            adv = pgd(model, xb, yb, threat, steps)
        verdicts.append(model(adv).argmax(1) == yb)
    return torch.cat(verdicts) if verdicts else torch.zeros(0, dtype=torch.bool, device=x.device)


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, steps: int,
                    batch_size: int = 256) -> float:
    """PGD accuracy of a model in eval mode, batched."""
    return int(robust_correct(model, x, y, threat, steps, batch_size).sum()) / max(len(x), 1)
