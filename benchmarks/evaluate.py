"""AutoAttack wall time: our `evaluate` stage's attack against pyautoattack called directly and torchattacks.

Arms, each on the same checkpoint, the same first --points test points and the same threads:
  direct        pyautoattack.AutoAttack(...).run_standard_evaluation, unmodified, on the bare model
  stage         genrobust.evaluation.autoattack.run_autoattack: what `python -m genrobust evaluate` runs
  stage+sanity  the stage's attack plus its gradient-masking checks (PGD-20 at eps and 2 eps), as the stage runs them
  torchattacks  torchattacks.AutoAttack (standard) when it is importable. It is not the standard protocol: its
                APGD, APGD-T and FAB default to 10 iterations where AutoAttack runs 100, and its Square rescales
                the patch schedule (resc_schedule=True; AutoAttack: False)
  torchattacks-100  the same attacks built with AutoAttack's settings (100 iterations, Square unrescaled):
                the like-for-like comparison
                torchattacks is never a dependency of the project (it pins an old `requests` that breaks DVC),
                so install it aside:
                    pip install --no-deps --target /tmp/torchattacks torchattacks==3.5.1
                    PYTHONPATH=/tmp/torchattacks python benchmarks/evaluate.py
Prints, per arm: wall, user and system seconds, the robust accuracy, the accuracy and seconds after each attack,
and the wall-time ratio against torchattacks (or against direct without it).

  python benchmarks/evaluate.py --checkpoint models/digits/adv/linf/model.pt --test data/digits/test.npz \
      --points 64 --arms direct,stage,stage+sanity,torchattacks        # make demo's checkpoint, this CPU
"""

from __future__ import annotations

import argparse
import logging
import re
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from genrobust import io
from genrobust.attacks.threat import Threat
from genrobust.data.transform import to_tensor
from genrobust.distributed import device
from genrobust.evaluation.autoattack import run_autoattack
from genrobust.evaluation.sanity import sanity_checks
from genrobust.models.checkpoint import load_classifier

_AFTER = re.compile(r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)")


@dataclass
class Timing:
    wall: float = 0.0
    user: float = 0.0
    system: float = 0.0
    robust: float = float("nan")
    per_attack: dict[str, tuple[float, float]] = field(default_factory=dict)   # attack: (accuracy, seconds)
    extra: dict[str, float] = field(default_factory=dict)


class _LogTimes(logging.Handler):
    """pyautoattack logs the accuracy and the cumulative time after each attack; read both."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.after: dict[str, tuple[float, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = _AFTER.search(record.getMessage())
        if match:
            total = float(match.group(3))
            spent = total - sum(seconds for _, seconds in self.after.values())
            self.after[match.group(1).lower()] = (float(match.group(2)) / 100, spent)


def timed(run: Callable[[Timing], None]) -> Timing:
    timing = Timing()
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run(timing)
    after = resource.getrusage(resource.RUSAGE_SELF)
    timing.wall = time.perf_counter() - started
    timing.user, timing.system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return timing


def with_log(timing: Timing, attack: Callable[[], None]) -> None:
    handler, logger = _LogTimes(), logging.getLogger("auto-attack")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        attack()
    finally:
        logger.removeHandler(handler)
    timing.per_attack = dict(handler.after)


def direct_arm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, batch: int, seed: int,
               num_classes: int) -> Timing:
    from pyautoattack import AutoAttack

    def run(timing: Timing) -> None:
        adversary = AutoAttack(model, norm=threat.norm, eps=threat.eps, version="standard", seed=seed, device=x.device)
        adversary.apgd_targeted.n_target_classes = min(9, num_classes - 1)
        adversary.fab.n_target_classes = min(9, num_classes - 1)
        outputs: dict[str, torch.Tensor] = {}
        with_log(timing, lambda: outputs.setdefault("pred", adversary.run_standard_evaluation(x, y, batch_size=batch)[1]))
        timing.robust = float((outputs["pred"] == y).float().mean())
    return timed(run)


def stage_arm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, batch: int, seed: int,
              sanity: bool) -> Timing:
    def run(timing: Timing) -> None:
        started = time.perf_counter()
        results = []
        with_log(timing, lambda: results.append(run_autoattack(model, x, y, threat, "standard", None, batch, seed)))
        result = results[0]
        timing.robust = result.robust_accuracy
        timing.extra["autoattack"] = time.perf_counter() - started
        if sanity:
            started = time.perf_counter()
            sanity_checks(model, x, y, threat, result.clean_accuracy, result.robust_accuracy, batch, seed)
            timing.extra["sanity (PGD-20 at eps, 2 eps)"] = time.perf_counter() - started
    return timed(run)


def torchattacks_arm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, seed: int,
                     num_classes: int, faithful: bool) -> Timing:
    import torchattacks

    def run(timing: Timing) -> None:
        adversary = torchattacks.AutoAttack(model, norm=threat.norm, eps=threat.eps, version="standard",
                                            n_classes=num_classes, seed=seed)
        if faithful:
            for attack in adversary._autoattack.attacks:
                if hasattr(attack, "steps"):
                    attack.steps = 100
                if hasattr(attack, "rescale_schedule"):
                    attack.rescale_schedule = False
        names = iter(["apgd-ce", "apgd-t", "fab-t", "square"])
        robust_left = [len(x)]
        for attack in adversary._autoattack.attacks:
            forward, name = attack.forward, next(names)

            def forward_timed(images, labels, forward=forward, name=name):
                started = time.perf_counter()
                adv = forward(images, labels)
                seconds = time.perf_counter() - started
                with torch.no_grad():
                    robust_left[0] -= int((model(adv).argmax(1) != labels).sum())
                timing.per_attack[name] = (robust_left[0] / len(x), seconds)
                return adv
            attack.forward = forward_timed
        adv = adversary(x, y)
        with torch.no_grad():
            timing.robust = float((model(adv).argmax(1) == y).float().mean())
    return timed(run)


def report(name: str, timing: Timing, baseline: Timing | None) -> None:
    ratio = f", {baseline.wall / timing.wall:.2f}x the baseline's speed" if baseline else ""
    print(f"{name:13s} wall {timing.wall:7.1f} s  user {timing.user:7.1f} s  sys {timing.system:6.1f} s  "
          f"robust {timing.robust:.2%}{ratio}")
    for attack, (accuracy, seconds) in timing.per_attack.items():
        print(f"{'':15s}after {attack:8s} {accuracy:7.2%}  {seconds:7.1f} s")
    for part, seconds in timing.extra.items():
        print(f"{'':15s}{part}: {seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("models/digits/adv/linf/model.pt"))
    parser.add_argument("--test", type=Path, default=Path("data/digits/test.npz"))
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default="direct,stage,stage+sanity,torchattacks,torchattacks-100")
    args = parser.parse_args()

    model, _ = load_classifier(args.checkpoint, args.num_classes, device())
    model.eval()
    images, labels = io.load_images(args.test, args.num_classes)
    x = to_tensor(images[:args.points], device())
    y = torch.from_numpy(np.array(labels[:args.points])).to(device())
    threat = Threat(norm=args.norm, eps=args.eps, step_size=args.eps / 4)
    print(f"{args.checkpoint}: {len(x)} points, {args.norm} eps {args.eps:.4g}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, {device()}")
    arms = {
        "direct": lambda: direct_arm(model, x, y, threat, args.batch, args.seed, args.num_classes),
        "stage": lambda: stage_arm(model, x, y, threat, args.batch, args.seed, sanity=False),
        "stage+sanity": lambda: stage_arm(model, x, y, threat, args.batch, args.seed, sanity=True),
        "torchattacks": lambda: torchattacks_arm(model, x, y, threat, args.seed, args.num_classes, faithful=False),
        "torchattacks-100": lambda: torchattacks_arm(model, x, y, threat, args.seed, args.num_classes, faithful=True),
    }
    timings: dict[str, Timing] = {}
    for name in args.arms.split(","):
        if name.startswith("torchattacks"):
            try:
                import torchattacks  # noqa: F401
            except ImportError:
                print("torchattacks: not importable, skipped (see this script's docstring)")
                continue
        timings[name] = arms[name]()
        report(name, timings[name], None)
    reference = next((name for name in ("torchattacks-100", "torchattacks", "direct") if name in timings), None)
    if reference is None:
        return
    print(f"\nspeed relative to {reference}")
    for name, timing in timings.items():
        report(name, timing, timings[reference])


if __name__ == "__main__":
    main()
