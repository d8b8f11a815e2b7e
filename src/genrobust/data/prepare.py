"""The prepare_data stage: one dataset entry in, `train.npz` and `test.npz` in the image contract out."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .. import io
from ..provenance import StageClock, meta_array
from . import sources


def prepare_data(settings: Mapping[str, Any], train_out: Path, test_out: Path) -> None:
    """Load, check and write both splits; each file is renamed into place only once complete.

    Both files carry the same provenance, so a downstream stage can read it from either.
    """
    clock = StageClock("prepare_data")
    entry = settings["dataset"]
    name, num_classes = entry["name"], entry["num_classes"]
    train_images, train_labels, test_images, test_labels = sources.load(entry, settings["seed"])
    meta = meta_array(clock.meta(dataset=name, num_classes=num_classes, source=entry["source"]))
    for path, images, labels in ((train_out, train_images, train_labels), (test_out, test_images, test_labels)):
        io.validate_images(path, {"image": images, "label": labels}, num_classes)
        io.save_npz(path, image=images, label=labels, meta=meta)
    print(f"prepare_data {name}: {len(train_labels)} train and {len(test_labels)} test images, "
          f"{num_classes} classes -> {train_out}, {test_out}")
