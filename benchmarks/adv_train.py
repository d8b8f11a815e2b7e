"""Adversarial-training throughput: our faithful TRADES step against DM-Improves-AT's own and a plain one.

Prints images/s (clean images per second; each costs 1 + attack_steps forward/backward passes
plus the final clean and adversarial forward/backward) and achieved TFLOP/s for:
  reference  DM-Improves-AT's WATrainer.train on one batch (--reference PATH: the user's checkout, never vendored)
  plain      textbook TRADES in fp32, NCHW, eager (Zhang et al.'s eval-mode attack, one final pass)
  ours       genrobust.training.loop.train_step with the paper recipe (batch-statistics attack, two final
             passes, OneCycle, batch-norm momentum, EMA) in fp32, NCHW, eager
  +cl        ours with channels_last
  +bf16      ours with bf16 autocast (and channels_last on a GPU)
  +compile   ours with torch.compile (fp32 on a CPU, bf16 + channels_last on a GPU)
Arms run in turn (A B A B ...) for --rounds rounds, on the same model, batch and threads; ratios
are taken against the reference arm in the same round (or plain without one).

  python benchmarks/adv_train.py --reference ~/src/DM-Improves-AT --depth 16 --width 4 --batch 128 \
      --variants reference,ours,+cl --rounds 2                     # this CPU
  python benchmarks/adv_train.py --reference PATH --depth 28 --width 10 --batch 512 \
      --variants reference,+bf16,+compile                          # the paper's WRN-28-10 on a GPU
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from genrobust.attacks.threat import Threat
from genrobust.models.checkpoint import build_classifier
from genrobust.report.flops import trades_step_flops
from genrobust.training.ema import EMA
from genrobust.training.loop import Recipe, make_optimizer, train_step

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


def reference_arm(path: str, depth: int, width: int, x: torch.Tensor, y: torch.Tensor,
                  attack_steps: int) -> Callable[[], float]:
    """One step of the reference's own WATrainer.train (its epoch-end bookkeeping included, which is tiny)."""
    import dm_improves_at
    trainer = dm_improves_at.trainer(dm_improves_at.load(path), depth, width, len(x), 400, seed=0,
                                     attack_steps=attack_steps)
    return lambda: trainer.train([(x, y)], epoch=1, adversarial=True)["loss"]


def paper_recipe(attack_steps: int, total_steps: int = 400 * 98, **options: Any) -> Recipe:
    """DM-Improves-AT's TRADES recipe (params.yaml's paper adv_train) with `attack_steps`: what every benchmark times."""
    return Recipe("trades", total_steps, 0.2, 0.9, True, 5e-4, 0.025, 0.995, 0, Threat("Linf", 8 / 255, 2 / 255),
                  attack_steps, 5.0, 0.1, schedule="cosinew", bn_momentum=0.01, trades_attack="batch", **options)


def ours_arm(spec: dict, x: torch.Tensor, y: torch.Tensor, attack_steps: int, device: torch.device,
             **options: bool) -> tuple[torch.nn.Module, Callable[[], float]]:
    """train_step with the paper recipe: what adv_train runs per batch."""
    recipe = paper_recipe(attack_steps, **options)
    torch.manual_seed(0)
    model = build_classifier(spec, 10, [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, ema = make_optimizer(model, recipe), EMA(model, recipe.ema_decay)
    attacked = torch.compile(model) if recipe.compile else model
    state = {"step": 0}

    def step() -> float:
        loss = train_step(attacked, attacked, optimizer, ema, x, y, state["step"], recipe, 98)
        state["step"] += 1
        return loss
    return model, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="A B A B ...: every arm once per round")
    parser.add_argument("--reference", help="a checkout of DM-Improves-AT (commit b390f25d) for the reference arm")
    parser.add_argument("--variants", default="plain,ours,+cl,+bf16,+compile")
    args = parser.parse_args()
    names = args.variants.split(",")
    if "reference" in names and not args.reference:
        parser.error("the reference arm needs --reference PATH (a checkout of DM-Improves-AT)")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    peaks = next((value for key, value in PEAK_TFLOPS.items() if gpu and key in gpu), None)
    spec = {"arch": "wrn", "depth": args.depth, "width": args.width, "activation": "silu"}
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=generator).to(device)
    print(f"device: {gpu or 'cpu'} ({torch.get_num_threads()} threads); WRN-{args.depth}-{args.width} SiLU, "
          f"batch {args.batch}, TRADES with {args.attack_steps}-step attack")

    on_gpu = device.type == "cuda"
    settings = {"ours": {}, "+cl": {"channels_last": True}, "+bf16": {"bf16": True, "channels_last": on_gpu},
                "+compile": {"compile": True, "bf16": on_gpu, "channels_last": on_gpu}}
    steps: dict[str, Callable[[], float]] = {}
    precision: dict[str, str] = {}
    flops = None
    for name in names:
        if name == "reference":
            steps[name] = reference_arm(args.reference, args.depth, args.width, x, y, args.attack_steps)
            precision[name] = "fp32"
            continue
        if name == "plain":
            torch.manual_seed(0)
            model = build_classifier(spec, 10, [0.5] * 3, [0.25] * 3).to(device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
            steps[name] = lambda m=model, o=optimizer: plain_trades_step(m, o, x, y, 8 / 255, 2 / 255,
                                                                       args.attack_steps, 5.0)
        else:
            model, steps[name] = ours_arm(spec, x, y, args.attack_steps, device, **settings[name])
        precision[name] = "bf16" if settings.get(name, {}).get("bf16") else "fp32"
        if flops is None:
            flops = trades_step_flops(model, x, args.attack_steps)
    if flops is None:
        torch.manual_seed(0)
        flops = trades_step_flops(build_classifier(spec, 10, [0.5] * 3, [0.25] * 3).to(device), x, args.attack_steps)
    baseline = "reference" if "reference" in names else "plain"
    for round_ in range(1, args.rounds + 1):
        results: dict[str, float] = {}
        for name in names:
            seconds = measure(steps[name], args.warmup, args.iters, device)
            results[name] = seconds
            tflops = flops / seconds / 1e12
            peak = peaks and precision[name] in peaks
            share = f", {100 * tflops / peaks[precision[name]]:.1f}% of the {peaks[precision[name]]:.0f} TFLOP/s " \
                f"{precision[name]} peak" if peak else ""
            ratio = f", {results[baseline] / seconds:.2f}x {baseline}" if baseline in results and name != baseline \
                else ""
            print(f"round {round_} {name:9s} {args.batch / seconds:9.1f} images/s  {seconds * 1e3:9.1f} ms/step  "
                  f"{tflops:7.3f} TFLOP/s{share}{ratio}", flush=True)
    print(f"one step = {flops / 1e9:.1f} GFLOP (torch.utils.flop_counter, part by part)")


if __name__ == "__main__":
    main()
