"""The diffusion, evaluation, checkpoint, compile and data-parallel measurements of benchmarks/gpu_check.py (see
gpu_check_training.py for the training ones and `Scale`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from genrobust.certification.certify import class_counts
from genrobust.diffusion.model import build_model
from genrobust.diffusion.sample import to_uint8
from genrobust.evaluation.autoattack import run_autoattack
from genrobust.resume import StateFile
from genrobust.training.batches import TrainingData
from genrobust.training.compile_check import EXPECTED_GRAPHS, compiled_graphs
from genrobust.training.ema import EMA
from genrobust.training.loop import make_optimizer
from genrobust.training.mixing import BatchMixer
from genrobust.training.rank_check import check_ranks_match_one, worker

from gpu_check_training import LINF, Scale, _recipe, _timed, _wrn

ROOT = Path(__file__).resolve().parents[1]
EDM = {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "rho": 7.0, "P_mean": -1.2, "P_std": 1.2}


def diffusion(scale: Scale, device: torch.device) -> dict[str, Any]:
    """DDPM++ training and Heun sampling images/s, sampling in fp32 and bf16, each repeated bit for bit."""
    config = {"arch": "ddpmpp", "ddpmpp": scale.ddpmpp, "edm": EDM, "resolution": 32, "augment_p": 0.0,
              "augment_dim": 0}
    torch.manual_seed(0)
    model = build_model("edm", config, 10, scale.sample_steps).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.rand(scale.diffusion_batch, 3, 32, 32, device=device)
    classes = torch.arange(scale.diffusion_batch, device=device) % 10

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(images, classes).backward()
        optimizer.step()
    row = {"train_images_per_s": round(scale.diffusion_batch / _timed(train, device, scale.iters), 1)}
    model.eval()
    latents = torch.randn(2 * scale.diffusion_batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    labels = model.one_hot(torch.arange(len(latents), device=device) % 10)
    for precision in ("fp32", "bf16"):
        def sample() -> np.ndarray:
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
                return to_uint8(model.sample_from(latents, labels))
        first = sample()
        row[f"sample_{precision}_images_per_s"] = round(len(latents) / _timed(sample, device, 1), 2)
        if not np.array_equal(first, sample()):
            raise AssertionError(f"{precision} sampling is not bit-repeatable")
    row["bit_repeatable"] = True
    return row


def evaluation(scale: Scale, device: torch.device) -> dict[str, Any]:
    """AutoAttack (APGD-CE) and certification noisy-copy throughput at the preset batch sizes."""
    model = _wrn(scale).to(device).eval()
    x = torch.rand(scale.eval_images, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (scale.eval_images,), device=device)
    started = time.perf_counter()
    run_autoattack(model, x, y, LINF, "custom", ["apgd-ce"], scale.eval_images, 0)
    attack = time.perf_counter() - started
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        copies = _timed(lambda: class_counts(model, x[0], 0.25, 4 * scale.certify_batch, scale.certify_batch,
                                             generator, 10), device, 1)
    return {"apgd_ce_images_per_s": round(len(x) / attack, 1), "certify_batch": scale.certify_batch,
            "certify_copies_per_s": round(4 * scale.certify_batch / copies, 1)}


def state_save(scale: Scale, device: torch.device) -> dict[str, Any]:
    """How long training stops for a resume state (the host snapshot), and how long the write takes behind it."""
    model = _wrn(scale).to(device)
    optimizer, ema = make_optimizer(model, _recipe(False)), EMA(model, 0.995)
    model(torch.rand(2, 3, 32, 32, device=device)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict()}
    state_file = StateFile(Path(tempfile.mkdtemp()) / "state.pt", state.keys(), weights_only=False)
    started = time.perf_counter()
    state_file.save_in_background(state)
    paused = time.perf_counter() - started
    state_file.wait()
    size = state_file.path.stat().st_size
    return {"state_mb": round(size / 2 ** 20, 1), "training_paused_s": round(paused, 3),
            "write_s": round(time.perf_counter() - started, 3)}


def compile_graphs(scale: Scale, device: torch.device, tiny: bool) -> dict[str, Any]:
    """Graphs torch.compile makes for TRADES training with accumulation (the eager backend on a CPU, to stay quick)."""
    rng = np.random.default_rng(0)
    data = TrainingData(rng.integers(0, 256, (8 * scale.batch, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, 8 * scale.batch))
    recipe = _recipe(device.type == "cuda", steps=scale.attack_steps, total=4, compile=True, accumulation_steps=2,
                     epoch_steps=2)
    graphs = compiled_graphs(_wrn(scale).to(device), data, BatchMixer(len(data.real_labels), 0, 2 * scale.batch, 0.0, 0),
                             recipe, backend="eager" if tiny else None)
    if graphs != EXPECTED_GRAPHS:
        raise AssertionError(f"{graphs} graphs for 4 steps; expected {EXPECTED_GRAPHS} (attack without and with grad, final)")
    return {"unique_graphs": graphs}


def two_ranks(device: torch.device) -> dict[str, Any]:
    """Two data-parallel processes (gloo) end with identical weights that match one process's."""
    folder = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    mp.spawn(worker, args=(2, str(folder / "store"), str(folder)), nprocs=2, join=True)
    check_ranks_match_one(folder)
    return {"ranks": 2, "match_one_process": True, "seconds": round(time.perf_counter() - started, 1)}


def dag(tiny: bool) -> dict[str, Any]:
    """The digits DAG through Snakemake in a scratch copy (planned only with --tiny: CI runs it for real elsewhere)."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import copy_project
    project = copy_project(Path(tempfile.mkdtemp()) / "project")
    command = ["snakemake", "--profile", "workflow/profiles/default", "--cores", "all", "results/digits_linf.json",
               "--configfile", "workflow/demo.yaml"] + (["-n"] if tiny else [])
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    started = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    if done.returncode:
        raise AssertionError(f"snakemake failed: {done.stderr[-2000:]}")
    row: dict[str, Any] = {"planned_only": tiny, "seconds": round(time.perf_counter() - started, 1)}
    if not tiny:
        result = json.loads((project / "results/digits_linf.json").read_text())
        row |= {k: result[k] for k in ("clean_accuracy", "robust_accuracy", "n_examples")}
    return row
