"""Arms: the cells of a grid that differ only in their training seed, pooled into a mean and an interval.

One seed of a small run can differ from the next by more than the effect a grid asks about
(none / gaussian / edm on digits), so a grid with a `seed` axis is read per arm: the mean over
seeds and a 95% Student-t interval, which says whether two arms' difference is more than noise.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from scipy import stats

ARM_KEYS = ("grid", "dataset", "threat", "generator", "num_generated", "arch", "activation", "loss", "preset")


def interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t confidence interval (None from a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * sd / math.sqrt(len(values)))


def arms(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per arm, in row order: the seeds pooled, with mean and 95% interval of both accuracies."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in ARM_KEYS), []).append(r)
    found = []
    for key, members in groups.items():
        robust, robust_ci = interval([m["robust_accuracy"] for m in members])
        clean, clean_ci = interval([m["clean_accuracy"] for m in members])
        found.append(dict(zip(ARM_KEYS, key), seeds=sorted(m["seed"] for m in members if m["seed"] is not None),
                          n=len(members), robust_mean=robust, robust_ci95=robust_ci, clean_mean=clean,
                          clean_ci95=clean_ci, n_examples=members[0]["n_examples"]))
    return found


def markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The arms table for summary.md: only grids that repeat a cell over seeds."""
    repeated = [a for a in arms(rows) if a["n"] > 1]
    if not repeated:
        return []
    lines = ["## Arms over seeds (mean, 95% t-interval)", "",
             "| grid | dataset | threat | generator | num_generated | activation | seeds | robust | clean |",
             "|---|---|---|---|---|---|---|---|---|"]
    for a in repeated:
        lines.append(f"| {a['grid']} | {a['dataset']} | {a['threat']} | {a['generator']} | {a['num_generated']} | "
                     f"{a['activation']} | {len(a['seeds'])} | {a['robust_mean']:.2%} ± {a['robust_ci95']:.2%} | "
                     f"{a['clean_mean']:.2%} ± {a['clean_ci95']:.2%} |")
    return lines + [""]
