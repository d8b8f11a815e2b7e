"""The certified results (results/{dataset}_smooth{sigma}.json and certified grid cells): a table and the
curves of certified accuracy against L2 radius, one per (grid, sigma, generator, generated images), so
Sehwag et al.'s question (does generated data raise the curve?) reads off one figure."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UserError
from ..evaluation.result_schema import CERTIFIED_SCHEMA, validate_result
from .paired import paired_difference

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


def _certified_points(row: dict[str, Any], radius: float) -> dict[int, int]:
    """Per test index, 1 where the smoothed classifier is right and certified at `radius` (abstentions: 0)."""
    return {p["index"]: int(p["radius"] is not None and p["prediction"] == p["label"] and p["radius"] >= radius)
            for p in row["points"]}


def with_minus_without(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each generated arm of a certified grid against the grid's `none` arm at the same sigma: per radius, the paired
    difference in certified accuracy over the test points both certified (seeds paired by certify.seed)."""
    found = []
    for row in rows:
        if row["grid"] == "pipeline" or row["generator"] == "none":
            continue
        same = lambda other: (other["grid"], other["dataset"], other["sigma"], other["certify"]["seed"]) == (  # noqa: E731
            row["grid"], row["dataset"], row["sigma"], row["certify"]["seed"])
        base = next((other for other in rows if other["generator"] == "none" and same(other)), None)
        if base is None:
            continue
        entry = {k: row[k] for k in ("grid", "dataset", "sigma", "generator", "num_generated")} | {"radii": {}}
        for radius in row["certified_accuracy"]:
            ours, theirs = _certified_points(row, float(radius)), _certified_points(base, float(radius))
            shared = sorted(set(ours) & set(theirs))
            entry["radii"][radius] = paired_difference(np.array([[theirs[i] for i in shared]]),
                                                       np.array([[ours[i] for i in shared]]))
        found.append(entry)
    return found


def envelope(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cohen et al.'s table: per (grid, generator, generated images), the best certified accuracy over sigma at
    each radius, and the sigma that gives it."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["grid"], row["dataset"], row["generator"], row["num_generated"]), []).append(row)
    found = []
    for (grid, dataset, generator, num), members in groups.items():
        radii = list(dict.fromkeys(r for m in members for r in m["certified_accuracy"]))
        best = {r: max(((m["certified_accuracy"][r], m["sigma"]) for m in members if r in m["certified_accuracy"]))
                for r in radii}
        found.append({"grid": grid, "dataset": dataset, "generator": generator, "num_generated": num, "best": best})
    return found


def _radius_table(title: str, columns: Sequence[str], entries: Sequence[dict[str, Any]], by_radius: str,
                  cell: Callable[[Any], str]) -> list[str]:
    """A Markdown table: the entries' `columns`, then `cell(entry[by_radius][r])` for every radius any entry has."""
    if not entries:
        return []
    radii = list(dict.fromkeys(r for e in entries for r in e[by_radius]))
    lines = [title, "", "| " + " | ".join(columns) + " | " + " | ".join(f"r={r}" for r in radii) + " |",
             "|" + "---|" * (len(columns) + len(radii))]
    for e in entries:
        lines.append("| " + " | ".join(f"{e[c]:g}" if c == "sigma" else str(e[c]) for c in columns) + " | "
                     + " | ".join(cell(e[by_radius][r]) if r in e[by_radius] else "" for r in radii) + " |")
    return lines + [""]


def _paired_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    return _radius_table("## Certified, with minus without generated data (paired, 95% bootstrap over test points)",
                         ("grid", "dataset", "sigma", "generator", "num_generated"), with_minus_without(rows), "radii",
                         lambda d: f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]")


def _envelope_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    return _radius_table("## Certified, best over sigma (Cohen et al.'s table; the sigma in brackets)",
                         ("grid", "dataset", "generator", "num_generated"),
                         [e for e in envelope(rows) if e["grid"] != "pipeline"], "best",
                         lambda best: f"{best[0]:.1%} ({best[1]:g})")


def markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A table of certified accuracy at the configured radii (percent), abstentions and cost; then, for certified
    grids, the best-over-sigma envelope and each generated arm minus the `none` arm, paired."""
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
    return lines + [""] + _envelope_markdown(rows) + _paired_markdown(rows)
