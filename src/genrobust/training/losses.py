"""The two adversarial training objectives: TRADES (Zhang et al. 2019) and PGD-AT (Madry et al. 2018).

`trades_attack` picks how TRADES' inner maximisation sees the network:
  batch  DM-Improves-AT (Wang et al. 2023, after Gowal et al. 2020): train mode with batch-norm
         running statistics frozen, so the attack sees batch statistics; Linf starts uniform in the ball
  eval   Zhang et al.'s original: eval mode (running statistics); Linf starts at x + 0.001 N(0, I)
Both take Zhang et al.'s L2 attack: normalised-gradient steps of 2 eps / steps from x + 0.001 N(0, I),
each followed by the pixel box and a renorm to eps.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.pgd import maximise, pgd
from ..attacks.threat import Threat
from .batchnorm import frozen_statistics

TRADES_ATTACKS = ("batch", "eval")


def _trades_start(x: torch.Tensor, threat: Threat, trades_attack: str) -> torch.Tensor:
    if threat.norm == "Linf" and trades_attack == "batch":
        return (x + torch.empty_like(x).uniform_(-threat.eps, threat.eps)).clamp(0.0, 1.0)
    return x + 0.001 * torch.randn_like(x)


def trades_adversary(model: nn.Module, x: torch.Tensor, threat: Threat, steps: int,
                     trades_attack: str = "batch") -> torch.Tensor:
    """x_adv maximising KL(f(x) || f(x_adv)) in the eps-ball; leaves the model in train mode."""
    if trades_attack not in TRADES_ATTACKS:
        raise ValueError(f"unknown trades_attack {trades_attack!r}; expected one of {TRADES_ATTACKS}")
    model.train(trades_attack == "batch")
    with frozen_statistics(model):
        with torch.no_grad():
            clean_probs = F.softmax(model(x), dim=1)
        start = _trades_start(x, threat, trades_attack)
        if threat.norm == "L2":
            threat = replace(threat, step_size=2 * threat.eps / steps)
        x_adv = maximise(lambda adv: F.kl_div(F.log_softmax(model(adv), dim=1), clean_probs, reduction="sum"),
                         x, start, threat, steps)
    model.train()
    return x_adv


def trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, steps: int, beta: float,
                label_smoothing: float = 0.0, trained: nn.Module | None = None,
                trades_attack: str = "batch") -> torch.Tensor:
    """CE(f(x), y) + beta * KL(f(x) || f(x_adv)).

    Clean and adversarial views go through the network in two passes, as in the reference, so
    each is normalised with its own batch statistics (and the running statistics take both).
    `trained` is the module the final loss goes through (the DistributedDataParallel wrapper
    under torchrun): the attack's own backward passes must not trigger gradient all-reduces.
    """
    x_adv = trades_adversary(model, x, threat, steps, trades_attack)
    final = model if trained is None else trained
    clean_logits, adv_logits = final(x), final(x_adv)
    natural = F.cross_entropy(clean_logits, y, label_smoothing=label_smoothing)
    robust = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1), reduction="batchmean")
    return natural + beta * robust


def pgd_at_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, steps: int,
                trained: nn.Module | None = None) -> torch.Tensor:
    """Plain cross-entropy on PGD examples found in eval mode, as the reference's Madry et al. step."""
    model.eval()
    x_adv = pgd(model, x, y, threat, steps)
    model.train()
    return F.cross_entropy((model if trained is None else trained)(x_adv), y)
