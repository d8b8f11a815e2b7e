"""AutoAttack (pyautoattack, the official code repackaged) with the per-attack accuracies it logs.

`run_standard_evaluation` returns only the adversarial examples; the accuracy after each
attack in the sequence is logged by the package, so we read it off its logger rather than
re-running attacks. The final robust accuracy is recomputed from the returned examples.

The attacks are the package's, unmodified; what we change is only what they run on
(benchmarks/evaluate.py measures it). The model's weights are frozen for the run: the attacks
need gradients with respect to the input only, but FAB calls `.backward()`, which otherwise
also computes and accumulates every weight's gradient, and every forward under autograd
keeps the activations those weight gradients need. Freezing changes no input gradient, so
the adversarial examples are the same bit for bit (tests/test_evaluation.py checks it per point).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from pyautoattack import AutoAttack
from torch import nn

from ..attacks.pgd import correct
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
    robust: torch.Tensor | None = None     # per point: still classified correctly after every attack
    clean: torch.Tensor | None = None      # per point: classified correctly as it is


class _CheckedLogits(nn.Module):
    """Refuses NaN or infinite logits, which would make every attack silently fail.

    The clean pass is checked at once; during the attacks the count of bad images is kept on
    the device and checked after them, so that the thousands of forwards of Square and FAB do
    not each wait for the device to report back.
    """

    def __init__(self, model: nn.Module, source: str) -> None:
        super().__init__()
        self.model = model
        self.source = source
        self.nonfinite = torch.zeros((), dtype=torch.long)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        self.nonfinite = self.nonfinite.to(logits.device) + (~torch.isfinite(logits)).any(1).sum()
        return logits

    def check(self, what: str) -> None:
        """`what` says which inputs the count covers; the count starts again after each check."""
        bad, self.nonfinite = int(self.nonfinite), torch.zeros((), dtype=torch.long)
        if bad:
            raise UserError(f"{self.source}: the model produced NaN or infinite logits for {bad} {what}; "
                            f"expected finite logits, so refusing to evaluate it")


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Weights without gradients for the duration (see the module's docstring), restored after."""
    wanted = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for parameter, _ in wanted:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in wanted:
            parameter.requires_grad_(flag)


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, version: str,
                   attacks: list[str] | None, batch_size: int, seed: int, source: str = "the model") -> AttackResult:
    """`source` names the model in errors (its checkpoint file)."""
    checked = _CheckedLogits(model, source).eval()
    clean_verdicts = correct(checked, x, y, batch_size)
    clean = int(clean_verdicts.sum()) / len(x) if len(x) else 0.0
    checked.check(f"of {len(x)} images")
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
        with _frozen(model):
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    verdicts = correct(checked, x_adv, y, batch_size)
    checked.check("of the inputs the attacks tried")
    robust = int(verdicts.sum()) / len(x) if len(x) else 0.0
    ran = list(adversary.attacks_to_run)
    # The package logs percentages to two decimals: snap them back to whole points. Attacks skipped
    # because no robust point was left leave the accuracy where it was.
    per_attack, last = {}, clean
    for attack in ran:
        last = round(handler.after[attack] * len(x)) / len(x) if attack in handler.after else last
        per_attack[attack] = last
    return AttackResult(clean, robust, per_attack, ran, verdicts.cpu(), clean_verdicts.cpu())
