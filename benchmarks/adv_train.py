"""Adversarial-training throughput: our TRADES step against the same step written the plain way.

Prints images/s (clean images per second; each costs 1 + attack_steps forward/backward passes
plus the final two-view forward/backward) and achieved TFLOP/s for:
  plain      textbook TRADES in fp32, NCHW, eager: the reference the ratios are taken against
  ours       genrobust.training.loop._step with fp32, NCHW, eager
  +cl        ours with channels_last
  +bf16      ours with bf16 autocast (and channels_last on a GPU)
  +compile   ours with torch.compile (fp32 on a CPU, bf16 + channels_last on a GPU)

  python benchmarks/adv_train.py                                   # small WRN-16-2 on this CPU
  python benchmarks/adv_train.py --depth 28 --width 10 --batch 512 # the paper's WRN-28-10 on a GPU
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from genrobust.models.checkpoint import build_classifier
from genrobust.training.loop import Recipe, _step

PEAK_TFLOPS = {"H100": {"fp32": 67.0, "bf16": 989.0}, "H200": {"fp32": 67.0, "bf16": 989.0},
               "A100": {"fp32": 19.5, "bf16": 312.0}}   # dense tensor-core peaks (SXM), for the ratio only


def plain_trades_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                      eps: float, step_size: float, steps: int, beta: float) -> float:
    """Zhang et al.'s reference TRADES step, written out without any of our structure."""
    model.eval()
    with torch.no_grad():
        clean_probs = F.softmax(model(x), dim=1)
    x_adv = (x + 0.001 * torch.randn_like(x)).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), clean_probs, reduction="sum")
        grad, = torch.autograd.grad(kl, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
    model.train()
    optimizer.zero_grad()
    logits = model(torch.cat([x, x_adv]))
    natural = F.cross_entropy(logits[:len(x)], y, label_smoothing=0.1)
    robust = F.kl_div(F.log_softmax(logits[len(x):], dim=1), F.softmax(logits[:len(x)], dim=1), reduction="batchmean")
    loss = natural + beta * robust
    loss.backward()
    optimizer.step()
    return loss.item()


def _counted(work: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def trades_step_flops(model: torch.nn.Module, x: torch.Tensor, attack_steps: int) -> int:
    """FLOPs of one TRADES step, counted part by part (the counter cannot follow torch.autograd.grad).

    The clean forward, then per attack step a forward and a backward to the input only
    (weights frozen, as autograd.grad computes no weight gradients), then forward and
    backward of the clean and adversarial halves together, with weight gradients.
    """
    def attack_iteration() -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        probe = x.clone().requires_grad_(True)
        model(probe).sum().backward()
        for p in model.parameters():
            p.requires_grad_(True)

    with torch.no_grad():
        clean = _counted(lambda: model(x))
    final = _counted(lambda: model(torch.cat([x, x])).sum().backward())
    model.zero_grad(set_to_none=True)
    return clean + attack_steps * _counted(attack_iteration) + final


def measure(step: Callable[[], float], warmup: int, iters: int, device: torch.device) -> float:
    """Seconds per step after `warmup` steps (compilation and autotuning happen there)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--variants", default="plain,ours,+cl,+bf16,+compile")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    peaks = next((value for key, value in PEAK_TFLOPS.items() if gpu and key in gpu), None)
    spec = {"arch": "wrn", "depth": args.depth, "width": args.width, "activation": "silu"}
    eps, step_size, beta = 8 / 255, 2 / 255, 5.0
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=generator).to(device)
    print(f"device: {gpu or 'cpu'} ({torch.get_num_threads()} threads); WRN-{args.depth}-{args.width} SiLU, "
          f"batch {args.batch}, TRADES with {args.attack_steps}-step attack")

    def fresh(channels_last: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_classifier(spec, 10, [0.5] * 3, [0.25] * 3).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    on_gpu = device.type == "cuda"
    settings = {"ours": {}, "+cl": {"channels_last": True}, "+bf16": {"bf16": True, "channels_last": on_gpu},
                "+compile": {"compile": True, "bf16": on_gpu, "channels_last": on_gpu}}
    results: dict[str, float] = {}
    flops = None
    for name in args.variants.split(","):
        if name == "plain":
            model, optimizer = fresh(False)
            step = lambda: plain_trades_step(model, optimizer, x, y, eps, step_size, args.attack_steps, beta)  # noqa: E731
            precision = "fp32"
        else:
            options = settings[name]
            recipe = Recipe("trades", 1, 0.1, 0.9, True, 5e-4, 0.0, None, 0, "Linf", eps, step_size,
                            args.attack_steps, beta, 0.1, **options)
            model, optimizer = fresh(recipe.channels_last)
            attacked = torch.compile(model) if recipe.compile else model

            def step(model=model, optimizer=optimizer, attacked=attacked, recipe=recipe) -> float:
                model.train()
                optimizer.zero_grad(set_to_none=True)
                loss = _step(attacked, attacked, x, y, recipe)
                optimizer.step()
                return loss
            precision = "bf16" if recipe.bf16 else "fp32"
        if flops is None:
            flops = trades_step_flops(model, x, args.attack_steps)
        seconds = measure(step, args.warmup, args.iters, device)
        results[name] = seconds
        tflops = flops / seconds / 1e12
        peak = f", {100 * tflops / peaks[precision]:.1f}% of the {peaks[precision]:.0f} TFLOP/s {precision} peak" \
            if peaks else ""
        ratio = f", {results['plain'] / seconds:.2f}x plain" if "plain" in results and name != "plain" else ""
        print(f"{name:9s} {args.batch / seconds:9.1f} images/s  {seconds * 1e3:9.1f} ms/step  "
              f"{tflops:7.3f} TFLOP/s{peak}{ratio}", flush=True)
    print(f"one step = {flops / 1e9:.1f} GFLOP (torch.utils.flop_counter, part by part)")


if __name__ == "__main__":
    main()
