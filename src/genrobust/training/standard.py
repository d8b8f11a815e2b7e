"""The `train_classifier` stage: a standard (non-robust) classifier, used to pseudo-label generated images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import distributed, io
from ..models.checkpoint import save_classifier
from ..provenance import StageClock, read_meta
from .common import load_real, loader_workers, new_model, speed_options
from .loop import Recipe, TrainingData, fit
from .mixing import BatchMixer


def train_classifier(settings: dict[str, Any], train_path: Path, model_out: Path, work_dir: Path,
                     restart: bool = False) -> None:
    clock = StageClock("train_classifier", read_meta(io.open_npz(train_path)))
    cfg, num_classes, seed = settings["classifier"], settings["dataset"]["num_classes"], settings["seed"]
    images, labels = load_real(train_path, num_classes)
    model = new_model(cfg["model"], num_classes, images, seed)
    mixer = BatchMixer(len(images), 0, cfg["batch_size"], 0.0, seed)
    # epoch_images: a subset of 200 images still trains as many steps as the whole set would (else 8 epochs are 25).
    epoch_steps = math.ceil(cfg["epoch_images"] / cfg["batch_size"]) if cfg["epoch_images"] else None
    recipe = Recipe(loss="ce", total_steps=cfg["epochs"] * (epoch_steps or mixer.steps_per_epoch()), lr=cfg["lr"],
                    momentum=0.9, nesterov=True, weight_decay=cfg["weight_decay"], warmup_fraction=0.025,
                    ema_decay=None, seed=seed, epoch_steps=epoch_steps, **speed_options(cfg))
    clock.precision = "bf16" if recipe.bf16 else "fp32"
    result = fit(model, TrainingData(images, labels, flip=settings["dataset"].get("flip", False)), mixer, recipe, work_dir,
                 restart=restart, workers=loader_workers())
    if distributed.is_main():
        save_classifier(model_out, result.last, cfg["model"], num_classes,
                        clock.meta(history=result.history, images_seen=recipe.total_steps * cfg["batch_size"]))
        print(f"train_classifier: wrote {model_out}")
