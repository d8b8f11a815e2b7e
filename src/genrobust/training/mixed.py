"""Training on batches that mix real and pseudo-labelled generated images: what `adv_train` and
`smooth_train` share (data, held-out images, mixer, length, checkpoints and their provenance), so
the two differ only in the objective their recipe names."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import distributed, io
from ..errors import UserError
from ..models.checkpoint import save_classifier
from ..provenance import StageClock, read_meta
from ..shards import MANIFEST, ShardSet
from .common import device_memory, load_real, loader_workers, new_model, speed_options
from .memory import accumulation_for, model_name, step_memory
from .loop import Recipe, TrainingData, fit
from .validation import Validation
from .metrics import write_metrics
from .mixing import BatchMixer


@dataclass(frozen=True)
class Outputs:
    model: Path      # best by the held-out score (PGD accuracy, or noisy accuracy for smooth_train): what is scored
    last: Path       # the last epoch's, kept for comparison and for continuing elsewhere
    metrics: Path    # per-epoch TSV


def load_generated(data: TrainingData, shard_dir: Path, labels_path: Path, num_classes: int,
                   limit: int | None = None) -> list[dict]:
    """Attach the kept generated images (the first `limit` of them) and their pseudo-labels to `data`.

    Returns both files' provenance. `limit` is how grid cells share one generated set: a cell
    over fewer images reads a prefix of it. Shards cycle through the classes, so the prefix is
    balanced up to what selection dropped (exactly balanced with keep_fraction 1).
    """
    shards = ShardSet.open(shard_dir)
    arrays = io.open_npz(labels_path)
    for key in ("label", "confidence", "keep"):
        if key not in arrays:
            raise UserError(f"{labels_path}: missing array {key!r}; rerun pseudo_label")
    if len(arrays["label"]) != len(shards):
        raise UserError(f"{labels_path}: labels {len(arrays['label'])} images, {shard_dir} holds {len(shards)}; "
                        "rerun pseudo_label")
    keep = np.flatnonzero(np.asarray(arrays["keep"]))
    if limit is not None:
        if limit > len(keep):
            raise UserError(f"--num-generated {limit}: {labels_path} keeps only {len(keep)} generated images; "
                            "raise sample.num_images (the grid's largest num_images must fit in the one set)")
        keep = keep[:limit]
    labels = np.asarray(arrays["label"])[keep]
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{labels_path}: labels outside [0, {num_classes - 1}]")
    data.generated, data.generated_index, data.generated_labels = shards, keep, labels
    return [shards.manifest.get("meta", {}), read_meta(arrays)]


def hold_out(images: np.ndarray, labels: np.ndarray, cfg: dict[str, Any], train_path: Path,
             flip: bool) -> tuple[TrainingData, Validation | None]:
    """The first `validation.size` training images are held out, never trained on, to pick the best epoch."""
    spec = cfg["validation"]
    size = spec["size"]
    if size >= len(images):
        raise UserError(f"params.yaml: adv_train.validation.size = {size}: {train_path} has only {len(images)} "
                        "images; hold out fewer (0 turns validation off)")
    data = TrainingData(images[size:], labels[size:], flip=flip)
    if not size:
        return data, None
    return data, Validation(images[:size], labels[:size], spec["every"], spec.get("attack_steps", 0))


def length_for(cfg: dict[str, Any], n_generated: int) -> dict[str, Any]:
    """The training length, batch and mix of the `by_num_generated` entry for this much generated data.

    Wang et al. train longer, on larger batches, with more generated data (their README and
    tables); the entry with the largest `min_images` not above `n_generated` overrides the section.
    """
    chosen = [e for e in cfg.get("by_num_generated") or [] if e["min_images"] <= n_generated]
    if not chosen:
        return cfg
    entry = max(chosen, key=lambda e: e["min_images"])
    return {**cfg, **{k: v for k, v in entry.items() if k != "min_images"}}


def whole_batch(cfg: dict[str, Any], n_generated: int, stage: str) -> int:
    """The mixer's batch: `batch_size` images of which generated_fraction are generated (`mixing: replace`, Gowal and
    Wang et al.), or `batch_size` real images plus as many generated ones as make generated_fraction of the whole
    (`mixing: add`, Sehwag et al.'s 128 real + 128 generated at 0.5); an epoch is a pass over the real images."""
    fraction = cfg["generated_fraction"]
    if cfg.get("mixing", "replace") == "replace" or not n_generated:
        return cfg["batch_size"]
    if fraction >= 1:
        raise UserError(f"params.yaml: {stage}.mixing = 'add' adds generated images to {cfg['batch_size']} real ones; "
                        f"generated_fraction = {fraction} leaves no room for them (expected below 1)")
    # The largest whole batch T whose T - int(T x fraction) real images (the mixer's count) are batch_size: as T
    # grows by one that count grows by 0 or 1, so the T before it first exceeds batch_size is the one.
    return next(t for t in itertools.count(cfg["batch_size"]) if t - int(t * fraction) > cfg["batch_size"]) - 1


def train_on_mix(stage: str, settings: dict[str, Any], objective: dict[str, Any], describe: str,
                 train_path: Path, outputs: Outputs, work_dir: Path, shard_dir: Path | None = None,
                 labels_path: Path | None = None, num_generated: int | None = None, restart: bool = False,
                 **meta: Any) -> None:
    """Train settings[stage]'s model with `objective` (the Recipe fields of its loss) and save both checkpoints.

    `describe` ends the stage's opening line (the loss and its budget); `meta` joins the checkpoints' provenance.
    """
    cfg, num_classes, seed = settings[stage], settings["dataset"]["num_classes"], settings["seed"]
    images, labels = load_real(train_path, num_classes)
    upstream = [read_meta(io.open_npz(train_path))]
    data, validation = hold_out(images, labels, cfg, train_path, settings["dataset"].get("flip", False))
    quality = None
    if shard_dir is not None:
        upstream += load_generated(data, shard_dir, labels_path, num_classes, num_generated)
        quality = upstream[-1].get("generated_quality")   # from labels.npz: the set's quality.json figures
    clock = StageClock(stage, *upstream)
    n_generated = 0 if data.generated_index is None else len(data.generated_index)
    cfg = length_for(cfg, n_generated)
    mixer = BatchMixer(len(data.real_images), n_generated, whole_batch(cfg, n_generated, stage),
                       cfg["generated_fraction"], seed, replacement=cfg["generated_replacement"])
    epoch_steps = math.ceil((cfg["epoch_images"] or len(images)) / cfg["batch_size"])
    speed = speed_options(cfg)
    accumulation, planned = accumulation_for(step_memory(cfg["model"], num_classes, objective["loss"], speed["bf16"]),
                                             mixer.batch_size // distributed.world_size(), cfg["accumulation_steps"],
                                             device_memory(), f"{stage}: {model_name(cfg['model'])}")
    recipe = Recipe(total_steps=cfg["epochs"] * epoch_steps, lr=cfg["lr"], momentum=cfg["momentum"],
                    nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"],
                    warmup_fraction=cfg["warmup_fraction"], ema_decay=cfg["ema_decay"], seed=seed,
                    epoch_steps=epoch_steps, accumulation_steps=accumulation, schedule=cfg["schedule"],
                    bn_momentum=cfg["bn_momentum"], **objective, **speed)
    clock.precision = "bf16" if recipe.bf16 else "fp32"
    print(f"{stage}: {cfg['epochs']} epochs of {epoch_steps} steps of {mixer.real_per_batch} real + "
          f"{mixer.generated_per_batch} generated images ({len(data.real_images)} real and {n_generated} generated "
          f"available, {0 if validation is None else len(validation.labels)} held out), {describe}", flush=True)
    if planned:
        print(planned, flush=True)
    model = new_model(cfg["model"], num_classes, images, seed)
    result = fit(model, data, mixer, recipe, work_dir, validation=validation, restart=restart,
                 workers=loader_workers())
    if not distributed.is_main():
        return
    meta = clock.meta(history=result.history, images_seen=recipe.total_steps * mixer.batch_size,
                      generator=data.generated.manifest.get("generator", settings["generator"]) if n_generated
                      else "none", num_generated=n_generated, seed=seed,
                      generated_quality=quality if n_generated else None, loss=recipe.loss,
                      best_epoch=result.best_epoch, held_out=cfg["validation"]["size"],
                      train_sha256=io.sha256(train_path),
                      generated_manifest_sha256=io.sha256(Path(shard_dir) / MANIFEST) if shard_dir else None, **meta)
    save_classifier(outputs.last, result.last, cfg["model"], num_classes, dict(meta, checkpoint="last"))
    save_classifier(outputs.model, result.best or result.last, cfg["model"], num_classes,
                    dict(meta, checkpoint="best" if result.best is not None else "last"))
    write_metrics(outputs.metrics, result.history)
    print(f"{stage}: wrote {outputs.model} (epoch {result.best_epoch or len(result.history)}), {outputs.last}, "
          f"{outputs.metrics}")
