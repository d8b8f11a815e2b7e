"""Stage train_diffusion: fit a class-conditional diffusion model to train.npz, resumably.

A plain training loop: batches drawn at random from the memory-mapped images, mirrored copies where both
`diffusion.xflip` and the dataset (`datasets.<name>.flip`) allow them, at `diffusion.resolution`; the update rule of
`recipe` (EDM's for the paper preset); bf16 autocast per `diffusion.precision`. Every
`checkpoint_every` steps and at the end the whole training state goes atomically to
`work_dir/ckpt.pt` (the one before kept as `ckpt.pt.prev`, see `resume`), which is not a declared
pipeline output, so neither Snakemake nor DVC deletes it before a rerun; a rerun with the same
settings resumes from it, and one with more `steps` continues it. Every `grid_every` steps and at
the end a PNG grid of EMA samples goes to `work_dir/grids/`. The EMA weights are what the model
file keeps and what the sampler uses.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import distributed, io
from ..data.transform import resized
from ..errors import UserError
from ..provenance import StageClock, read_meta
from ..resume import StateFile
from .grid import grid_path, write_grid
from .batches import Options, Rngs, draw_batch, layout, options, rng_state, seed_process, set_rng_state
from .model import FORMAT, build_model, model_config, resolution
from .pretrained import import_pretrained
from .recipe import Recipe, apply_step, make_ema, make_optimizer

CKPT_NAME = "ckpt.pt"
CKPT_FORMAT = "genrobust-diffusion-train-state"
CKPT_KEYS = ("format", "fingerprint", "step", "model", "ema", "optimizer", "rng")
LOG_EVERY = 50
RECIPE_KEYS = ("batch_size", "optimizer", "lr", "lr_rampup_images", "weight_decay", "adam_eps", "grad_clip",
               "ema_halflife_images", "ema_rampup_ratio", "ema_decay")


def train_diffusion(settings: Mapping[str, Any], generator: str, train_path: Path, model_out: Path,
                    work_dir: Path, restart: bool = False) -> None:
    """Train (or resume training, unless `restart`) and write the EMA model to `model_out`; with
    `diffusion.pretrained` naming this dataset, import that released model instead."""
    cfg = settings["diffusion"]
    if pretrained := cfg["pretrained"].get(settings["dataset"]["name"]):
        import_pretrained(settings, generator, Path(pretrained), model_out)
        return
    num_classes = settings["dataset"]["num_classes"]
    arrays = io.open_npz(train_path)
    images, labels = io.validate_images(train_path, arrays, num_classes)
    io.require_every_class(train_path, labels, num_classes, "the class-conditional diffusion model")
    images = resized(images, resolution(model_config(cfg, generator)))
    clock = StageClock("train_diffusion", read_meta(arrays))
    device = distributed.device()
    fingerprint = _fingerprint(settings, generator, train_path)

    seed_process(settings["seed"], distributed.rank())
    rngs = Rngs.seeded(settings["seed"], device)
    opts = options(settings, device)
    clock.precision = "bf16" if opts.bf16 else "fp32"
    model = build_model(generator, model_config(cfg, generator), num_classes).to(device, memory_format=layout(opts))
    recipe = Recipe.from_params(cfg)
    optimizer = make_optimizer(model, recipe)
    ema = make_ema(model, recipe)
    print(f"train_diffusion {generator}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} "
          "parameters", flush=True)
    state_file = StateFile(Path(work_dir) / CKPT_NAME, CKPT_KEYS)
    start = _resume(state_file, fingerprint, cfg["steps"], model, ema, optimizer, rngs, settings["seed"], device,
                    restart)

    model.train()
    world = distributed.world_size()
    if cfg["batch_size"] % world:
        raise UserError(f"diffusion.batch_size = {cfg['batch_size']} is not divisible by the {world} processes")
    # Under torchrun each process trains on every world-th image of the same global batch.
    trained = DistributedDataParallel(model) if world > 1 else model

    def after_step(step: int) -> None:
        """Checkpoint, then draw a grid, on the steps params ask for and at the last one (first process only)."""
        last = step == cfg["steps"]
        if step % cfg["checkpoint_every"] == 0 or last:
            _save_state(state_file, fingerprint, step, model, ema, optimizer, rngs)
        if cfg["grid_every"] and (step % cfg["grid_every"] == 0 or last):
            write_grid(ema.ema_model, num_classes, cfg["grid_steps"], settings["seed"], grid_path(work_dir, step))

    _loop(trained, model, ema, optimizer, images, labels, recipe, cfg["steps"], opts, rngs, device, start,
          after_step, tag=generator)
    if not distributed.is_main():
        return

    checkpoint = {"format": FORMAT, "generator": generator, "config": model_config(cfg, generator),
                  "num_classes": num_classes, "state_dict": _cpu(ema.ema_model.state_dict()),
                  "meta": clock.meta(generator=generator, steps=cfg["steps"], resumed_from_step=start,
                                     train_sha256=fingerprint["train_sha256"])}
    with io.atomic_path(model_out) as tmp:
        torch.save(checkpoint, tmp)


def _fingerprint(settings: Mapping[str, Any], generator: str, train_path: Path) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed; `steps` is left out so a run can be extended."""
    cfg = settings["diffusion"]
    return {"generator": generator, "config": model_config(cfg, generator),
            "num_classes": settings["dataset"]["num_classes"], "seed": settings["seed"],
            "flip": options(settings, torch.device("cpu")).flip,
            **{key: cfg[key] for key in RECIPE_KEYS},
            "train_sha256": io.sha256(train_path)}


def _loop(trained: nn.Module, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer, images: np.ndarray,
          labels: np.ndarray, recipe: Recipe, steps: int, opts: Options, rngs: Rngs, device: torch.device,
          start: int, after_step: Callable[[int], None], tag: str) -> None:
    """Steps `start + 1 ... steps` with a progress bar (images/s, loss) on stderr; `after_step` on the first process."""
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    batch_size = recipe.batch_size
    loss_sum, window, tick = torch.zeros((), device=device), 0, time.perf_counter()
    # In a log file (Snakemake, DVC) a bar line a minute is plenty; on a terminal it redraws every second.
    bar = tqdm(total=steps * batch_size, initial=start * batch_size, unit="img", unit_scale=True,
               desc=f"train_diffusion {tag}", file=sys.stderr, disable=not main,
               mininterval=1.0 if sys.stderr.isatty() else 60.0)
    with bar:
        for step in range(start + 1, steps + 1):
            x, y = draw_batch(images, labels, batch_size, opts, device, rngs.batch)
            # EDM's network: the global batch's per-image draws, of which this process keeps its share.
            draws = {"draws": model.draw(x, rngs.draws)[rank::world]} if hasattr(model, "draw") else {}
            x, y = x[rank::world], y[rank::world]
            with _autocast(device, opts.bf16):
                loss = trained(x, classes=y, **draws)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            apply_step(model, ema, optimizer, recipe, (step - 1) * batch_size)
            loss_sum += loss.detach().float()  # summed on the device: no host sync between log lines
            window += 1
            bar.update(batch_size)
            if main and (step % LOG_EVERY == 0 or step == steps):
                mean_loss, rate = loss_sum.item() / window, window * batch_size / (time.perf_counter() - tick)
                bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                bar.write(f"train_diffusion {tag}: step {step}/{steps} loss {mean_loss:.4f} {rate:.1f} images/s",
                          file=sys.stdout)
                sys.stdout.flush()
                loss_sum.zero_()
                window, tick = 0, time.perf_counter()
            if main:
                after_step(step)


def _autocast(device: torch.device, bf16: bool) -> ContextManager[Any]:
    """bf16 mixed precision where asked (`auto`: on CUDA only, since on a CPU it is slower and gains nothing)."""
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _cpu(state: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value.detach().cpu() if isinstance(value, torch.Tensor) else value for key, value in state.items()}


def _save_state(state_file: StateFile, fingerprint: Mapping[str, Any], step: int, model: nn.Module, ema: nn.Module,
                optimizer: torch.optim.Optimizer, rngs: Rngs) -> None:
    """Everything needed to continue bit-for-bit: weights, EMA, optimizer, step and all RNG states."""
    state_file.save({"format": CKPT_FORMAT, "fingerprint": dict(fingerprint), "step": step,
                     "model": _cpu(model.state_dict()), "ema": _cpu(ema.state_dict()),
                     "optimizer": optimizer.state_dict(), "rng": rng_state(rngs)})


def _resume(state_file: StateFile, fingerprint: Mapping[str, Any], steps: int, model: nn.Module, ema: nn.Module,
            optimizer: torch.optim.Optimizer, rngs: Rngs, seed: int, device: torch.device, restart: bool) -> int:
    """Load the newest usable checkpoint and return its step; 0 (train from scratch) when there is none.

    One made with other settings or data, or already past `steps`, is set aside rather than trusted.
    """
    def check(state: dict[str, Any]) -> str | None:
        if state["format"] != CKPT_FORMAT:
            return f"not a {CKPT_FORMAT} file"
        if state["fingerprint"] != fingerprint:
            return "made with other settings or data"
        return f"at step {state['step']}, beyond steps = {steps}" if state["step"] > steps else None

    resumed = state_file.load(check, lambda line: print(f"train_diffusion: {line}", flush=True), restart)
    if resumed is None:
        return 0
    path, state = resumed
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"], rngs, device, seed, distributed.rank(), state["step"])
    print(f"train_diffusion: resuming from {path} at step {state['step']}", flush=True)
    return state["step"]
