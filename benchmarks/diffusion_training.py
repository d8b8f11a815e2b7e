"""Diffusion training throughput: images/s of train_diffusion's own step loop, fp32 against bf16 / channels_last.

Each variant runs genrobust.diffusion.train._loop (random batch from uint8 images, flips, forward
under autocast, backward, then recipe.apply_step: gradient clipping, AdamW, EMA update; `arch: unet`'s
recipe) on a fresh EDM model, `--warmup` steps first, then `--iters` timed steps. Variants:
  fp32      fp32, NCHW                        (precision: auto on a CPU)
  cl        fp32, channels_last
  bf16      bf16 autocast, NCHW
  bf16+cl   bf16 autocast, channels_last      (precision: auto on a GPU)

  python benchmarks/diffusion_training.py                                          # smoke-sized Unet, this CPU
  python benchmarks/diffusion_training.py --dim 128 --dim-mults 1,2,2,2 --batch 512 --iters 20   # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from genrobust.diffusion.model import build_model
from genrobust.diffusion.recipe import Recipe, make_ema, make_optimizer
from genrobust.diffusion.batches import Options, Rngs, layout
from genrobust.diffusion.train import _loop

PEAK_TFLOPS = {"H100": {"fp32": 67.0, "bf16": 989.0}, "H200": {"fp32": 67.0, "bf16": 989.0},
               "A100": {"fp32": 19.5, "bf16": 312.0}}   # dense peaks (SXM), for the ratio only
VARIANTS = {"fp32": (False, False), "cl": (False, True), "bf16": (True, False), "bf16+cl": (True, True)}
EDM = {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "rho": 7.0, "P_mean": -1.2, "P_std": 1.2}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--dim-mults", type=lambda text: [int(x) for x in text.split(",")], default=[1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--variants", default=None, help="default: fp32,bf16 on a CPU; fp32,cl,bf16,bf16+cl on a GPU")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    peaks = next((value for key, value in PEAK_TFLOPS.items() if gpu and key in gpu), None)
    variants = (args.variants or ("fp32,cl,bf16,bf16+cl" if gpu else "fp32,bf16")).split(",")
    config = {"unet": {"dim": args.dim, "dim_mults": args.dim_mults, "cond_drop_prob": 0.1}, "edm": EDM}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(len(images), dtype=np.int64) % 10

    torch.manual_seed(0)
    probe = build_model("edm", config, 10).to(device)
    with FlopCounterMode(display=False) as counter:
        probe(torch.rand(args.batch, 3, 32, 32, device=device), (torch.arange(args.batch) % 10).to(device)).backward()
    flops = counter.get_total_flops()
    print(f"device: {gpu or 'cpu'} ({torch.get_num_threads()} threads); EDM Unet dim {args.dim} mults {args.dim_mults} "
          f"({sum(p.numel() for p in probe.parameters()) / 1e6:.2f} M parameters), batch {args.batch}, "
          f"{flops / args.batch / 1e9:.2f} GFLOP per image (forward + backward)")

    rates: dict[str, float] = {}
    for name in variants:
        bf16, channels_last = VARIANTS[name]
        opts = Options(flip=True, bf16=bf16, channels_last=channels_last)
        torch.manual_seed(0)
        model = build_model("edm", config, 10).to(device, memory_format=layout(opts))
        # The Unet's update rule (torch's AdamW defaults, clipping, a constant-decay EMA), as this benchmark timed it
        # before train_diffusion took a Recipe; no learning-rate ramp, which costs nothing.
        recipe = Recipe(batch_size=args.batch, optimizer="adamw", lr=2e-4, lr_rampup_images=0, weight_decay=0.01,
                        adam_eps=1e-8, grad_clip=1.0, ema_halflife_images=None, ema_rampup_ratio=None,
                        ema_decay=0.9999)
        optimizer, ema = make_optimizer(model, recipe), make_ema(model, recipe)

        def run(start: int, steps: int) -> None:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                _loop(model, model, ema, optimizer, images, labels, recipe, steps, opts, Rngs.seeded(0, device),
                      device, start, lambda step: None, name)

        run(0, args.warmup)
        _sync(device)
        started = time.perf_counter()
        run(args.warmup, args.warmup + args.iters)
        _sync(device)
        seconds = (time.perf_counter() - started) / args.iters
        rates[name] = args.batch / seconds
        tflops = flops / seconds / 1e12
        precision = "bf16" if bf16 else "fp32"
        share = f" ({100 * tflops / peaks[precision]:.1f}% of the {peaks[precision]:.0f} TFLOP/s {precision} peak)" \
            if peaks else ""
        ratio = f", {rates[name] / rates['fp32']:.2f}x fp32" if "fp32" in rates and name != "fp32" else ""
        print(f"{name:8s} {rates[name]:10.1f} images/s  {seconds * 1e3:9.1f} ms/step  {tflops:8.4f} TFLOP/s"
              f"{share}{ratio}", flush=True)


if __name__ == "__main__":
    main()
