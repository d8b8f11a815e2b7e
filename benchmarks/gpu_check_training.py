"""The training measurements of benchmarks/gpu_check.py, one function per GPU path of issue 22; each returns its JSON
figures and raises where a check fails. `Scale` says how big: the paper's sizes on a GPU, toy ones (`--tiny`) on a
CPU, where the same code runs so that it cannot rot."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from adv_train import measure, paper_recipe

from genrobust.attacks.threat import Threat
from genrobust.host_syncs import HostSyncs
from genrobust.models.checkpoint import build_classifier
from genrobust.report.flops import pass_flops
from genrobust.training.batches import TrainingData
from genrobust.training.ema import EMA
from genrobust.training.loader import batches
from genrobust.training.loop import Recipe, make_optimizer, train_step
from genrobust.training.memory import GiB, accumulation_for, step_memory
from genrobust.training.mixing import BatchMixer

LINF = Threat("Linf", 8 / 255, 2 / 255)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}     # dense tensor-core peaks (SXM)
PAPER_DDPMPP = {"model_channels": 128, "channel_mult": [2, 2, 2], "num_blocks": 4, "attn_resolutions": [16],
                "dropout": 0.13, "label_dropout": 0.0}
TINY_DDPMPP = {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
               "label_dropout": 0.0}


@dataclass(frozen=True)
class Scale:
    wrn: tuple[int, int]            # the TRADES network's depth and width
    batch: int
    attack_steps: int
    iters: int
    ddpmpp: dict
    diffusion_batch: int
    sample_steps: int
    eval_images: int
    certify_batch: int
    memory_configs: tuple[tuple[int, int, int, bool], ...]   # depth, width, batch per GPU, bf16


PAPER = Scale((28, 10), 512, 10, 5, PAPER_DDPMPP, 128, 18, 500, 4000,
              ((28, 10, 2048, False), (70, 16, 256, True), (70, 16, 512, True)))
TINY = Scale((10, 1), 8, 2, 2, TINY_DDPMPP, 4, 3, 8, 100, ((10, 1, 16, False),))


def _wrn(scale: Scale, depth: int | None = None, width: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = {"arch": "wrn", "depth": depth or scale.wrn[0], "width": width or scale.wrn[1], "activation": "silu"}
    return build_classifier(spec, 10, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])


def _timed(work: Callable[[], Any], device: torch.device, iters: int) -> float:
    """Seconds per call after one warm-up call (benchmarks/adv_train.py's timing)."""
    return measure(work, 1, iters, device)


def _recipe(bf16: bool, steps: int = 10, total: int = 1000, **extra: Any) -> Recipe:
    """The paper's TRADES recipe with `steps` attack steps; bf16 and channels_last on a GPU."""
    return paper_recipe(steps, total, bf16=bf16, channels_last=bf16, **extra)


def trades_step(scale: Scale, device: torch.device) -> dict[str, Any]:
    """TRADES images/s (the paper recipe, bf16 on a GPU), its share of the bf16 peak, and host syncs per step."""
    bf16 = device.type == "cuda"
    model = _wrn(scale).to(device)
    recipe = _recipe(bf16, steps=scale.attack_steps)
    model = model.to(memory_format=torch.channels_last) if recipe.channels_last else model
    optimizer, ema = make_optimizer(model, recipe), EMA(model, 0.995)
    x, y = torch.rand(scale.batch, 3, 32, 32, device=device), torch.randint(0, 10, (scale.batch,), device=device)
    counter = iter(range(1, 10 ** 6))
    seconds = _timed(lambda: train_step(model, model, optimizer, ema, x, y, next(counter), recipe, 98), device,
                     scale.iters)
    with HostSyncs() as syncs:
        train_step(model, model, optimizer, ema, x, y, next(counter), recipe, 98)
    passes = pass_flops(_wrn(scale).to("meta"), torch.empty(scale.batch, 3, 32, 32, device="meta"))
    flops = passes.forward + scale.attack_steps * passes.attack + 2 * passes.train
    gpu = torch.cuda.get_device_name() if bf16 else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    if syncs.seen:
        raise AssertionError(f"a training step waits for the device: {syncs.counts()}")
    return {"network": f"WRN-{scale.wrn[0]}-{scale.wrn[1]}", "batch": scale.batch, "images_per_s":
            round(scale.batch / seconds, 1), "tflops": round(flops / seconds / 1e12, 3),
            "share_of_bf16_peak": peak and round(flops / seconds / 1e12 / peak, 4), "host_syncs_per_step": 0}


def memory(scale: Scale, device: torch.device) -> dict[str, Any]:
    """The counted peak of each configuration, the accumulation an 80 GB card gets, and on a GPU the measured peak of
    one step at that micro-batch."""
    rows = []
    for depth, width, batch, bf16 in scale.memory_configs:
        spec = {"arch": "wrn", "depth": depth, "width": width, "activation": "silu"}
        counted = step_memory(spec, 10, "trades", bf16)
        card = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 80 * GiB
        steps, _ = accumulation_for(counted, batch, "auto", card, "gpu_check")
        micro = batch // steps
        row = {"network": f"WRN-{depth}-{width}", "batch": batch, "precision": counted.precision,
               "accumulation_steps": steps, "estimate_gib": round(counted.peak(micro) / GiB, 2)}
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            model = _wrn(scale, depth, width).to(device)
            recipe = _recipe(bf16, steps=1)
            optimizer, ema = make_optimizer(model, recipe), EMA(model, 0.995)
            x, y = torch.rand(micro, 3, 32, 32, device=device), torch.randint(0, 10, (micro,), device=device)
            train_step(model, model, optimizer, ema, x, y, 1, recipe, 98)
            row["measured_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 2)
            del model, optimizer, ema, x, y
        rows.append(row)
    return {"configs": rows}


def loader(scale: Scale, device: torch.device, step_seconds: float | None) -> dict[str, Any]:
    """Batches per second from the loader workers (real images and memory-mapped shards), against the step."""
    from genrobust import shards
    from genrobust.provenance import StageClock
    from genrobust.training.common import loader_workers
    folder = Path(tempfile.mkdtemp())
    rng, n = np.random.default_rng(0), 40 * scale.batch
    for k, (start, stop) in enumerate(shards.shard_bounds(n, 10 * scale.batch)):
        shards.write_shard(folder, k, rng.integers(0, 256, (stop - start, 32, 32, 3), dtype=np.uint8),
                           np.arange(start, stop) % 10, {})
    shards.write_manifest(folder, shards.shard_bounds(n, 10 * scale.batch), 10, StageClock("gpu_check"))
    data = TrainingData(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n),
                        shards.ShardSet.open(folder), np.arange(n), rng.integers(0, 10, n))
    mixer, workers, count = BatchMixer(n, n, scale.batch, 0.7, 0), loader_workers(), 20 * scale.iters
    started = time.perf_counter()
    for _ in batches(data, mixer, 0, range(count), device, workers=workers):
        pass
    per_batch = (time.perf_counter() - started) / count
    return {"workers": workers, "batches_per_s": round(1 / per_batch, 1),
            "step_over_batch_time": step_seconds and round(step_seconds / per_batch, 1)}


def bf16_attack(scale: Scale, device: torch.device) -> dict[str, Any]:
    """TRADES' 0.001-scale start noise reaches the first layer's outputs under bf16 autocast as in fp32 (the fp32
    stem): the share of those outputs that move, each way."""
    model = _wrn(scale).to(device).eval()
    x = torch.rand(scale.batch, 3, 32, 32, device=device)
    step = 0.001 * torch.randn_like(x)
    moved = {}
    for bf16 in (False, True):
        outputs: list[torch.Tensor] = []
        hook = model.init_conv.register_forward_hook(lambda module, args, out: outputs.append(out.float()))
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model(x)
            model(x + step)
        hook.remove()
        moved[bf16] = float((outputs[1] != outputs[0]).float().mean())
    if moved[True] < moved[False] - 0.001:
        raise AssertionError(f"bf16 moved {moved[True]:.3f} of the first layer's outputs, fp32 {moved[False]:.3f}")
    return {"first_layer_moved_fp32": round(moved[False], 4), "first_layer_moved_bf16": round(moved[True], 4)}
