"""How train_diffusion updates the weights: optimiser, learning-rate ramp, gradient treatment and weight averaging.

The paper preset is EDM's training loop (Karras et al. 2022, `training/training_loop.py` of NVlabs/edm):
Adam (beta 0.9/0.999, eps 1e-8) without weight decay, the learning rate ramped linearly from 0 over
`lr_rampup_images` (it uses the images seen *before* the step, so the very first step has lr 0), non-finite
gradients zeroed, no clipping, and an EMA whose half-life is counted in images: beta = 0.5^(B / h) with
h = min(`ema_halflife_images`, `ema_rampup_ratio` x images seen). `ema_decay` (a constant decay, with
ema_pytorch's warm-up) and AdamW with weight decay and clipping remain for `arch: unet`'s recipe.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from ema_pytorch import EMA
from torch import nn


@dataclass(frozen=True)
class Recipe:
    """The update rule's params (`diffusion.*`), typed once at the stage's boundary."""

    batch_size: int
    optimizer: str                    # adam | adamw
    lr: float
    lr_rampup_images: int             # 0: the full rate from the first step
    weight_decay: float
    adam_eps: float
    grad_clip: float | None           # None: no clipping (EDM)
    ema_halflife_images: int | None   # EDM's EMA; None: a constant `ema_decay`
    ema_rampup_ratio: float | None
    ema_decay: float | None

    @classmethod
    def from_params(cls, cfg: Mapping[str, Any]) -> "Recipe":
        return cls(**{field: cfg[field] for field in cls.__dataclass_fields__})


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    kind = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
    return kind(model.parameters(), lr=recipe.lr, betas=(0.9, 0.999), eps=recipe.adam_eps,
                weight_decay=recipe.weight_decay)


def learning_rate(recipe: Recipe, images_before: int) -> float:
    """The rate for the step that starts after `images_before` training images."""
    if not recipe.lr_rampup_images:
        return recipe.lr
    return recipe.lr * min(images_before / recipe.lr_rampup_images, 1.0)


class HalfLifeEMA(nn.Module):
    """EDM's average of the weights: after each step p_ema <- p + beta (p_ema - p), beta from the half-life in images.

    `ema_model` is a frozen copy of the network (buffers included, which EDM never averages);
    `images_seen` is saved with it, so a resumed run continues the same betas.
    """

    def __init__(self, model: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.online = [model]   # a list, so the online model's weights are not part of this module's state
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.recipe = recipe
        self.register_buffer("images_seen", torch.zeros((), dtype=torch.int64))

    def beta(self, images_before: int) -> float:
        halflife = float(self.recipe.ema_halflife_images)
        if self.recipe.ema_rampup_ratio is not None:
            halflife = min(halflife, images_before * self.recipe.ema_rampup_ratio)
        return 0.5 ** (self.recipe.batch_size / max(halflife, 1e-8))

    @torch.no_grad()
    def update(self) -> None:
        beta = self.beta(int(self.images_seen))
        for averaged, current in zip(self.ema_model.parameters(), self.online[0].parameters()):
            averaged.copy_(current.detach().lerp(averaged, beta))
        self.images_seen += self.recipe.batch_size


def make_ema(model: nn.Module, recipe: Recipe) -> nn.Module:
    """EDM's half-life EMA, or (no half-life given) ema_pytorch's EMA at `ema_decay`."""
    if recipe.ema_halflife_images is not None:
        return HalfLifeEMA(model, recipe)
    return EMA(model, beta=recipe.ema_decay, update_after_step=0, update_every=1, include_online_model=False)


def apply_step(model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer, recipe: Recipe,
               images_before: int) -> None:
    """Everything after the backward pass: the rate, gradient treatment, the optimiser step and the EMA."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(recipe, images_before)
    for param in model.parameters():
        if param.grad is not None:
            torch.nan_to_num(param.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=param.grad)
    if recipe.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    optimizer.step()
    ema.update()
