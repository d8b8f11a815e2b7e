"""Per-epoch training metrics as a TSV: what `dvc plots` draws and a person reads with `column -t`."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import io


def write_metrics(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """One row per epoch; columns in first-seen order, empty where an epoch did not measure a value."""
    columns: list[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, delimiter="\t", restval="", lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({key: f"{value:.6g}" if isinstance(value, float) else value for key, value in row.items()})
