"""Three steps of NVlabs' own training_loop.training_loop, recorded, so the project's training step is checked against theirs.

The loop runs unchanged under the CPU stand-ins of `stand_ins`. Two observers record it:
EDMLoss.__call__ is wrapped to record its inputs and to replay its two randn draws from the RNG
state saved before the call (`rng_replay`), and torch_utils.distributed's update_progress (a no-op
in their code, called at every tick) reads the loop's locals (net, ema, optimizer, ema_beta).
Every step is one tick, so each step's network snapshot and training-state dump are kept too and
compared with what the observer read.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .configs import CONFIGS, DATASET_LABELS, DDPMPP, TRAIN, TRAIN_STEPS
from .convert import arrays, named_params, weight_figures
from .rng_replay import RngReplay
from .stand_ins import CpuDDP, patched, single_gloo_process


def write_dataset(folder: Path, resolution: int) -> None:
    """Eight random RGB PNGs and a dataset.json of labels, the layout ImageFolderDataset reads."""
    import PIL.Image
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    names = []
    for i, label in enumerate(DATASET_LABELS):
        name = f"img{i:05d}.png"
        PIL.Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8), "RGB").save(folder / name)
        names.append([name, label])
    (folder / "dataset.json").write_text(json.dumps({"labels": names}))


def loop_kwargs(ref: types.SimpleNamespace, data_dir: Path, run_dir: Path, init_pkl: Path) -> dict[str, Any]:
    """training_loop's keyword arguments for c8 and TRAIN, in the EasyDict form train.py hands it."""
    cfg = CONFIGS["c8"]
    network_kwargs = ref.dnnlib.EasyDict(class_name="training.networks.EDMPrecond", use_fp16=False, sigma_data=0.5, **DDPMPP,
                                         **{k: v for k, v in cfg.items() if k != "img_resolution"})
    return dict(
        run_dir=str(run_dir),
        dataset_kwargs=ref.dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path=str(data_dir),
                                           use_labels=True, xflip=False, cache=False),
        data_loader_kwargs=ref.dnnlib.EasyDict(pin_memory=False, num_workers=0),
        network_kwargs=network_kwargs,
        loss_kwargs=ref.dnnlib.EasyDict(class_name="training.loss.EDMLoss", P_mean=-1.2, P_std=1.2, sigma_data=0.5),
        optimizer_kwargs=ref.dnnlib.EasyDict(class_name="torch.optim.Adam", lr=TRAIN["lr"], betas=TRAIN["betas"], eps=TRAIN["eps"]),
        augment_kwargs=None, seed=TRAIN["seed"], batch_size=TRAIN["batch_size"], batch_gpu=TRAIN["batch_gpu"],
        total_kimg=TRAIN["total_kimg"], ema_halflife_kimg=TRAIN["ema_halflife_kimg"], ema_rampup_ratio=TRAIN["ema_rampup_ratio"],
        lr_rampup_kimg=TRAIN["lr_rampup_kimg"], loss_scaling=TRAIN["loss_scaling"], kimg_per_tick=TRAIN["kimg_per_tick"],
        snapshot_ticks=TRAIN["snapshot_ticks"], state_dump_ticks=TRAIN["state_dump_ticks"], resume_pkl=str(init_pkl),
        cudnn_benchmark=False, device=torch.device("cpu"))


def train_c8(ref: types.SimpleNamespace, init_net: torch.nn.Module, workdir: Path) -> tuple[dict, dict]:
    """Three steps of NVlabs' training_loop.training_loop on a folder of 8x8 PNGs, starting from c8/init.

    The loop builds its own net from its own seed; `resume_pkl` (a pickle of dict(ema=init_net))
    makes it copy c8/init into net and EMA, the way train.py --transfer does (which also sets
    ema_rampup_ratio None).
    """
    data_dir, run_dir = workdir / "dataset", workdir / "run"
    write_dataset(data_dir, CONFIGS["c8"]["img_resolution"])
    run_dir.mkdir()
    init_pkl = workdir / "init-c8.pkl"
    with open(init_pkl, "wb") as f:
        pickle.dump(dict(ema=init_net), f)
    kwargs = loop_kwargs(ref, data_dir, run_dir, init_pkl)

    calls: list[dict[str, Any]] = []
    ticks: list[dict[str, Any]] = []
    edm_loss = ref.loss.EDMLoss
    original_call = edm_loss.__mro__[1].__call__          # the undecorated class's __call__

    def recording_call(self: Any, net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                       augment_pipe: Any = None) -> torch.Tensor:
        rng = RngReplay()
        loss = original_call(self, net, images, labels=labels, augment_pipe=augment_pipe)
        rnd_normal, noise, exact = rng.replay(images)
        calls.append(dict(images=images.detach().clone(), labels=labels.detach().clone(), rnd_normal=rnd_normal,
                          noise=noise, loss_sum=loss.detach().sum(), exact=exact, training=net.training))
        return loss

    def observe(cur: int, total: float) -> None:
        loop = sys._getframe(1).f_locals                 # training_loop's locals at the end of a tick
        entry = dict(cur_nimg=loop["cur_nimg"], net=named_params(loop["net"]), ema=named_params(loop["ema"]))
        if "ema_beta" in loop:
            entry.update(lr=loop["optimizer"].param_groups[0]["lr"], ema_beta=loop["ema_beta"])
        for pattern, tag in (("network-snapshot-000000.pkl", "snapshot"), ("training-state-000000.pt", "state")):
            if (run_dir / pattern).exists():
                target = run_dir / f"step{len(ticks)}-{pattern}"
                os.replace(run_dir / pattern, target)
                entry[tag] = target
        ticks.append(entry)

    out = io.StringIO()
    with single_gloo_process(), patched(edm_loss, "__call__", recording_call), \
            patched(ref.distributed, "update_progress", observe), \
            patched(torch.nn.parallel, "DistributedDataParallel", CpuDDP), \
            patched(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: None), \
            patched(torch.utils.data.Sampler, "__init__", lambda self, data_source=None: None), \
            contextlib.redirect_stdout(out):
        ref.training_loop.training_loop(**kwargs)

    assert len(calls) == TRAIN_STEPS and len(ticks) == TRAIN_STEPS + 1, (len(calls), len(ticks))
    figures, checks = step_figures(calls, ticks, named_params(init_net))
    checks["stdout_lines"] = len(out.getvalue().splitlines())
    return figures, checks


def step_figures(calls: list[dict[str, Any]], ticks: list[dict[str, Any]],
                 init: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Each step's draws, lr, EMA beta and weights' figures as npz arrays, and the JSON's checks of what the observers saw."""
    figures: dict[str, np.ndarray] = {}
    checks: dict[str, Any] = {"start_equals_init": all(torch.equal(ticks[0][w][k], init[k]) for w in ("net", "ema") for k in init),
                              "loss_draws_exact": [c["exact"] for c in calls], "net_training_mode": [c["training"] for c in calls]}
    steps = []
    for s in range(1, TRAIN_STEPS + 1):
        call, tick = calls[s - 1], ticks[s]
        figures.update(arrays(f"c8/step{s}", {k: call[k] for k in ("images", "labels", "rnd_normal", "noise", "loss_sum")}))
        figures[f"c8/step{s}/lr"] = np.array(tick["lr"], dtype=np.float64)
        figures[f"c8/step{s}/ema_beta"] = np.array(tick["ema_beta"], dtype=np.float64)
        for which in ("net", "ema"):
            figures.update(weight_figures(f"c8/step{s}/{which}", tick[which]))
        check = {}
        if "snapshot" in tick:
            with open(tick["snapshot"], "rb") as f:
                snap = pickle.load(f)["ema"]
            check["snapshot_ema_equal"] = all(torch.equal(v, tick["ema"][k]) for k, v in named_params(snap).items())
        if "state" in tick:
            state = torch.load(tick["state"], map_location="cpu", weights_only=False)
            check["training_state_net_equal"] = all(torch.equal(v, tick["net"][k]) for k, v in named_params(state["net"]).items())
        steps.append(dict(step=s, cur_nimg_after=tick["cur_nimg"], lr=tick["lr"], ema_beta=tick["ema_beta"],
                          loss_sum=float(call["loss_sum"]), labels=call["labels"].argmax(1).tolist(),
                          net_changed=any(not torch.equal(tick["net"][k], ticks[s - 1]["net"][k]) for k in init), **check))
    checks["steps"] = steps
    checks["last_snapshot"] = str(ticks[-1].get("snapshot"))
    return figures, checks
