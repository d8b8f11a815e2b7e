"""The `evaluate` stage: AutoAttack on the test set, and a result JSON that carries its own provenance."""

from __future__ import annotations

import platform
import socket
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io
from ..attacks.threat import Threat
from ..data.transform import to_tensor
from ..distributed import device
from ..errors import UserError
from ..models.checkpoint import load_classifier
from ..provenance import StageClock, gpu_hours
from .autoattack import run_autoattack
from .dvclock import verify_locked
from .model_info import model_info
from .result_schema import validate_result
from .sanity import sanity_checks

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


def provenance(meta: dict[str, Any], checkpoint: Path, test_path: Path, stages: dict[str, Any]) -> dict[str, Any]:
    """What a result says of the model and data behind it: its training data, hashes, software, device and
    every stage's time (read from the checkpoint's meta, so pulled artifacts keep their own)."""
    return {
        "generator": meta.get("generator", "none"),
        "num_generated": meta.get("num_generated", 0),
        "seed": meta.get("seed"),
        "generated_quality": meta.get("generated_quality"),
        "images_seen": meta.get("images_seen"),
        "training_loss": meta.get("loss"),
        "hashes": {"checkpoint_sha256": io.sha256(checkpoint), "test_data_sha256": io.sha256(test_path),
                   "train_data_sha256": meta.get("train_sha256"),
                   "generated_manifest_sha256": meta.get("generated_manifest_sha256")},
        "package_versions": package_versions(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
        "host": socket.gethostname(),
        "stage_wall_time_s": stages["stage_wall_time_s"],
        "stage_gpu_hours": gpu_hours(stages),
        "stage_numerics": stages.get("stage_numerics", {}),
    }


def _bits(verdicts: torch.Tensor) -> str:
    return "".join("1" if v else "0" for v in verdicts.tolist())


def _points(cfg: dict[str, Any], available: int, test_path: Path) -> int:
    """How many test points to attack: all that params ask for, or fewer only where params allow it."""
    if available < cfg["n_examples"] and not cfg["allow_fewer"]:
        raise UserError(f"{test_path}: holds {available} test points but evaluate.n_examples = {cfg['n_examples']}; "
                        f"lower evaluate.n_examples, or set evaluate.allow_fewer: true to score all {available} "
                        f"(the result then says partial: true)")
    return min(cfg["n_examples"], available)


def evaluate(settings: dict[str, Any], threat: str, checkpoint: Path, test_path: Path, result_out: Path,
             dvc_lock: Path | None = None, info_out: Path | None = None) -> None:
    """AutoAttack, the gradient-masking checks, a schema-checked result JSON and a RobustBench model-info JSON."""
    cfg, attack = settings["evaluate"], settings["threats"][threat]
    num_classes = settings["dataset"]["num_classes"]
    locked = verify_locked(checkpoint, dvc_lock) if dvc_lock is not None and checkpoint.is_file() else None
    model, ckpt = load_classifier(checkpoint, num_classes, device())
    clock = StageClock("evaluate", ckpt["meta"])
    images, labels = io.load_images(test_path, num_classes)
    n = _points(cfg, len(images), test_path)
    x, y = to_tensor(images[:n], device()), torch.from_numpy(np.array(labels[:n])).to(device())
    started = time.perf_counter()
    threat_model = Threat.from_params(attack)
    result = run_autoattack(model, x, y, threat_model, cfg["version"],
                            cfg["attacks"] if cfg["version"] == "custom" else None, cfg["batch_size"], settings["seed"],
                            source=str(checkpoint))
    sanity = sanity_checks(model, x, y, threat_model, result.clean_accuracy, result.robust_accuracy,
                           cfg["batch_size"], settings["seed"])
    meta = ckpt["meta"]
    stages = clock.meta()
    record = {
        "dataset": settings["dataset"]["name"],
        "threat": threat,
        "norm": attack["norm"],
        "eps": attack["eps"],
        "preset": settings["preset"],
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "per_attack_accuracy": result.per_attack,
        # Test points 0..n-1, "1" where classified right: arms that attacked the same points compare point by point.
        "per_point": {"clean": _bits(result.clean), "robust": _bits(result.robust)},
        "attack": {"package": "pyautoattack", "version": cfg["version"], "attacks": result.attacks,
                   "seed": settings["seed"], "seconds": round(time.perf_counter() - started, 3)},
        "n_examples": n,
        "n_examples_requested": cfg["n_examples"],
        "partial": n < cfg["n_examples"],
        "test_set_size": len(images),
        "model": ckpt["model"],
        **provenance(meta, checkpoint, test_path, stages),
        "sanity": sanity,
        "training": {"history": meta.get("history", []), "best_epoch": meta.get("best_epoch"),
                     "checkpoint": meta.get("checkpoint"), "held_out": meta.get("held_out"),
                     "attack_steps": meta.get("attack_steps")},
        "checkpoint": str(checkpoint),
    }
    if n < cfg["n_examples"]:
        record["note"] = (f"partial: the test set holds only {len(images)} points; {cfg['n_examples']} were asked for "
                          f"(evaluate.allow_fewer: true)")
    if locked is not None:
        record["dvc_lock"] = locked
    validate_result(record, str(result_out))
    for warning in sanity["warnings"]:
        print(f"evaluate: warning: {warning}", file=sys.stderr)
    io.write_json(result_out, record)
    io.write_json(info_out or result_out.with_suffix(".model_info.json"),
                  model_info(record, f"genrobust_{record['dataset']}_{threat}_{record['generator']}"))
    print(f"evaluate: clean {result.clean_accuracy:.2%}, AutoAttack ({cfg['version']}) {result.robust_accuracy:.2%} "
          f"on {n} points at {attack['norm']} eps={attack['eps']:.4g}; wrote {result_out}")
