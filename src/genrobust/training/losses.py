"""The two adversarial training objectives: TRADES (Zhang et al. 2019) and PGD-AT (Madry et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.pgd import maximise, pgd, project


def trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, step_size: float,
                steps: int, beta: float, label_smoothing: float = 0.0, trained: nn.Module | None = None) -> torch.Tensor:
    """CE(f(x), y) + beta * KL(f(x) || f(x_adv)), x_adv maximising the KL term from a small random start.

    The inner maximisation runs in eval mode so batch-norm statistics see only clean data.
    `trained` is the module the final loss goes through (the DistributedDataParallel wrapper
    under torchrun): the attack's own backward passes must not trigger gradient all-reduces.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        clean_probs = F.softmax(model(x), dim=1)
    start = project(x + 0.001 * torch.randn_like(x), x, norm, eps)
    x_adv = maximise(lambda adv: F.kl_div(F.log_softmax(model(adv), dim=1), clean_probs, reduction="sum"),
                     x, start, norm, eps, step_size, steps)
    model.train(was_training)
    logits = (model if trained is None else trained)(torch.cat([x, x_adv]))
    clean_logits, adv_logits = logits[: len(x)], logits[len(x):]
    natural = F.cross_entropy(clean_logits, y, label_smoothing=label_smoothing)
    robust = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1), reduction="batchmean")
    return natural + beta * robust


def pgd_at_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, step_size: float,
                steps: int, label_smoothing: float = 0.0, trained: nn.Module | None = None) -> torch.Tensor:
    """Cross-entropy on PGD examples (found in eval mode, for the same batch-norm reason as TRADES)."""
    was_training = model.training
    model.eval()
    x_adv = pgd(model, x, y, norm, eps, step_size, steps)
    model.train(was_training)
    return F.cross_entropy((model if trained is None else trained)(x_adv), y, label_smoothing=label_smoothing)
