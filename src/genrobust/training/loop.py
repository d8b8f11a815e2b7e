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

from .. import distributed
from ..attacks.threat import Threat
from ..errors import UserError
from ..resume import StateFile
from .batches import TrainingData
from .batchnorm import norm_layers, set_momentum
from .ema import EMA
from .loader import batches
from .losses import pgd_at_loss, trades_loss
from .mixing import BatchMixer
from .schedule import cosine, one_cycle
from .validation import Validation

STATE_NAME = "state.pt"
STATE_KEYS = ("key", "step", "model", "optimizer", "ema", "history", "best")
ADDED_LATER = {"sigma": 0.0, "lr_step_epochs": 30, "lr_gamma": 0.1}   # Recipe fields of the certified path


@dataclass(frozen=True)
class Recipe:
    loss: str                       # ce | trades | pgd | gaussian (Cohen et al.'s noise augmentation)
    total_steps: int
    lr: float
    momentum: float                 # the cosine schedule's; cosinew cycles it (0.95 -> 0.85 -> 0.95)
    nesterov: bool
    weight_decay: float
    warmup_fraction: float          # of training: learning-rate warm-up, and the EMA's copy-only phase
    ema_decay: float | None
    seed: int
    threat: Threat | None = None    # None: no attack (losses ce and gaussian)
    attack_steps: int = 0
    beta: float = 0.0
    label_smoothing: float = 0.0    # TRADES' natural term and plain CE training (PGD-AT takes plain CE)
    epoch_steps: int | None = None  # None: an epoch is one pass over the real images
    accumulation_steps: int = 1     # micro-batches per step, so one GPU can reproduce a large batch
    bf16: bool = False              # autocast to bfloat16 (GPU)
    channels_last: bool = False
    compile: bool = False
    schedule: str = "cosine"        # cosine (per step) | cosinew (DM-Improves-AT: OneCycleLR per epoch)
    bn_momentum: float | None = None  # batch-norm momentum after a first step at 1.0; None: PyTorch's 0.1 throughout
    trades_attack: str = "batch"    # batch (DM-Improves-AT) | eval (Zhang et al.); see losses.py
    sigma: float = 0.0              # the gaussian loss's noise standard deviation, in [0, 1] pixel units
    lr_step_epochs: int = 30        # the step schedule's: lr x lr_gamma every lr_step_epochs epochs
    lr_gamma: float = 0.1

    def key(self) -> str:
        """Fields added after resume states existed are left out at their defaults, so those states still resume."""
        fields = {k: v for k, v in asdict(self).items() if k not in ADDED_LATER or v != ADDED_LATER[k]}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def lr_momentum(self, step: int, steps_per_epoch: int) -> tuple[float, float]:
        if self.schedule == "cosinew":
            return one_cycle(step // steps_per_epoch, math.ceil(self.total_steps / steps_per_epoch), self.lr,
                             self.warmup_fraction)
        if self.schedule == "step":
            return self.lr * self.lr_gamma ** (step // steps_per_epoch // self.lr_step_epochs), self.momentum
        return cosine(step, self.total_steps, self.lr, self.warmup_fraction), self.momentum


@dataclass
class FitResult:
    last: nn.Module                                  # the averaged (EMA) model at the end, else the trained one
    best: nn.Module | None                           # the one with the best held-out robust accuracy
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD with weight decay on everything but batch-norm parameters (the reference's `group_weight`)."""
    norm_params = {id(p) for m in norm_layers(model) for p in m.parameters(recurse=False)}
    decay = [p for p in model.parameters() if id(p) not in norm_params]
    no_decay = [p for p in model.parameters() if id(p) in norm_params]
    return torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


def _loss(model: nn.Module, trained: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    if recipe.loss == "ce":
        return F.cross_entropy(trained(x), y, label_smoothing=recipe.label_smoothing)
    if recipe.loss == "trades":
        return trades_loss(model, x, y, recipe.threat, recipe.attack_steps, recipe.beta, recipe.label_smoothing,
                           trained, recipe.trades_attack)
    if recipe.loss == "pgd":
        return pgd_at_loss(model, x, y, recipe.threat, recipe.attack_steps, trained)
    if recipe.loss == "gaussian":   # Cohen et al.: unclipped noise on [0, 1] pixels, before normalisation
        return F.cross_entropy(trained(x + recipe.sigma * torch.randn_like(x)), y)
    raise ValueError(f"unknown loss {recipe.loss!r}")


def _step(model: nn.Module, trained: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
          ddp: DistributedDataParallel | None = None) -> torch.Tensor:
    """Forward and backward over the batch in `accumulation_steps` micro-batches; return the batch's mean loss.

    Each micro-batch's mean loss is weighted by its share of the batch, so the summed
    gradient is the full batch's; `ddp` (the wrapper inside `trained`, compiled or not)
    all-reduces only on the last one. The loss stays on the device: reading it would wait for the GPU.
    """
    if recipe.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pieces = list(zip(torch.tensor_split(x, recipe.accumulation_steps), torch.tensor_split(y, recipe.accumulation_steps)))
    total = torch.zeros((), device=x.device)
    for index, (xp, yp) in enumerate(pieces):
        last = index == len(pieces) - 1
        with contextlib.nullcontext() if last or ddp is None else ddp.no_sync():
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
                loss = _loss(model, trained, xp, yp, recipe) * (len(xp) / len(x))
            loss.backward()
        total += loss.detach()
    return total


def train_step(model: nn.Module, trained: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
               x: torch.Tensor, y: torch.Tensor, step: int, recipe: Recipe, steps_per_epoch: int,
               ddp: DistributedDataParallel | None = None) -> torch.Tensor:
    """One optimiser step (0-based `step`): schedule, batch-norm momentum, forward/backward, update, EMA."""
    lr, momentum = recipe.lr_momentum(step, steps_per_epoch)
    for group in optimizer.param_groups:
        group["lr"], group["momentum"] = lr, momentum
    if recipe.bn_momentum is not None:
        set_momentum(model, 1.0 if step == 0 else recipe.bn_momentum)
    optimizer.zero_grad(set_to_none=True)
    loss = _step(model, trained, x, y, recipe, ddp)
    optimizer.step()
    if ema is not None:
        ema.update(model)
    return loss


def _describe(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def fit(model: nn.Module, data: TrainingData, mixer: BatchMixer, recipe: Recipe, work_dir: Path,
        log: Callable[[str], None] | None = None, validation: Validation | None = None,
        restart: bool = False, workers: int = 0) -> FitResult:
    """Train to recipe.total_steps, resuming from work_dir/state.pt (see `resume`) unless `restart`;
    `workers` loader processes build batches ahead (see `loader`).

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
    ddp = DistributedDataParallel(model) if world > 1 else None
    # The attack (inside the loss) runs through the first, the final forward through the second. Compiled, a step
    # at batch-norm momentum 1 (the first) would add a second set of graphs for one step, so it runs eagerly.
    eager = (model, ddp or model)
    compiled = tuple(torch.compile(m) for m in eager) if recipe.compile else eager
    optimizer = make_optimizer(model, recipe)
    ema = EMA(model, recipe.ema_decay, recipe.warmup_fraction * recipe.total_steps) \
        if recipe.ema_decay is not None else None
    state_file = StateFile(Path(work_dir) / STATE_NAME, STATE_KEYS, weights_only=False)
    step, history, best = 0, [], None
    main = distributed.is_main()
    bar = tqdm(total=recipe.total_steps, unit="step", disable=not main, file=sys.stderr,
               mininterval=1 if sys.stderr.isatty() else 30, dynamic_ncols=True)
    log = (log or bar.write) if main else (lambda _: None)
    data_key = data.identity()

    def unusable(state: dict) -> str | None:
        """Why a state cannot continue this run. One saved before states recorded their data cannot be shown to
        match: continuing it could silently train on with another data set's weights, so it is set aside too."""
        if state["key"] != recipe.key():
            return "made with other settings"
        if "data" not in state:
            return "saved without a record of its training data (an older genrobust)"
        return "made from other training data" if state["data"] != data_key else None

    resumed = state_file.load(unusable, log, restart)
    if resumed is not None:
        state_path, state = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step, history, best = state["step"], state["history"], state["best"]
        log(f"resuming from {state_path} at step {step}/{recipe.total_steps}")
    bar.update(step)
    steps_per_epoch = recipe.epoch_steps or mixer.steps_per_epoch()
    seen_loss, seen, started = torch.zeros((), device=device), 0, time.perf_counter()
    model.train()
    for x, y in batches(data, mixer, recipe.seed, range(step, recipe.total_steps), device, rank, world, workers,
                        recipe.channels_last):
        torch.manual_seed(int(np.random.SeedSequence([recipe.seed, 3, step, rank]).generate_state(1)[0]))
        attacked, trained = eager if step == 0 and recipe.bn_momentum is not None else compiled
        loss = train_step(attacked, trained, optimizer, ema, x, y, step, recipe, steps_per_epoch, ddp)
        step += 1
        seen_loss += loss * len(x)
        seen += len(x)
        bar.update(1)
        if step % steps_per_epoch == 0 or step == recipe.total_steps:
            averaged = ema.model if ema is not None else model
            epoch = math.ceil(step / steps_per_epoch)
            row = {"epoch": epoch, "step": step, "images_seen": step * mixer.batch_size,
                   "loss": seen_loss.item() / max(seen, 1), "lr": optimizer.param_groups[0]["lr"],
                   "images_per_s": seen * world / (time.perf_counter() - started)}
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}", refresh=False)
            if validation is not None and (epoch % validation.every == 0 or step == recipe.total_steps):
                figures, score = validation.measure(averaged.eval(), recipe.threat, recipe.sigma, recipe.seed)
                row |= figures
                if best is None or score > best["score"]:
                    best = {"epoch": epoch, "score": score, "model": copy.deepcopy(averaged.state_dict()) if main else None}
            model.train()
            history.append(row)
            log(_describe(row))
            state_file.save_in_background({"key": recipe.key(), "data": data_key, "step": step,
                                           "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                           "ema": ema.state_dict() if ema else None, "history": history, "best": best})
            seen_loss, seen, started = torch.zeros((), device=device), 0, time.perf_counter()
    state_file.wait()
    bar.close()
    last = (ema.model if ema is not None else model).eval()
    if best is None or best["model"] is None:     # the other processes of a data-parallel run keep no copy
        return FitResult(last, None, history)
    best_model = copy.deepcopy(last)
    best_model.load_state_dict(best["model"])
    return FitResult(last, best_model.eval(), history, best["epoch"])
