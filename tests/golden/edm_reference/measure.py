"""Every figure of both configs, gathered into the npz's arrays and the JSON's description of how they were made.

Settings are fixed before anything is built (one thread, deterministic algorithms) because the
figures are compared bit for bit: the JSON records them with the versions and CPU capability.
"""

from __future__ import annotations

import copy
import platform
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .configs import (BATCH, COMMIT, CONFIGS, DDPMPP, FULL, FWD_CLASSES, LOSS_CLASSES, SAMPLE_CLASSES, SAMPLE_STEPS,
                      SIGMAS, TRAIN, net_kwargs)
from .convert import jsonable, weight_figures
from .figures import forward_figures, loss_figures, perturb, sample_figures, verify_init_recipe
from .pickle_format import pickle_figures
from .reference import build, commit_of, load
from .training_run import train_c8


def run(edm: str, workdir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All arrays and the JSON description, measured from the checkout at `edm`; scratch files go to `workdir`."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ref = load(edm)
    figures: dict[str, np.ndarray] = {}
    info = header(edm)
    for c, cfg in CONFIGS.items():
        config_arrays, entry = measure_config(ref, c, cfg, workdir)
        figures.update(config_arrays)
        if c == "c8":
            info["pickle"] = pickle_figures(ref, Path(entry["training"]["last_snapshot"]))
        info["configs"][c] = entry
    info["full_size"] = full_size_counts(ref)
    info["full_size"]["55735299_is"] = [k for k, v in info["full_size"].items() if v == 55735299]
    return figures, info


def header(edm: str) -> dict[str, Any]:
    """The JSON's record of versions, settings, inputs and seeds, so a mismatch can be traced to its cause."""
    return {
        "commit": commit_of(edm), "commit_expected": COMMIT, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(), "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "batch": BATCH, "fwd": {"sigma": SIGMAS, "classes": FWD_CLASSES}, "loss_classes": LOSS_CLASSES,
        "sample": {"classes": SAMPLE_CLASSES, "num_steps": list(SAMPLE_STEPS), "S_churn": 0, "sigma_min": 0.002,
                   "sigma_max": 80, "rho": 7},
        "seeds": {"init": "torch.manual_seed(0) then EDMPrecond(...)", "weights": "torch.Generator seed 1, randn per parameter",
                  "fwd": "Generator seed 2: y=rand*2-1, n=randn, x=y+sigma*n, augment_labels=randn*0.5",
                  "loss": "Generator seed 3: images=rand*2-1; torch.manual_seed(4) before EDMLoss",
                  "sample": "Generator seed 5: latents=randn; torch.manual_seed(6) before edm_sampler",
                  "dataset": "numpy default_rng(7) uint8 PNGs"},
        "configs": {}, "dtypes": {"default": "float32", "uint8": "*/images_uint8",
                                  "float64": "*/images_float, */sigmas_called, c8/step*/lr, c8/step*/ema_beta"},
    }


def measure_config(ref: types.SimpleNamespace, c: str, cfg: dict[str, Any], workdir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One config's arrays and JSON entry: init, perturbed weights, forward, loss, sampler (and, for c8, training)."""
    net = build(ref, cfg)
    figures: dict[str, np.ndarray] = {}
    entry: dict[str, Any] = {"edmprecond_kwargs": jsonable(net_kwargs(cfg))}
    entry["param_names"] = [k for k, _ in net.named_parameters()]
    entry["param_count"] = sum(p.numel() for p in net.parameters())
    entry["state_dict_keys"] = list(net.state_dict().keys())
    entry["buffer_names"] = [k for k, _ in net.named_buffers()]
    entry["init_kwargs"] = {"EDMPrecond": jsonable(dict(net.init_kwargs)), "EDMPrecond_init_args": jsonable(list(net.init_args)),
                            "SongUNet": jsonable(dict(net.model.init_kwargs))}
    entry["init_recipe"] = verify_init_recipe(net)
    init_state = {k: v.clone() for k, v in net.state_dict().items()}
    figures.update(weight_figures(f"{c}/init", init_state))
    init_net = copy.deepcopy(net)
    net.load_state_dict(perturb(net))      # not stored: the test rebuilds them from its own init with `perturb`
    net.eval()
    figures.update(forward_figures(c, cfg, net))
    entry["fwd_out_sum"] = float(figures[f"{c}/fwd/out"].astype(np.float64).sum())
    loss_arrays, entry["loss"] = loss_figures(ref, c, cfg, net)
    figures.update(loss_arrays)
    sample_arrays, entry["sample"] = sample_figures(ref, c, cfg, net)
    figures.update(sample_arrays)
    if c == "c8":
        train_arrays, entry["training"] = train_c8(ref, init_net, workdir)
        # The committed JSON's wording; the docstrings it means are now training_run's and stand_ins'.
        entry["training"]["method"] = ("NVlabs training.training_loop.training_loop itself, 3 steps (see module docstring "
                                       "for the CPU stand-ins and observers)")
        entry["training"]["kwargs"] = jsonable(TRAIN)
        figures.update(train_arrays)
    return figures, entry


def full_size_counts(ref: types.SimpleNamespace) -> dict[str, Any]:
    """Parameter counts of the CIFAR-10 conditional DDPM++ on the meta device, with and without augment_dim 9."""
    counts = {}
    for augment_dim in (9, 0):
        kwargs = dict(img_resolution=32, img_channels=3, label_dim=10, use_fp16=False, sigma_data=0.5, **DDPMPP,
                      **{k: v for k, v in FULL.items() if k != "img_resolution"}, augment_dim=augment_dim)
        with torch.device("meta"):
            net = ref.networks.EDMPrecond(**kwargs)
        counts[f"augment_dim_{augment_dim}"] = sum(p.numel() for p in net.parameters())
    counts["config"] = jsonable(dict(FULL, label_dim=10, **DDPMPP))
    counts["built_on"] = "meta"
    return counts
