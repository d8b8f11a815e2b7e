#!/usr/bin/env python
"""Measure the golden figures of tests/test_golden_reference.py from DM-Improves-AT's own code.

    python tests/golden/reference_figures.py --dmat PATH/TO/DM-Improves-AT > figures.json

The CPU's vector kernels (torch.backends.cpu.get_cpu_capability(): AVX2, AVX512) change the last
bits of a sum, and a TRADES attack starting from a near-zero KL gradient turns those into other
signs: the reference itself gives other figures on an AVX2 CPU than on an AVX512 one. So the
figures are stored per capability (tests/golden/dm_improves_at_b390f25d_avx2.json; the file
without a suffix was measured on the AVX512 machine of the first measurement).

PATH is a checkout of github.com/wzekai99/DM-Improves-AT (the figures in the test come from
commit b390f25d); nothing of it is copied here, it is imported at run time. Its optional
imports (pandas, tqdm, RandAugment) get stand-ins in this process only, `autoattack` is PyPI's
`pyautoattack`, and `Tensor.cuda` is the identity on a CPU. Everything runs in fp32 on the CPU.

The protocol, which the test repeats with genrobust's code: a WRN-16-1 Swish built after
torch.manual_seed(1) (the reference's `seed(args.seed)`), batches of 8 from numpy's
default_rng(0), torch.manual_seed(100 + i) just before step i, three optimiser steps of one
epoch through `WATrainer.train` (weight averaging warm-up 0, so the decay is exercised), then
the reference's end of epoch (scheduler step, `update_bn`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import dm_improves_at  # noqa: E402  (the loader the benchmark uses too)

BATCH, STEPS, ATTACK_STEPS, SEED = 8, 3, 5, 1
THREATS = {"linf": ("linf-pgd", 8 / 255, 2 / 255), "l2": ("l2-pgd", 128 / 255, 15 / 255)}
SCHEDULE_EPOCHS = {400: [0, 1, 5, 9, 10, 11, 50, 200, 398, 399], 10: [0, 1, 5, 9]}


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(0)
    return [(torch.from_numpy(rng.random((BATCH, 3, 32, 32), dtype=np.float32)),
             torch.from_numpy(rng.integers(0, 10, BATCH))) for _ in range(STEPS)]


def summary(state: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """[sum, L2 norm] of every floating tensor and the count of batch-norm updates, by genrobust's name."""
    out = {}
    for name, t in state.items():
        name = name.replace("module.0.", "")
        out[name] = [float(t.double().sum()), float(t.double().norm())] if t.is_floating_point() else [int(t)]
    return out


def run(dmat: str) -> dict:
    torch.set_num_threads(1)
    ref = dm_improves_at.load(dmat)
    figures: dict = {"commit": "b390f25d", "batch": BATCH, "steps": STEPS, "attack_steps": ATTACK_STEPS}
    for threat, (attack, eps, step) in THREATS.items():
        for loss, beta in (("trades", 5.0), ("pgd", None)):
            trainer = dm_improves_at.trainer(ref, 16, 1, BATCH, 400, SEED, attack, eps, step, ATTACK_STEPS, beta)
            model = trainer.model
            if loss == "trades" and threat == "linf":
                figures["init"] = summary(model.state_dict())
            trainer.warmup_steps = 0
            inputs: list[torch.Tensor] = []
            hook = model.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()))
            losses: list[float] = []
            original_append = dm_improves_at.Rows.append

            def seeded():
                for i, batch in enumerate(batches()):
                    torch.manual_seed(100 + i)
                    yield batch

            dm_improves_at.Rows.append = lambda self, other, ignore_index=True: (losses.append(other.rows[0]["loss"]),
                                                                    original_append(self, other))[1]
            trainer.train(seeded(), epoch=1, adversarial=True)
            dm_improves_at.Rows.append = original_append
            hook.remove()
            per_step = len(inputs) // STEPS
            x0 = batches()[0][0]
            adv0 = inputs[per_step - 1]           # the last forward of step 0: its adversarial batch
            figures[f"{loss}_{threat}"] = {
                "losses": losses,
                "adv0": {"delta_sum": float((adv0 - x0).double().sum()), "delta_abs_sum": float((adv0 - x0).abs().double().sum()),
                         "delta_norm": float((adv0 - x0).double().norm())},
                "model": summary(model.state_dict()), "ema": summary(trainer.wa_model.state_dict()),
                "lr_next_epoch": trainer.scheduler.get_last_lr()[0]}
    schedule = {}
    for epochs, points in SCHEDULE_EPOCHS.items():
        trainer = dm_improves_at.trainer(ref, 16, 1, BATCH, epochs, SEED, attack_steps=ATTACK_STEPS)
        seen = []
        for index in range(epochs):
            group = trainer.optimizer.param_groups[0]
            if index in points:
                seen.append([index, group["lr"], group["momentum"]])
            trainer.optimizer.step()
            trainer.scheduler.step()
        schedule[str(epochs)] = seen
    figures["schedule"] = schedule
    decays = []
    for step in range(1, 8):
        averaged, online = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
        averaged.weight.data.fill_(0.0)
        online.weight.data.fill_(1.0)
        ref.ema_update(averaged, online, step, decay_rate=0.995, warmup_steps=2.5, dynamic_decay=True)
        decays.append(1.0 - float(averaged.weight.detach()))
    figures["ema_decays_warmup_2.5"] = decays
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dmat", default=os.environ.get("DMAT"), required=os.environ.get("DMAT") is None,
                        help="a checkout of DM-Improves-AT (commit b390f25d)")
    with contextlib.redirect_stdout(sys.stderr):       # the reference prints as it builds models
        figures = run(parser.parse_args().dmat)
    figures["cpu_capability"] = torch.backends.cpu.get_cpu_capability()   # the kernels' vector width changes the last bits
    print(json.dumps(figures, indent=1))
