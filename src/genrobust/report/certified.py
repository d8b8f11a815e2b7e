"""The certified results (results/{dataset}_smooth{sigma}.json and certified grid cells): a table and the
curves of certified accuracy against L2 radius, one per (grid, sigma, generator, generated images), so
Sehwag et al.'s question (does generated data raise the curve?) reads off one figure."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError
from ..evaluation.result_schema import CERTIFIED_SCHEMA, validate_result

CERTIFIED_NAME = re.compile(r"_smooth\d")      # results/{dataset}_smooth0.25.json, cells *_smooth0p25_*


def is_certified(path: Path) -> bool:
    return bool(CERTIFIED_NAME.search(path.stem))


def collect_certified(results_dir: Path) -> list[dict[str, Any]]:
    """Every certified result, with where it came from; each is checked against its schema."""
    found = sorted(results_dir.glob("*_smooth*.json")) + sorted(results_dir.glob("grid/*/*.json"))
    rows = []
    for path in (p for p in found if is_certified(p)):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: not a readable certified result JSON ({exc})") from exc
        validate_result(record, str(path), CERTIFIED_SCHEMA)
        relative = path.relative_to(results_dir)
        rows.append({"grid": relative.parts[1] if relative.parts[0] == "grid" else "pipeline", "cell": path.stem,
                     **record})
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A table of certified accuracy at the configured radii (percent), abstentions and cost."""
    if not rows:
        return []
    radii = list(dict.fromkeys(r for row in rows for r in row["certified_accuracy"]))
    lines = ["## Certified L2 robustness (randomized smoothing)", "",
             "| grid | cell | sigma | generator | generated | " + " | ".join(f"r={r}" for r in radii)
             + " | abstained | points | n |", "|" + "---|" * (len(radii) + 8)]
    for row in rows:
        figures = [f"{row['certified_accuracy'][r]:.1%}" if r in row["certified_accuracy"] else "" for r in radii]
        lines.append(f"| {row['grid']} | {row['cell']} | {row['sigma']:g} | {row['generator']} | "
                     f"{row['num_generated']} | " + " | ".join(figures)
                     + f" | {row['abstention_rate']:.1%} | {row['n_examples']} | {row['certify']['n']} |")
    return lines + [""]
