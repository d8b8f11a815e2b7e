"""ARC, the Area under the Robust discrimination Curve (Sehwag et al. 2022, "Robust Learning Meets
Generative Models", section 2.2).

FID ranks generators by how alike real and generated images look to an ImageNet network; Sehwag et
al. found that this ranking fails to predict how much robustness a generator's data transfers, and
measure instead how distinguishable the two sets are under adversarial perturbation: a binary
real-vs-generated discriminator is adversarially trained at each budget eps, and its robust accuracy
on held-out images, a(eps), falls towards chance as eps grows. A generator whose images stay
distinguishable only for small perturbations is close to the real distribution in the sense that
matters for robust training (their Theorem 1 bounds the robustness gap by a conditional Wasserstein
distance, which the curve estimates). ARC is the area under a(eps) above chance, by the trapezoid
rule over `quality.arc.eps`: lower means closer, and better transfer.

The same discriminator, at `quality.arc.select_eps`, scores single images by its probability that
they are real (section 2.3); `pseudo_label.mode: arc` keeps the most real-looking ones per class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.pgd import pgd, robust_accuracy
from ..attacks.threat import Threat
from ..data.transform import to_tensor
from ..training.common import new_model
from ..training.schedule import cosine

REAL = 1  # the discriminator's class for real images; its softmax there is the "looks real" score


@dataclass(frozen=True)
class ArcConfig:
    """`quality.arc` of params.yaml."""

    norm: str
    eps: tuple[float, ...]        # the budgets of the curve, increasing, starting at 0
    select_eps: float             # the budget whose discriminator scores images for pseudo_label's arc mode
    images: int                   # per side (real, generated): half train the discriminator, half measure it
    model: Mapping[str, Any]
    epochs: int
    batch_size: int
    lr: float
    attack_steps: int

    @classmethod
    def from_params(cls, arc: Mapping[str, Any]) -> "ArcConfig":
        return cls(norm=arc["norm"], eps=tuple(float(e) for e in arc["eps"]), select_eps=float(arc["select_eps"]),
                   images=arc["images"], model=dict(arc["model"]), epochs=arc["epochs"],
                   batch_size=arc["batch_size"], lr=arc["lr"], attack_steps=arc["attack_steps"])

    def threat(self, eps: float) -> Threat:
        """Madry et al.'s step size, 2.5 eps / steps, so the attack can cross the whole ball."""
        return Threat(self.norm, eps, 2.5 * eps / max(self.attack_steps, 1))


@dataclass(frozen=True)
class Split:
    """Real (label REAL) and generated (label 0) images, uint8 NHWC, shuffled, for training and measuring."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    generated_train: np.ndarray   # positions in the generated array given to `split` that train the discriminator


def split(real: np.ndarray, generated: np.ndarray, seed: int) -> Split:
    """Equal numbers of each side (the smaller count), each side halved into train and test."""
    count = min(len(real), len(generated))
    rng = np.random.default_rng(seed)
    halves, positions = [], np.empty(0, dtype=np.int64)
    for images, label in ((real, REAL), (generated, 1 - REAL)):
        positions = np.sort(rng.choice(len(images), count, replace=False))
        chosen = np.asarray(images[positions])
        halves.append((chosen[:count // 2], chosen[count // 2:], label))
    train_x = np.concatenate([h[0] for h in halves])
    test_x = np.concatenate([h[1] for h in halves])
    train_y = np.concatenate([np.full(len(h[0]), h[2]) for h in halves])
    test_y = np.concatenate([np.full(len(h[1]), h[2]) for h in halves])
    order = rng.permutation(len(train_x))
    return Split(train_x[order], train_y[order], test_x, test_y, positions[:count // 2])


def train_discriminator(data: Split, cfg: ArcConfig, eps: float, seed: int, device: torch.device) -> nn.Module:
    """PGD adversarial training (plain cross-entropy on eps-perturbed images; clean at eps 0), SGD, cosine lr."""
    model = new_model(cfg.model, 2, data.train_x, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x_all, y_all = to_tensor(data.train_x, device), torch.from_numpy(data.train_y).long().to(device)
    steps_per_epoch = math.ceil(len(x_all) / cfg.batch_size)
    total, threat, step = cfg.epochs * steps_per_epoch, cfg.threat(eps), 0
    generator = torch.Generator().manual_seed(seed)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x_all), generator=generator).to(device)
        for start in range(0, len(x_all), cfg.batch_size):
            x, y = x_all[order[start:start + cfg.batch_size]], y_all[order[start:start + cfg.batch_size]]
            if eps > 0:
                model.eval()
                x = pgd(model, x, y, threat, cfg.attack_steps)
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = cosine(step, total, cfg.lr, 0)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return model.eval()


def area_above_chance(eps: tuple[float, ...], accuracy: list[float]) -> float:
    """Trapezoid area under max(a(eps) - 1/2, 0): a discriminator no better than chance adds nothing."""
    above = np.maximum(np.asarray(accuracy, dtype=np.float64) - 0.5, 0.0)
    widths = np.diff(np.asarray(eps, dtype=np.float64))
    return float(np.sum(widths * (above[1:] + above[:-1]) / 2))


DEFINITION = ("our reading of Sehwag et al. 2022, section 2.2 (their repository has no ARC code): trapezoid area "
              "under max(a(eps) - 1/2, 0) over eps, a(eps) the held-out PGD accuracy of a real-vs-generated "
              "discriminator adversarially trained at eps; units: accuracy above chance x eps (pixel scale 0-1)")


def measure(real: np.ndarray, generated: np.ndarray, cfg: ArcConfig, seed: int,
            device: torch.device) -> tuple[dict[str, Any], nn.Module, np.ndarray]:
    """The curve, its area, the discriminator trained at `select_eps` (for pseudo_label's arc mode) and the
    positions in `generated` it trained on (never to be scored by it)."""
    data = split(real, generated, seed)
    test_x, test_y = to_tensor(data.test_x, device), torch.from_numpy(data.test_y).long().to(device)
    accuracy, selector = [], None
    for eps in cfg.eps:
        model = train_discriminator(data, cfg, eps, seed, device)
        if eps > 0:
            accuracy.append(robust_accuracy(model, test_x, test_y, cfg.threat(eps), 2 * cfg.attack_steps))
        else:
            with torch.no_grad():
                accuracy.append(float((model(test_x).argmax(1) == test_y).float().mean()))
        if eps == cfg.select_eps:
            selector = model
    assert selector is not None, "the schema check puts select_eps among eps"
    return ({"value": area_above_chance(cfg.eps, accuracy), "definition": DEFINITION, "norm": cfg.norm,
             "eps": list(cfg.eps), "robust_discrimination_accuracy": accuracy,
             "images_per_side": len(data.train_x) // 2 + len(test_x) // 2, "select_eps": cfg.select_eps},
            selector, data.generated_train)


@torch.no_grad()
def real_probability(model: nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    """The discriminator's softmax probability that each image is real: Sehwag et al.'s per-sample score."""
    return torch.softmax(model(to_tensor(images, device)).float(), dim=1)[:, REAL].cpu().numpy()
