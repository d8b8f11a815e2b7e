"""Sampling benchmark, EDM arm: our DDPM++ sampler against NVlabs' own, with the same weights.

The paper preset (`diffusion.arch: ddpmpp`) samples with our reimplementation of EDM's network and sampler
(`EDMDiffusion.sample_from` on `EDMPreconditioned`, what sample_diffusion runs). This times it against the code it
reimplements, NVlabs' `edm_sampler` driving their `EDMPrecond` (SongUNet, DDPM++ settings), on the same weights
(our state_dict loaded into theirs), latents, class labels and steps, and shows that both make the same images.
NVlabs' code (CC BY-NC-SA) stays out of the project: it is imported from a checkout at run time.

Both run EDM's deterministic Heun sampler (S_churn = 0): N steps = 2N - 1 network calls, state in float64, the
network in float32. The weights are init + 0.02 randn (as the golden figures perturb them), so that the zero-scaled
output layers do not hide a difference. After `--warmup` calls of each, `--rounds` rounds time ours, then theirs
(A B A B ...), so that other work on a shared machine slows both alike; one JSON line per measurement, then a
summary line: images/s of each (best round, and median), ours / theirs, and the largest absolute difference
between the two outputs (images in [0, 1]; float32 rounding alone gives 1e-7 to 1e-6).

  python benchmarks/sampling.py --edm /work/scratch/edm           # a small DDPM++, a CPU (about a minute on 2 cores)
  python benchmarks/sampling.py --edm /path/to/edm --model-channels 128 --channel-mult 2,2,2 --num-blocks 4 \\
      --attn 16 --batch 512 --rounds 3                            # the paper's network (55.7 M parameters), a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from genrobust import config
from genrobust.diffusion.ddpmpp import DDPMppSettings
from genrobust.diffusion.edm import EDMDiffusion
from genrobust.diffusion.resize import to_pipeline_size

ROOT = Path(__file__).resolve().parents[1]
SONG_UNET_DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                        decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1])


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def load_nvlabs(edm: str) -> types.SimpleNamespace:
    """NVlabs' networks and generate modules from the checkout at `edm` (first on sys.path for this process)."""
    sys.path.insert(0, str(Path(edm).resolve()))
    import generate
    from training import networks
    return types.SimpleNamespace(networks=networks, edm_sampler=generate.edm_sampler)


def perturbed(state: dict[str, torch.Tensor], params: set[str]) -> dict[str, torch.Tensor]:
    """init + 0.02 * randn for every parameter (seed-1 generator, state_dict order); buffers as they are."""
    g = torch.Generator().manual_seed(1)
    return {key: value + 0.02 * torch.randn(value.shape, generator=g) if key in params else value.clone()
            for key, value in state.items()}


def _timed(run: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    images = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, images


def run(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    ref = load_nvlabs(args.edm)
    edm = config.load_params(ROOT / "params.yaml")["diffusion"]["edm"]
    network = DDPMppSettings(model_channels=args.model_channels, channel_mult=tuple(args.channel_mult),
                             num_blocks=args.num_blocks, attn_resolutions=tuple(args.attn), dropout=0.0)
    torch.manual_seed(0)
    ours = EDMDiffusion(args.resolution, 3, args.classes, network, edm, augment_p=0.0, augment_dim=0,
                        sample_steps=args.steps)
    ours.net.load_state_dict(perturbed(ours.net.state_dict(), {name for name, _ in ours.net.named_parameters()}))
    theirs = ref.networks.EDMPrecond(
        img_resolution=args.resolution, img_channels=3, label_dim=args.classes, use_fp16=False,
        sigma_data=edm["sigma_data"], model_channels=args.model_channels, channel_mult=args.channel_mult,
        num_blocks=args.num_blocks, attn_resolutions=args.attn, dropout=0.0, augment_dim=0, **SONG_UNET_DDPMPP)
    theirs.load_state_dict(ours.net.state_dict(), strict=True)   # the same keys: the released checkpoints' format
    ours, theirs = ours.to(device).eval(), theirs.to(device).eval()

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=generator).to(device)
    labels = F.one_hot(torch.arange(args.batch) % args.classes, args.classes).to(device, torch.float32)
    calls = 2 * args.steps - 1
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ours.net(latents, torch.ones(args.batch, device=device), labels)
    flops = counter.get_total_flops() * calls
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; DDPM++ model_channels {args.model_channels} channel_mult {args.channel_mult} "
          f"num_blocks {args.num_blocks} attn {args.attn} at {args.resolution}x{args.resolution} "
          f"({sum(p.numel() for p in ours.parameters()) / 1e6:.2f} M parameters), batch {args.batch}, "
          f"{args.steps} Heun steps = {calls} network calls, {flops / args.batch / 1e9:.2f} GFLOP per image; "
          f"NVlabs/edm at {args.edm}", flush=True)

    def ours_run() -> torch.Tensor:
        return ours.sample_from(latents, labels, args.steps)

    @torch.no_grad()
    def theirs_run() -> torch.Tensor:   # then our sampler's last lines: [-1, 1] to [0, 1], clipped
        x = ref.edm_sampler(theirs, latents, labels, num_steps=args.steps, sigma_min=edm["sigma_min"],
                            sigma_max=edm["sigma_max"], rho=edm["rho"], S_churn=0)
        return to_pipeline_size(((x + 1) / 2).clamp(0.0, 1.0))

    runs = {"ours": ours_run, "theirs": theirs_run}
    for _ in range(args.warmup):
        for sampler in runs.values():
            _timed(sampler, device)
    seconds: dict[str, list[float]] = {key: [] for key in runs}
    images: dict[str, torch.Tensor] = {}
    for round_ in range(args.rounds):
        for key, sampler in runs.items():
            taken, images[key] = _timed(sampler, device)
            seconds[key].append(taken)
            print(json.dumps({"round": round_, "sampler": key, "seconds": round(taken, 4),
                              "images_per_s": round(args.batch / taken, 3),
                              "tflops": round(flops / taken / 1e12, 5)}), flush=True)
    best = {key: args.batch / min(times) for key, times in seconds.items()}
    median = {key: args.batch / statistics.median(times) for key, times in seconds.items()}
    print(json.dumps({
        "summary": True, "device": name, "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
        "images_per_s_best": {key: round(value, 3) for key, value in best.items()},
        "images_per_s_median": {key: round(value, 3) for key, value in median.items()},
        "ratio_ours_over_theirs_best": round(best["ours"] / best["theirs"], 4),
        "ratio_ours_over_theirs_median": round(median["ours"] / median["theirs"], 4),
        "max_abs_difference": (images["ours"] - images["theirs"]).abs().max().item()}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sampling.py --edm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edm", required=True, help="a checkout of NVlabs/edm (the golden figures use 008a4e5)")
    parser.add_argument("--model-channels", type=int, default=32)
    parser.add_argument("--channel-mult", type=_ints, default=[1, 2, 2])
    parser.add_argument("--num-blocks", type=int, default=2)
    parser.add_argument("--attn", type=_ints, default=[16], help="attention resolutions, comma-separated ('': none)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="Heun steps (2 steps - 1 network calls)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each sampler first")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls of each, alternating ours, theirs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.resolution % 2 ** (len(args.channel_mult) - 1):
        parser.error(f"--resolution {args.resolution}: the network halves it {len(args.channel_mult) - 1} times")
    run(args)


if __name__ == "__main__":
    main()
