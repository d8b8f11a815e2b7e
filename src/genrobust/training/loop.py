"""One training loop for the standard classifier and for adversarial training, readable top to bottom.

Everything random in step t (which images, crops, flips, attack starts) is seeded from
(seed, t), and the learning rate is a function of t; so the state saved at an epoch
boundary (weights, EMA, optimiser, step) is all a rerun needs to continue exactly where
a killed run stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed, io
from ..errors import UserError
from ..shards import ShardSet
from .augment import crop_flip
from .ema import EMA, refresh_batchnorm
from .losses import pgd_at_loss, trades_loss
from .mixing import BatchMixer


@dataclass(frozen=True)
class Recipe:
    loss: str                       # ce | trades | pgd
    total_steps: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    warmup_fraction: float
    ema_decay: float | None
    seed: int
    norm: str = "Linf"
    eps: float = 0.0
    step_size: float = 0.0
    attack_steps: int = 0
    beta: float = 0.0
    label_smoothing: float = 0.0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainingData:
    """Real images in RAM (uint8, small); generated ones stay memory-mapped in their shards."""

    real_images: np.ndarray
    real_labels: np.ndarray
    generated: ShardSet | None = None
    generated_index: np.ndarray | None = None     # mixer index -> global shard index (kept images only)
    generated_labels: np.ndarray | None = None    # pseudo-labels, aligned with generated_index


def lr_at(step: int, recipe: Recipe) -> float:
    """One-cycle cosine: linear warm-up, then cosine decay to zero."""
    warmup = max(1, round(recipe.warmup_fraction * recipe.total_steps))
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, recipe.total_steps - warmup)
    return 0.5 * recipe.lr * (1 + math.cos(math.pi * progress))


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2))).to(device).float().div_(255)


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD with no weight decay on batch-norm parameters and biases (one-dimensional tensors)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


def _batch(data: TrainingData, mixer: BatchMixer, step: int, seed: int,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    real_idx, gen_idx = mixer.batch(step)
    rng = np.random.default_rng([seed, 2, step])
    parts = [to_tensor(crop_flip(data.real_images[real_idx], rng), device)] if len(real_idx) else []
    labels = [torch.from_numpy(data.real_labels[real_idx])] if len(real_idx) else []
    if len(gen_idx):
        images, _ = data.generated.take(data.generated_index[gen_idx])
        parts.append(to_tensor(images, device))
        labels.append(torch.from_numpy(data.generated_labels[gen_idx]))
    return torch.cat(parts), torch.cat(labels).to(device)


def _loss(model: nn.Module, trained: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    if recipe.loss == "ce":
        return F.cross_entropy(trained(x), y, label_smoothing=recipe.label_smoothing)
    if recipe.loss == "trades":
        return trades_loss(model, x, y, recipe.norm, recipe.eps, recipe.step_size, recipe.attack_steps,
                           recipe.beta, recipe.label_smoothing, trained)
    if recipe.loss == "pgd":
        return pgd_at_loss(model, x, y, recipe.norm, recipe.eps, recipe.step_size, recipe.attack_steps,
                           recipe.label_smoothing, trained)
    raise ValueError(f"unknown loss {recipe.loss!r}")


def _silent(_: str) -> None:
    """Only the first process reports progress."""


def fit(model: nn.Module, data: TrainingData, mixer: BatchMixer, recipe: Recipe, work_dir: Path,
        log: Callable[[str], None] = print) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train to recipe.total_steps, resuming from work_dir/state.pt; return the model to save and the history.

    Under torchrun each of the W processes takes every W-th image of the same global batch and
    DistributedDataParallel averages the gradients, so the step equals the single-process one
    up to batch-norm statistics, which each process computes on its own share.
    """
    device = next(model.parameters()).device
    world, rank = distributed.world_size(), distributed.rank()
    if mixer.batch_size % world:
        raise UserError(f"batch size {mixer.batch_size} is not divisible by the {world} processes")
    trained = DistributedDataParallel(model) if world > 1 else model
    if not distributed.is_main():
        log = _silent
    optimizer = _optimizer(model, recipe)
    ema = EMA(model, recipe.ema_decay) if recipe.ema_decay is not None else None
    state_path = Path(work_dir) / "state.pt"
    step, history = 0, []
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state["key"] == recipe.key():
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            step, history = state["step"], state["history"]
            log(f"resuming from {state_path} at step {step}/{recipe.total_steps}")
        else:
            log(f"ignoring {state_path}: it was made with other settings")
    steps_per_epoch = mixer.steps_per_epoch()
    seen_loss, seen, started = 0.0, 0, time.perf_counter()
    model.train()
    while step < recipe.total_steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe)
        x, y = _batch(data, mixer, step, recipe.seed, device)
        x, y = x[rank::world], y[rank::world]
        torch.manual_seed(int(np.random.SeedSequence([recipe.seed, 3, step, rank]).generate_state(1)[0]))
        loss = _loss(model, trained, x, y, recipe)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        step += 1
        seen_loss += loss.item() * len(x)
        seen += len(x)
        if step % steps_per_epoch == 0 or step == recipe.total_steps:
            model.eval()
            with torch.no_grad():
                seen_correct = int((model(x).argmax(1) == y).sum())
            model.train()
            if ema is not None:
                refresh_batchnorm(ema.model, (_batch(data, mixer, s, recipe.seed + 1, device)[0]
                                              for s in range(min(steps_per_epoch, 20))))
            row = {"epoch": math.ceil(step / steps_per_epoch), "step": step, "images_seen": step * mixer.batch_size,
                   "loss": seen_loss / max(seen, 1), "last_batch_accuracy": seen_correct / len(x),
                   "lr": lr_at(step - 1, recipe), "images_per_s": seen / (time.perf_counter() - started)}
            history.append(row)
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            if distributed.is_main():
                with io.atomic_path(state_path) as tmp:
                    torch.save({"key": recipe.key(), "step": step, "model": model.state_dict(),
                                "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema else None,
                                "history": history}, tmp)
            seen_loss, seen, started = 0.0, 0, time.perf_counter()
    final = ema.model if ema is not None else model
    return final.eval(), history
