"""Sampling benchmarks: our EDM samplers against the code they reimplement, and memory against the image count.

  throughput (default)  images/s of ConditionalElucidatedDiffusion.sample (what sample_diffusion runs)
                        and of denoising-diffusion-pytorch's ElucidatedDiffusion.sample() loop, with the same
                        network and the same deterministic Heun schedule (S_churn = 0, so 2N - 1 network
                        calls each), in one run; their ratio; achieved TFLOP/s (and % of the GPU's fp32 peak).
                        On a CPU both start from the same noise, and the largest pixel difference is shown.
  --edm PATH             our DDPM++ sampler (EDMDiffusion.sample_from, the paper preset's) against NVlabs'
                        edm_sampler and EDMPrecond from the checkout at PATH, same weights, latents, labels and
                        steps, alternating rounds; benchmarks/sampling_edm.py, whose own flags then apply
                        (python benchmarks/sampling.py --edm PATH --help).
  memory                the real sample_diffusion stage, in a fresh process, making 10 shards: the resident
                        memory while making each shard must not grow with the number of images made.

  python benchmarks/sampling.py                                          # smoke-sized Unet on this CPU
  python benchmarks/sampling.py --dim 128 --dim-mults 1,2,2,2 --batch 512 --iters 5   # a GPU
  python benchmarks/sampling.py --edm /work/scratch/edm                  # small DDPM++ against NVlabs', this CPU
  python benchmarks/sampling.py --edm /work/scratch/edm --model-channels 128 --channel-mult 2,2,2 --num-blocks 4 \
      --attn 16 --batch 512                                              # the paper's network, a GPU
  python benchmarks/sampling.py --mode memory                            # 10 shards of 50 images
  python benchmarks/sampling.py --mode memory --shard-size 20000 --dim 64 --steps 20  # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")   # the package's loop draws a progress bar; keep the output readable

import numpy as np
import torch
from denoising_diffusion_pytorch.elucidated_diffusion import ElucidatedDiffusion
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from genrobust import config, io
from genrobust.diffusion import sample_diffusion, train_diffusion
from genrobust.diffusion.model import build_model
from genrobust.diffusion.model_file import to_device

ROOT = Path(__file__).resolve().parents[1]
PEAK_FP32_TFLOPS = {"H100": 67.0, "H200": 67.0, "A100": 19.5}   # dense fp32 (SXM), for the ratio only


class FixedClassNet(nn.Module):
    """Our class-conditional Unet behind the package's unconditional interface `net(x, time, self_cond)`."""

    random_or_learned_sinusoidal_cond = True
    self_condition = False

    def __init__(self, unet: nn.Module, classes: torch.Tensor) -> None:
        super().__init__()
        self.unet, self.classes = unet, classes

    def forward(self, x: torch.Tensor, time: torch.Tensor, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x, time, self.classes, cond_drop_prob=0.0)


def _unet_config(args: argparse.Namespace) -> dict:
    params = config.load_params(ROOT / "params.yaml")
    return {"unet": {"dim": args.dim, "dim_mults": args.dim_mults, "cond_drop_prob": 0.1},
            "edm": params["diffusion"]["edm"]}


def _timed(run: Callable[[], torch.Tensor], warmup: int, iters: int,
           device: torch.device) -> tuple[float, torch.Tensor]:
    """Seconds per call after `warmup` calls, and the last call's images."""
    for _ in range(warmup):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(iters):
        images = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / iters, images


def throughput(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    torch.manual_seed(0)
    ours = to_device(build_model("edm", _unet_config(args), args.classes, args.steps), device).eval()
    classes = (torch.arange(args.batch) % args.classes).to(device)
    edm = {key: getattr(ours, key) for key in ("sigma_min", "sigma_max", "sigma_data", "rho", "P_mean", "P_std")}
    package = ElucidatedDiffusion(FixedClassNet(ours.net, classes), image_size=32, channels=3,
                                  num_sample_steps=args.steps, S_churn=0.0, **edm).eval()
    calls = 2 * args.steps - 1
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ours.net(torch.randn(args.batch, 3, 32, 32, device=device), torch.ones(args.batch, device=device), classes,
                 cond_drop_prob=0.0)
    flops = counter.get_total_flops() * calls
    print(f"device: {gpu or 'cpu'} ({torch.get_num_threads()} threads); Unet dim {args.dim} mults {args.dim_mults} "
          f"({sum(p.numel() for p in ours.parameters()) / 1e6:.2f} M parameters), batch {args.batch}, "
          f"{args.steps} Heun steps = {calls} network calls, {flops / args.batch / 1e9:.2f} GFLOP per image")

    def ours_run() -> torch.Tensor:
        return ours.sample(classes, torch.Generator().manual_seed(0))

    def package_run() -> torch.Tensor:
        torch.manual_seed(0)
        return package.sample(batch_size=args.batch, clamp=ours.clamp_denoised)   # ours clips D(x) only if told

    # Rounds alternate the two, and the best round counts: other work on the machine only ever slows a round.
    seconds, images = {"ours": float("inf"), "package": float("inf")}, {}
    for round_ in range(args.rounds):
        for name, run in (("ours", ours_run), ("package", package_run)):
            taken, images[name] = _timed(run, args.warmup if round_ == 0 else 0, args.iters, device)
            seconds[name] = min(seconds[name], taken)
    for name in seconds:
        tflops = flops / seconds[name] / 1e12
        peak = next((value for key, value in PEAK_FP32_TFLOPS.items() if gpu and key in gpu), None)
        share = f" ({100 * tflops / peak:.1f}% of the {peak:.0f} TFLOP/s fp32 peak)" if peak else ""
        print(f"{name:8s} {args.batch / seconds[name]:10.2f} images/s  {seconds[name]:8.3f} s/batch  "
              f"{tflops:8.4f} TFLOP/s{share}", flush=True)
    print(f"ratio ours / package: {seconds['package'] / seconds['ours']:.3f}x")
    if device.type == "cpu":   # on a GPU the package draws its noise there, ours on the CPU
        difference = (images["ours"] - images["package"]).abs().max().item()
        print(f"same noise, same schedule: largest pixel difference {difference:.2e} (of 1)")


def memory(args: argparse.Namespace) -> None:
    """The real stages: train a model for one step, then sample 10 shards in a fresh process, watching its memory."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        overrides = [f"presets.smoke.diffusion.unet.dim={args.dim}",
                     f"presets.smoke.diffusion.unet.dim_mults={args.dim_mults}",
                     "presets.smoke.diffusion.steps=1", "presets.smoke.diffusion.grid_every=0"]
        settings = config.resolve(config.load_params(ROOT / "params.yaml", overrides), "digits")
        rng = np.random.default_rng(0)        # what the model learns does not matter here
        io.save_npz(work / "train.npz", image=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
                    label=np.arange(100, dtype=np.int64) % 10)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            train_diffusion(settings, "edm", work / "train.npz", work / "model.pt", work / "train")
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", str(work)],
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr)
        report = json.loads(done.stdout.splitlines()[-1])
    peaks = report["peaks"]
    print(f"Unet dim {args.dim} mults {args.dim_mults}, {args.steps} steps, batch {args.batch}: "
          f"{args.shards} shards of {args.shard_size} images ({args.shard_size * 3072 / 2**20:.2f} MiB each), "
          f"{report['rate']:.1f} images/s")
    print(f"resident memory (VmRSS, MiB) while making each shard: {' '.join(f'{peak:.0f}' for peak in peaks)}")
    print(f"shard 1 (loads the model): {peaks[0]:.1f} MiB; shard 2: {peaks[1]:.1f} MiB; shard {args.shards}: "
          f"{peaks[-1]:.1f} MiB; from shard 2 to shard {args.shards}, {args.shard_size * (args.shards - 2)} images "
          f"later: {peaks[-1] - peaks[1]:+.1f} MiB; the process's peak (VmHWM): {report['hwm']:.1f} MiB")


def _status(key: str) -> float:
    """A /proc/self/status figure in MiB. Not getrusage's ru_maxrss: Linux carries that across exec."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith(f"{key}:"))


def child(args: argparse.Namespace) -> None:
    """sample_diffusion for `--shards` shards; a thread notes the largest VmRSS while each shard is made."""
    work, out = Path(args.child), Path(args.child) / "gen"
    count = args.shards * args.shard_size
    overrides = [f"presets.smoke.sample.{key}={value}" for key, value in
                 {"num_images": count, "oversample": 1, "shard_size": args.shard_size,
                  "batch_size": args.batch, "steps": args.steps}.items()]
    settings = config.resolve(config.load_params(ROOT / "params.yaml", overrides), "digits")
    peaks = [0.0] * (args.shards + 1)      # by the number of shards finished so far (the last: the manifest)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            finished = len(list(out.glob("shard-*.npz"))) if out.is_dir() else 0
            peaks[finished] = max(peaks[finished], _status("VmRSS"))
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        sample_diffusion(settings, "edm", work / "model.pt", out)
    seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    print(json.dumps({"peaks": peaks[:args.shards], "hwm": _status("VmHWM"), "rate": count / seconds}))


def main() -> None:
    if any(arg == "--edm" or arg.startswith("--edm=") for arg in sys.argv[1:]):
        import sampling_edm   # this script's folder is first on sys.path
        sampling_edm.main()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["throughput", "memory"], default="throughput")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--dim-mults", type=lambda text: [int(x) for x in text.split(",")], default=[1, 2])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=None, help="default: 8 (throughput), 20 (memory)")
    parser.add_argument("--steps", type=int, default=None, help="Heun steps; default: 20 (throughput), 2 (memory)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="throughput: alternate the samplers this often")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--shards", type=int, default=10, help="memory: how many shards to make")
    parser.add_argument("--edm", metavar="PATH", help="NVlabs/edm checkout: the DDPM++ comparison (see above)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "memory" and args.shards < 3:
        parser.error("--shards: at least 3 (the first loads the model; the growth is measured from the second on)")
    sampling = args.mode == "memory" or args.child
    args.batch = args.batch or (20 if sampling else 8)
    args.steps = args.steps or (2 if sampling else 20)
    if args.child:
        child(args)
    elif args.mode == "memory":
        memory(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
