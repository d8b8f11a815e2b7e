"""Classifier-free guidance (Ho & Salimans 2022), shared by every conditional sampler."""

from __future__ import annotations

from typing import Callable

import torch


def guided(network: Callable[[float], torch.Tensor], guidance: float) -> torch.Tensor:
    """uncond + w (cond - uncond); w = 1 is the plain conditional model (one network call).

    `network(drop)` runs the net with the class (drop = 0) or without it (drop = 1). A small model's conditional
    samples can drift from their class; w > 1 pulls them towards it, at twice the network calls. Guidance needs a
    network trained with its class hidden part of the time (`diffusion.unet.cond_drop_prob`,
    `diffusion.ddpmpp.label_dropout` > 0).
    """
    conditional = network(0.0)
    if guidance == 1.0:
        return conditional
    unconditional = network(1.0)
    return unconditional + guidance * (conditional - unconditional)
