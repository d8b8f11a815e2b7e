"""AutoAttack (pyautoattack, the official code repackaged) with the per-attack accuracies it logs.

`run_standard_evaluation` returns only the adversarial examples; the accuracy after each
attack in the sequence is logged by the package, so we read it off its logger rather than
re-running attacks. The final robust accuracy is recomputed from the returned examples.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch
from pyautoattack import AutoAttack
from torch import nn

from ..attacks.pgd import accuracy
from ..attacks.threat import Threat
from ..errors import UserError

_AFTER = re.compile(r"robust accuracy after (\S+): ([\d.]+)%")


class _AccuracyLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.after: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = _AFTER.search(record.getMessage())
        if match:
            self.after[match.group(1).lower()] = float(match.group(2)) / 100


@dataclass
class AttackResult:
    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict[str, float] = field(default_factory=dict)
    attacks: list[str] = field(default_factory=list)


class _CheckedLogits(nn.Module):
    """Refuses NaN or infinite logits, which would make every attack silently fail."""

    def __init__(self, model: nn.Module, source: str) -> None:
        super().__init__()
        self.model = model
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if not torch.isfinite(logits).all():
            bad = int((~torch.isfinite(logits)).any(1).sum())
            raise UserError(f"{self.source}: the model produced NaN or infinite logits for {bad} of {len(x)} images; "
                            f"expected finite logits, so refusing to evaluate it")
        return logits


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, version: str,
                   attacks: list[str] | None, batch_size: int, seed: int, source: str = "the model") -> AttackResult:
    """`source` names the model in errors (its checkpoint file)."""
    checked = _CheckedLogits(model, source).eval()
    clean = accuracy(checked, x, y, batch_size)
    adversary = AutoAttack(checked, norm=threat.norm, eps=threat.eps, version=version, seed=seed, device=x.device,
                           attacks=attacks if version == "custom" else None)
    num_classes = int(checked(x[:1]).shape[1])
    # Targeted attacks aim at the top-9 other classes; a dataset with fewer classes has fewer targets.
    adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, num_classes - 1)
    adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, num_classes - 1)
    handler = _AccuracyLog()
    logger = logging.getLogger("auto-attack")
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    robust = accuracy(checked, x_adv, y, batch_size)
    ran = list(adversary.attacks_to_run)
    # The package logs percentages to two decimals: snap them back to whole points. Attacks skipped
    # because no robust point was left leave the accuracy where it was.
    per_attack, last = {}, clean
    for attack in ran:
        last = round(handler.after[attack] * len(x)) / len(x) if attack in handler.after else last
        per_attack[attack] = last
    return AttackResult(clean, robust, per_attack, ran)
