"""Checks that a robust accuracy is not an artefact of gradient masking (Athalye et al. 2018; Carlini et al. 2019).

A gradient-masked model (quantised or randomised input, saturated logits) defeats gradient
attacks without being robust. The telltales are cheap to measure: a multi-step PGD should
not do worse than AutoAttack by much and never better than the clean accuracy, a bigger
budget must hurt more, and a robust accuracy close to the clean one is implausible at the
papers' budgets. Failed checks are recorded in the result JSON and printed as warnings;
they do not stop the stage, because a reviewer should see the number and the doubt together.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..attacks.pgd import robust_accuracy
from ..attacks.threat import Threat

PGD_STEPS = 20
PGD_SLACK = 0.10            # PGD-20 may exceed AutoAttack by this much before masking is suspected
PLAUSIBLE_RATIO = 0.90      # robust / clean above this is flagged (best published CIFAR-10 Linf: ~0.75)


def _check(passed: bool, detail: str) -> dict[str, Any]:
    return {"passed": bool(passed), "detail": detail}


def sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, clean: float,
                  autoattack: float, batch_size: int, seed: int) -> dict[str, Any]:
    """PGD-20 at eps and 2 eps (step eps/4, random start), compared with the clean and AutoAttack accuracy."""
    eps = threat.eps
    torch.manual_seed(seed)
    pgd = robust_accuracy(model, x, y, replace(threat, step_size=eps / 4), PGD_STEPS, batch_size)
    torch.manual_seed(seed)
    pgd_double = robust_accuracy(model, x, y, replace(threat, eps=2 * eps, step_size=eps / 2), PGD_STEPS, batch_size)
    one_point = 1 / len(x)
    checks = {
        "autoattack_at_most_pgd": _check(autoattack <= pgd + one_point,
                                         f"AutoAttack {autoattack:.4f} <= PGD-{PGD_STEPS} {pgd:.4f}"),
        "pgd_at_most_clean": _check(pgd <= clean + one_point, f"PGD-{PGD_STEPS} {pgd:.4f} <= clean {clean:.4f}"),
        "pgd_not_far_above_autoattack": _check(pgd - autoattack <= PGD_SLACK,
                                               f"PGD-{PGD_STEPS} {pgd:.4f} - AutoAttack {autoattack:.4f} <= {PGD_SLACK}"),
        "pgd_falls_when_eps_doubles": _check(pgd_double < pgd or pgd == 0.0,
                                             f"PGD-{PGD_STEPS} at 2 eps {pgd_double:.4f} < at eps {pgd:.4f}"),
        "robust_plausibly_below_clean": _check(clean == 0.0 or autoattack <= PLAUSIBLE_RATIO * clean,
                                               f"AutoAttack {autoattack:.4f} <= {PLAUSIBLE_RATIO} x clean {clean:.4f}"),
    }
    warnings = [f"sanity check {name} failed: expected {check['detail']} (gradient masking?)"
                for name, check in checks.items() if not check["passed"]]
    return {"pgd_steps": PGD_STEPS, "pgd_accuracy": pgd, "pgd_accuracy_2eps": pgd_double, "checks": checks,
            "warnings": warnings}
