"""Learning-rate (and momentum) schedules, as pure functions of the step so a resumed run needs no state.

cosinew  DM-Improves-AT's schedule: PyTorch's OneCycleLR(max_lr=lr, pct_start, total_steps=epochs) stepped
         once per epoch, so the rate starts at lr/25, and SGD momentum cycles 0.95 -> 0.85 -> 0.95
cosine   per step: linear warm-up from lr/warm-up steps, then cosine decay to zero; momentum fixed
step     Cohen et al.'s StepLR: lr x gamma every few epochs; momentum fixed (Recipe.lr_momentum)
"""

from __future__ import annotations

import math

SCHEDULES = ("cosinew", "cosine", "step")
DIV_FACTOR, FINAL_DIV_FACTOR = 25.0, 1e4          # OneCycleLR's defaults
BASE_MOMENTUM, MAX_MOMENTUM = 0.85, 0.95


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def one_cycle(index: int, total: int, max_lr: float, pct_start: float) -> tuple[float, float]:
    """(lr, momentum) at OneCycleLR's step `index` of `total` (two phases, cosine annealing).

    Where the first phase has zero length (pct_start * total == 1) OneCycleLR divides by zero;
    here that phase simply ends at max_lr.
    """
    initial = max_lr / DIV_FACTOR
    phases = [(pct_start * total - 1, initial, max_lr, MAX_MOMENTUM, BASE_MOMENTUM),
              (total - 1, max_lr, initial / FINAL_DIV_FACTOR, BASE_MOMENTUM, MAX_MOMENTUM)]
    start_step = 0.0
    for i, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
        if index <= end_step or i == len(phases) - 1:
            pct = (index - start_step) / (end_step - start_step) if end_step != start_step else 1.0
            return _cos(lr0, lr1, pct), _cos(m0, m1, pct)
        start_step = end_step
    raise AssertionError("unreachable")


def cosine(step: int, total: int, max_lr: float, warmup_fraction: float) -> float:
    warmup = max(1, round(warmup_fraction * total))
    if step < warmup:
        return max_lr * (step + 1) / warmup
    return 0.5 * max_lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
