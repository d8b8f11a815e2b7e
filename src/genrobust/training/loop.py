"""One training loop for the standard classifier and for adversarial training, readable top to bottom.

Everything random in step t (which images, crops, flips, attack starts) is seeded from
(seed, t), and the learning rate is a function of t; so the state saved at an epoch
boundary (weights, EMA, optimiser, step, best validated weights) is all a rerun needs to
continue exactly where a killed run stopped.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import distributed, io
from ..attacks.pgd import accuracy, robust_accuracy
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
    epoch_steps: int | None = None  # None: an epoch is one pass over the real images
    accumulation_steps: int = 1     # micro-batches per step, so one GPU can reproduce a large batch
    bf16: bool = False              # autocast to bfloat16 (GPU)
    channels_last: bool = False
    compile: bool = False

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
    flip: bool = True                             # mirror real images at random (datasets.<name>.flip)


@dataclass
class Validation:
    """Held-out real images on which the averaged model is attacked every few epochs to pick the best one."""

    images: np.ndarray
    labels: np.ndarray
    every: int
    attack_steps: int
    batch_size: int = 256

    def measure(self, model: nn.Module, recipe: Recipe) -> dict[str, float]:
        device = next(model.parameters()).device
        x, y = to_tensor(self.images, device), torch.from_numpy(self.labels).to(device)
        clean = accuracy(model, x, y, self.batch_size)
        torch.manual_seed(recipe.seed)      # the same random starts at every validation
        robust = robust_accuracy(model, x, y, recipe.norm, recipe.eps, recipe.step_size, self.attack_steps,
                                 self.batch_size)
        return {"val_clean_accuracy": clean, "val_robust_accuracy": robust}


@dataclass
class FitResult:
    last: nn.Module                                  # the averaged (EMA) model at the end, else the trained one
    best: nn.Module | None                           # the one with the best held-out robust accuracy
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None


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
    parts = [to_tensor(crop_flip(data.real_images[real_idx], rng, flip=data.flip), device)] if len(real_idx) else []
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


def _step(model: nn.Module, trained: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe) -> float:
    """Forward and backward over the batch in `accumulation_steps` micro-batches; return the batch's mean loss.

    Each micro-batch's mean loss is weighted by its share of the batch, so the summed
    gradient is the full batch's; DistributedDataParallel all-reduces only on the last one.
    """
    if recipe.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pieces = list(zip(torch.tensor_split(x, recipe.accumulation_steps), torch.tensor_split(y, recipe.accumulation_steps)))
    total = 0.0
    for index, (xp, yp) in enumerate(pieces):
        last = index == len(pieces) - 1
        sync = contextlib.nullcontext() if last or not isinstance(trained, DistributedDataParallel) else trained.no_sync()
        with sync:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
                loss = _loss(model, trained, xp, yp, recipe) * (len(xp) / len(x))
            loss.backward()
        total += loss.item()
    return total


def _describe(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def fit(model: nn.Module, data: TrainingData, mixer: BatchMixer, recipe: Recipe, work_dir: Path,
        log: Callable[[str], None] | None = None, validation: Validation | None = None) -> FitResult:
    """Train to recipe.total_steps, resuming from work_dir/state.pt.

    Under torchrun each of the W processes takes every W-th image of the same global batch and
    DistributedDataParallel averages the gradients, so the step equals the single-process one
    up to batch-norm statistics, which each process computes on its own share.
    """
    device = next(model.parameters()).device
    world, rank = distributed.world_size(), distributed.rank()
    if mixer.batch_size % world:
        raise UserError(f"batch size {mixer.batch_size} is not divisible by the {world} processes")
    if mixer.batch_size // world < recipe.accumulation_steps:
        raise UserError(f"batch size {mixer.batch_size} over {world} processes is smaller than "
                        f"accumulation_steps = {recipe.accumulation_steps}")
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trained = DistributedDataParallel(model) if world > 1 else model
    # The attack (inside the loss) runs through `model`, the final forward through `trained`.
    attacked = torch.compile(model) if recipe.compile else model
    trained = torch.compile(trained) if recipe.compile else trained
    optimizer = _optimizer(model, recipe)
    ema = EMA(model, recipe.ema_decay) if recipe.ema_decay is not None else None
    state_path = Path(work_dir) / "state.pt"
    step, history, best = 0, [], None
    main = distributed.is_main()
    bar = tqdm(total=recipe.total_steps, unit="step", disable=not main, file=sys.stderr,
               mininterval=1 if sys.stderr.isatty() else 30, dynamic_ncols=True)
    log = (log or bar.write) if main else (lambda _: None)
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state["key"] == recipe.key():
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            step, history, best = state["step"], state["history"], state["best"]
            log(f"resuming from {state_path} at step {step}/{recipe.total_steps}")
        else:
            log(f"ignoring {state_path}: it was made with other settings")
    bar.update(step)
    steps_per_epoch = recipe.epoch_steps or mixer.steps_per_epoch()
    seen_loss, seen, started = 0.0, 0, time.perf_counter()
    model.train()
    while step < recipe.total_steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe)
        x, y = _batch(data, mixer, step, recipe.seed, device)
        x, y = x[rank::world], y[rank::world]
        torch.manual_seed(int(np.random.SeedSequence([recipe.seed, 3, step, rank]).generate_state(1)[0]))
        optimizer.zero_grad(set_to_none=True)
        loss = _step(attacked, trained, x, y, recipe)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        step += 1
        seen_loss += loss * len(x)
        seen += len(x)
        bar.update(1)
        bar.set_postfix(loss=f"{seen_loss / seen:.4f}", img_s=f"{seen * world / (time.perf_counter() - started):.1f}",
                        refresh=False)
        if step % steps_per_epoch == 0 or step == recipe.total_steps:
            averaged = ema.model if ema is not None else model
            if ema is not None:
                refresh_batchnorm(ema.model, (_batch(data, mixer, s, recipe.seed + 1, device)[0]
                                              for s in range(min(steps_per_epoch, 20))))
            epoch = math.ceil(step / steps_per_epoch)
            row = {"epoch": epoch, "step": step, "images_seen": step * mixer.batch_size,
                   "loss": seen_loss / max(seen, 1), "lr": lr_at(step - 1, recipe),
                   "images_per_s": seen * world / (time.perf_counter() - started)}
            if validation is not None and main and (epoch % validation.every == 0 or step == recipe.total_steps):
                row |= validation.measure(averaged.eval(), recipe)
                if best is None or row["val_robust_accuracy"] > best["score"]:
                    best = {"epoch": epoch, "score": row["val_robust_accuracy"],
                            "model": copy.deepcopy(averaged.state_dict())}
            model.train()
            history.append(row)
            log(_describe(row))
            if main:
                with io.atomic_path(state_path) as tmp:
                    torch.save({"key": recipe.key(), "step": step, "model": model.state_dict(),
                                "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema else None,
                                "history": history, "best": best}, tmp)
            seen_loss, seen, started = 0.0, 0, time.perf_counter()
    bar.close()
    last = (ema.model if ema is not None else model).eval()
    if best is None:
        return FitResult(last, None, history)
    best_model = copy.deepcopy(last)
    best_model.load_state_dict(best["model"])
    return FitResult(last, best_model.eval(), history, best["epoch"])
