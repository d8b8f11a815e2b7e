"""The `report` stage: summary table (CSV and Markdown), figures, and the scaling fit, from every result found."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

from .. import io
from . import arms, certified, paired, plots
from .collect import COLUMNS, collect
from .scaling import fit_scaling

FLAG = "⚠"


def _cell(r: dict[str, Any], column: str) -> str:
    value = r[column]
    if value is None:
        return ""
    if column.endswith("accuracy"):
        return f"{value:.2%}"
    if column == "class_agreement":
        return f"{value:.1%}"
    if column in ("eps", "train_flops", "fid", "classifier_fd", "arc"):
        return f"{value:.4g}"
    return str(value)


def _markdown(rows: Sequence[dict[str, Any]], certified_rows: Sequence[dict[str, Any]],
              compared: Sequence[dict[str, Any]]) -> str:
    """One table per grid; a flagged row's cell name carries a mark and a footnote with its reasons.

    The mark sits on the cell name, not in a column of its own, so that a reader scanning the
    accuracies cannot miss that a number should not be trusted (or compared) as it is.
    """
    shown = [c for c in COLUMNS if c not in ("grid", "path", "flagged")]
    lines = ["# genrobust results", ""]
    notes: list[str] = []
    for grid in dict.fromkeys(r["grid"] for r in rows):
        lines += [f"## {grid}", "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
        for r in (r for r in rows if r["grid"] == grid):
            cells = [_cell(r, c) for c in shown]
            if r["flagged"]:
                notes.append(f"[^{len(notes) + 1}]: {grid}/{r['cell']}: " + "; ".join(r["notes"]))
                cells[shown.index("cell")] = f"{FLAG} {r['cell']}[^{len(notes)}]"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += arms.markdown(rows)
    lines += paired.markdown(compared)
    lines += certified.markdown(certified_rows)
    if notes:
        lines += [f"{FLAG} flagged: a failed sanity check (possible gradient masking) or a partial test set; "
                  f"left out of the scaling fits.", ""] + notes + [""]
    return "\n".join(lines)


def report(results_dir: Path, summary_csv: Path, summary_md: Path, scaling_json: Path, plots_dir: Path) -> None:
    rows, records = collect(results_dir)
    certified_rows = certified.collect_certified(results_dir)
    with io.atomic_path(summary_csv) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS, lineterminator="\n", extrasaction="ignore")   # notes: Markdown only
        writer.writeheader()
        writer.writerows(rows)
    compared = paired.comparisons(rows, records)
    io.write_bytes(summary_md, _markdown(rows, certified_rows, compared).encode())
    fits = fit_scaling(rows)
    io.write_json(scaling_json, fits)
    plots.robust_vs_generated(rows, plots_dir / "robust_vs_generated.png")
    plots.clean_vs_robust(rows, plots_dir / "clean_vs_robust.png")
    plots.robust_vs_quality(rows, plots_dir / "robust_vs_quality.png")
    plots.training_curves(records, plots_dir / "training_curves.png")
    plots.scaling(fits, plots_dir / "scaling.png")
    plots.certified_vs_radius(certified_rows, plots_dir / "certified_vs_radius.png")
    plots.paired_vs_none(compared, plots_dir / "paired_vs_none.png")
    print(f"report: {len(rows)} results and {len(certified_rows)} certified in {summary_csv}, {summary_md}, "
          f"{scaling_json} and {plots_dir}/; "
          f"{len(fits['groups'])} configurations fitted separately")
    for r in (r for r in rows if r["flagged"]):
        print(f"report: warning: {r['grid']}/{r['cell']} flagged and left out of the scaling fits: "
              + "; ".join(r["notes"]))
