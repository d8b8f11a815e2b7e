"""Exponential moving average of weights: the model that is saved and evaluated."""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn


class EMA:
    """Decay warms up as min(decay, (1+t)/(10+t)) so early, poor weights fade quickly."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        for ema_param, param in zip(self.model.parameters(), model.parameters()):
            ema_param.lerp_(param.detach(), 1 - decay)
        # Buffers (batch-norm statistics, normalisation constants) are copied, not averaged.
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.decay, self.updates = state["decay"], state["updates"]


@torch.no_grad()
def refresh_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Recompute batch-norm running statistics of averaged weights on clean data (cumulative average)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for batch in batches:
        model(batch)
    for m, (momentum, training) in zip(norms, saved):
        m.momentum = momentum
        m.train(training)
