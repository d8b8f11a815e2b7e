"""The `report` stage: summary table (CSV and Markdown), figures, and the scaling fit, from every result found."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

from .. import io
from . import plots
from .collect import COLUMNS, collect
from .scaling import fit_scaling


def _markdown(rows: Sequence[dict[str, Any]]) -> str:
    shown = [c for c in COLUMNS if c not in ("grid", "path")]
    lines = ["# genrobust results", ""]
    for grid in dict.fromkeys(r["grid"] for r in rows):
        lines += [f"## {grid}", "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
        for r in (r for r in rows if r["grid"] == grid):
            cells = [f"{r[c]:.2%}" if c.endswith("accuracy") else ("" if r[c] is None else str(r[c])) for c in shown]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def report(results_dir: Path, summary_csv: Path, summary_md: Path, scaling_json: Path, plots_dir: Path) -> None:
    rows, records = collect(results_dir)
    with io.atomic_path(summary_csv) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    io.write_bytes(summary_md, _markdown(rows).encode())
    fits = fit_scaling(rows)
    io.write_json(scaling_json, fits)
    plots.robust_vs_generated(rows, plots_dir / "robust_vs_generated.png")
    plots.clean_vs_robust(rows, plots_dir / "clean_vs_robust.png")
    plots.training_curves(records, plots_dir / "training_curves.png")
    plots.scaling(fits, plots_dir / "scaling.png")
    print(f"report: {len(rows)} results in {summary_csv}, {summary_md}, {scaling_json} and {plots_dir}/")
