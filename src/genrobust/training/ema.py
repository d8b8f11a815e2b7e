"""Exponential moving average of weights: the model that is validated, saved and evaluated."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """DM-Improves-AT's weight averaging (Gowal et al. 2020).

    For the first `warmup_steps` updates the average is the online model itself; after that the
    decay warms up as min(decay, (1+d)/(10+d)), d the updates since the warm-up ended, so early
    weights fade quickly. Batch-norm statistics are not averaged: the online model's are copied
    (the reference's `update_bn`), here after every update so the average is usable at any step.
    """

    def __init__(self, model: nn.Module, decay: float, warmup_steps: float = 0.0) -> None:
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.decay, self.warmup_steps = decay, warmup_steps
        self.updates = 0

    def decay_at(self, update: int) -> float:
        """Decay applied by the update-th update (1-based, the reference's global step)."""
        if update < self.warmup_steps:
            return 0.0
        since = update - self.warmup_steps
        return min(self.decay, (1.0 + since) / (10.0 + since))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.decay_at(self.updates)
        for ema_param, param in zip(self.model.parameters(), model.parameters()):
            ema_param.mul_(decay).add_(param.detach(), alpha=1.0 - decay)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "decay": self.decay, "warmup_steps": self.warmup_steps,
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.decay, self.warmup_steps, self.updates = state["decay"], state["warmup_steps"], state["updates"]
