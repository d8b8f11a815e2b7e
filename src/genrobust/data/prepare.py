"""The prepare_data stage: one dataset entry in, `train.npz`, `test.npz` and `extra_real.npz` (the training images
a `subset` leaves out; none without one) in the image contract out."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .. import io
from ..provenance import StageClock, meta_array
from . import sources, subset


def prepare_data(settings: Mapping[str, Any], train_out: Path, test_out: Path, extra_out: Path) -> None:
    """Load, check and write the splits; each file is renamed into place only once complete.

    All files carry the same provenance, so a downstream stage can read it from any.
    """
    clock = StageClock("prepare_data")
    entry = settings["dataset"]
    name, num_classes = entry["name"], entry["num_classes"]
    train_images, train_labels, test_images, test_labels = sources.load(entry, settings["seed"])
    (train_images, train_labels), (extra_images, extra_labels) = subset.split(
        train_images, train_labels, entry.get("subset"), num_classes, f"datasets.{name}")
    meta = meta_array(clock.meta(dataset=name, num_classes=num_classes, source=entry["source"],
                                 subset=entry.get("subset")))
    for path, images, labels in ((train_out, train_images, train_labels), (test_out, test_images, test_labels)):
        io.validate_images(path, {"image": images, "label": labels}, num_classes)
        io.save_npz(path, image=images, label=labels, meta=meta)
    io.save_npz(extra_out, image=extra_images, label=extra_labels)     # the released format import_external reads
    print(f"prepare_data {name}: {len(train_labels)} train and {len(test_labels)} test images, "
          f"{num_classes} classes -> {train_out}, {test_out}; {len(extra_labels)} extra real -> {extra_out}")
