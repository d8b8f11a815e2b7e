"""The `evaluate` stage: AutoAttack on the test set, and a result JSON that carries its own provenance."""

from __future__ import annotations

import platform
import socket
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io
from ..models.checkpoint import load_classifier
from ..provenance import StageClock
from ..distributed import device
from ..training.loop import to_tensor
from .autoattack import run_autoattack

PACKAGES = ("genrobust", "torch", "torchvision", "pyautoattack", "denoising-diffusion-pytorch", "numpy",
            "snakemake", "dvc")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def evaluate(settings: dict[str, Any], threat: str, checkpoint: Path, test_path: Path, result_out: Path) -> None:
    cfg, attack = settings["evaluate"], settings["threats"][threat]
    num_classes = settings["dataset"]["num_classes"]
    model, ckpt = load_classifier(checkpoint, num_classes, device())
    clock = StageClock("evaluate", ckpt["meta"])
    images, labels = io.load_images(test_path, num_classes)
    n = min(cfg["n_examples"], len(images))
    x, y = to_tensor(images[:n], device()), torch.from_numpy(np.array(labels[:n])).to(device())
    started = time.perf_counter()
    result = run_autoattack(model, x, y, attack["norm"], attack["eps"], cfg["version"],
                            cfg["attacks"] if cfg["version"] == "custom" else None, cfg["batch_size"], settings["seed"])
    meta = ckpt["meta"]
    record = {
        "dataset": settings["dataset"]["name"],
        "threat": threat,
        "norm": attack["norm"],
        "eps": attack["eps"],
        "preset": settings["preset"],
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "per_attack_accuracy": result.per_attack,
        "attack": {"package": "pyautoattack", "version": cfg["version"], "attacks": result.attacks,
                   "seed": settings["seed"], "seconds": round(time.perf_counter() - started, 3)},
        "n_examples": n,
        "n_examples_requested": cfg["n_examples"],
        "test_set_size": len(images),
        "model": ckpt["model"],
        "generator": meta.get("generator", "none"),
        "num_generated": meta.get("num_generated", 0),
        "images_seen": meta.get("images_seen"),
        "training_loss": meta.get("loss"),
        "hashes": {"checkpoint_sha256": io.sha256(checkpoint), "test_data_sha256": io.sha256(test_path)},
        "package_versions": package_versions(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
        "host": socket.gethostname(),
        "stage_wall_time_s": clock.meta()["stage_wall_time_s"],
    }
    if n < cfg["n_examples"]:
        record["note"] = f"the test set holds only {len(images)} points; {cfg['n_examples']} were asked for"
    io.write_json(result_out, record)
    print(f"evaluate: clean {result.clean_accuracy:.2%}, AutoAttack ({cfg['version']}) {result.robust_accuracy:.2%} "
          f"on {n} points at {attack['norm']} eps={attack['eps']:.4g}; wrote {result_out}")
