"""Batch-norm handling in DM-Improves-AT's adversarial training (Gowal et al.'s recipe).

The attack runs the network in train mode, so it sees batch statistics, but must not move the
running statistics: they describe clean and adversarial training batches only. The very first
optimiser step copies its batch statistics outright (momentum 1, as Haiku initialises them),
after which they move slowly (momentum 0.01).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


def norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def frozen_statistics(model: nn.Module) -> Iterator[None]:
    """Train-mode forwards that use batch statistics without updating the running ones."""
    norms = norm_layers(model)
    saved = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, track in zip(norms, saved):
            m.track_running_stats = track


def set_momentum(model: nn.Module, momentum: float) -> None:
    for m in norm_layers(model):
        m.momentum = momentum
