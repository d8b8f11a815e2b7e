"""Held-out validation during training: what picks the best epoch's weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..attacks.pgd import correct, robust_correct
from ..attacks.threat import Threat
from ..data.transform import to_tensor


@dataclass
class Validation:
    """Held-out real images on which the averaged model is attacked every few epochs to pick the best one."""

    images: np.ndarray
    labels: np.ndarray
    every: int
    attack_steps: int
    batch_size: int = 256

    def measure(self, model: nn.Module, threat: Threat | None, sigma: float, seed: int) -> tuple[dict[str, float], float]:
        """The row's figures, and the score that picks the best epoch: PGD accuracy, or under the
        gaussian loss the accuracy on noisy copies (what the smoothed classifier's vote counts).

        Each of W processes attacks every W-th image (its own random starts) and the counts are summed,
        so validation takes 1/W of the time and no process waits for another's."""
        device, rank, world = next(model.parameters()).device, distributed.rank(), distributed.world_size()
        x, y = to_tensor(self.images[rank::world], device), torch.from_numpy(self.labels[rank::world]).to(device)
        torch.manual_seed(seed + rank)      # the same random starts (or noise) at every validation
        clean = correct(model, x, y, self.batch_size)
        if threat is None:
            other = correct(model, x + sigma * torch.randn_like(x), y, self.batch_size)
        else:
            other = robust_correct(model, x, y, threat, self.attack_steps, self.batch_size)
        counts = distributed.summed(torch.stack([clean.sum(), other.sum()])).tolist()
        clean_accuracy, score = (count / len(self.labels) for count in counts)
        name = "val_noisy_accuracy" if threat is None else "val_robust_accuracy"
        return {"val_clean_accuracy": clean_accuracy, name: score}, score
