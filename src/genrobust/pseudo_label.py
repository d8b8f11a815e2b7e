"""The `pseudo_label` stage: the standard classifier labels every generated image.

Generated images carry the class they were conditioned on, but a weak or unconditional
generator's samples need not look like it; Gowal et al. and Wang et al. therefore train
on the classifier's label, and Wang et al. keep only the most confident images per class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import io
from .models.checkpoint import load_classifier
from .provenance import StageClock, meta_array
from .shards import ShardSet
from .distributed import device
from .training.loop import to_tensor


def keep_most_confident(labels: np.ndarray, confidence: np.ndarray, fraction: float, num_classes: int) -> np.ndarray:
    """Per predicted class, keep the ceil(fraction * count) most confident images (ties: lower index first)."""
    keep = np.zeros(len(labels), dtype=bool)
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        count = int(np.ceil(fraction * len(members)))
        order = members[np.argsort(-confidence[members], kind="stable")]
        keep[order[:count]] = True
    return keep


@torch.no_grad()
def pseudo_label(settings: dict[str, Any], classifier_path: Path, shard_dir: Path, labels_out: Path) -> None:
    num_classes, cfg = settings["dataset"]["num_classes"], settings["pseudo_label"]
    shards = ShardSet.open(shard_dir, verify=True)
    model, ckpt = load_classifier(classifier_path, num_classes, device())
    clock = StageClock("pseudo_label", ckpt["meta"], shards.manifest.get("meta", {}))
    labels = np.empty(len(shards), dtype=np.int64)
    confidence = np.empty(len(shards), dtype=np.float32)
    start = 0
    for images, _ in shards.batches(cfg["batch_size"]):
        probs = torch.softmax(model(to_tensor(images, device())), dim=1)
        best, index = probs.max(dim=1)
        labels[start:start + len(images)], confidence[start:start + len(images)] = index.cpu(), best.cpu()
        start += len(images)
    keep = keep_most_confident(labels, confidence, cfg["keep_fraction"], num_classes)
    conditioned = np.concatenate(shards.labels) if len(shards) else np.empty(0, dtype=np.int64)
    agreement = float((conditioned == labels).mean()) if len(shards) else float("nan")
    io.save_npz(labels_out, label=labels, confidence=confidence, keep=keep,
                meta=meta_array(clock.meta(kept=int(keep.sum()), agreement_with_conditioning=agreement)))
    print(f"pseudo_label: kept {int(keep.sum())}/{len(shards)} images; the classifier agrees with the "
          f"conditioning class on {agreement:.1%}; wrote {labels_out}")
