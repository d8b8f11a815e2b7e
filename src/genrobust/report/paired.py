"""Arms against real data alone, point by point: every arm of a grid attacks the same test points with the same
seeds, so the difference it makes is read off paired verdicts, not off two noisy means.

For an arm and the grid's `generator: none` arm, the seeds both ran and each seed's per-point verdicts
(clean, robust: the result's `per_point`) give a (seeds x points) table of differences. Its mean is the
effect; a bootstrap that redraws test points and seeds together, each with replacement, gives the 95%
percentile interval. An interval that excludes 0 is an effect the test set and the seeds can see.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .arms import ARM_KEYS

REPLICATES = 4000
PAIRED_BY = tuple(k for k in ARM_KEYS if k not in ("generator", "num_generated"))


def _replicates(diff: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """Bootstrap means of a (seeds x points) table: each replicate redraws seeds and points with replacement. Tables
    of one shape get the same draws for one `seed`, so two arms' replicates stay paired with each other."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, diff.shape[0], (replicates, diff.shape[0]))
    points = rng.integers(0, diff.shape[1], (replicates, diff.shape[1]))
    return np.array([diff[s].mean(0)[p].mean() for s, p in zip(seeds, points)])


def paired_difference(base: np.ndarray, arm: np.ndarray, replicates: int = REPLICATES, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """Mean of arm - base over (seeds x points) 0/1 verdicts, row s of both from one seed and column p from one test
    point, and the bootstrap percentile interval at `level`."""
    diff = np.asarray(arm, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    low, high = np.quantile(_replicates(diff, replicates, seed), [(1 - level) / 2, (1 + level) / 2])
    return float(diff.mean()), float(low), float(high)


def gap_share(base: np.ndarray, arm: np.ndarray, extra: np.ndarray, replicates: int = REPLICATES, seed: int = 0,
              level: float = 0.95) -> tuple[float, float, float]:
    """Gowal et al.'s share of the gap closed, (arm - none) / (extra real - none), and its interval from the same
    bootstrap draws for both differences (replicates where the extra real arm gains nothing are left out)."""
    base = np.asarray(base, dtype=np.float64)
    gained, closed = np.asarray(arm) - base, np.asarray(extra) - base
    ratios = _replicates(gained, replicates, seed) / _replicates(closed, replicates, seed)
    low, high = np.nanquantile(np.where(np.isfinite(ratios), ratios, np.nan), [(1 - level) / 2, (1 + level) / 2])
    return float(gained.mean() / closed.mean()) if closed.mean() else float("nan"), float(low), float(high)


def _verdicts(rows: Sequence[Mapping[str, Any]], records: Mapping[str, Mapping[str, Any]],
              kind: str) -> dict[int, np.ndarray]:
    """Per seed, the 0/1 verdicts of `kind` (clean or robust) of the arm's results that recorded them."""
    found = {}
    for r in rows:
        points = records[r["path"]].get("per_point")
        if points is not None and r["seed"] is not None:
            found[r["seed"]] = np.frombuffer(points[kind].encode(), dtype=np.uint8) - ord("0")
    return found


def _arm_like(groups: Mapping[tuple, Any], arm: Mapping[str, Any], generator: str) -> tuple | None:
    """The key of the grid's arm with `generator` that `arm` is paired with (same PAIRED_BY values), if any."""
    return next((k for k in groups if dict(zip(ARM_KEYS, k))["generator"] == generator
                 and all(dict(zip(ARM_KEYS, k))[p] == arm[p] for p in PAIRED_BY)), None)


def comparisons(rows: Sequence[Mapping[str, Any]], records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each grid arm against its grid's `none` arm (same dataset, threat, model, loss, preset), over shared seeds."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["grid"] != "pipeline":
            groups.setdefault(tuple(r[k] for k in ARM_KEYS), []).append(r)
    found = []
    for key, members in groups.items():
        arm = dict(zip(ARM_KEYS, key))
        base_key = _arm_like(groups, arm, "none")
        if arm["generator"] == "none" or base_key is None:
            continue
        entry = dict(arm)
        for kind in ("robust", "clean"):
            ours, theirs = _verdicts(members, records, kind), _verdicts(groups[base_key], records, kind)
            seeds = sorted(s for s in ours if s in theirs and len(ours[s]) == len(theirs[s]))
            if not seeds:
                break
            mean, low, high = paired_difference(np.stack([theirs[s] for s in seeds]), np.stack([ours[s] for s in seeds]))
            entry |= {"seeds": seeds, "points": len(ours[seeds[0]]), f"{kind}_diff": mean, f"{kind}_low": low,
                      f"{kind}_high": high}
        else:
            extra_key = _arm_like(groups, arm, "external")
            if extra_key is not None and extra_key != key:
                extra, ours = _verdicts(groups[extra_key], records, "robust"), _verdicts(members, records, "robust")
                base = _verdicts(groups[base_key], records, "robust")
                seeds = [s for s in entry["seeds"] if s in extra and len(extra[s]) == len(base[s])]
                if seeds:
                    share = gap_share(*(np.stack([table[s] for s in seeds]) for table in (base, ours, extra)))
                    entry |= dict(zip(("gap_share", "gap_low", "gap_high"), share))
            found.append(entry)
    return found


def markdown(found: Sequence[Mapping[str, Any]]) -> list[str]:
    if not found:
        return []
    lines = ["## Against real data alone, paired (arm - none; 95% bootstrap over test points and seeds)", "",
             "| grid | dataset | threat | generator | num_generated | seeds | points | robust | clean | gap closed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in found:
        cells = [f"{100 * c[f'{k}_diff']:+.2f} [{100 * c[f'{k}_low']:+.2f}, {100 * c[f'{k}_high']:+.2f}]"
                 for k in ("robust", "clean")]
        gap = f"{c['gap_share']:.0%} [{c['gap_low']:.0%}, {c['gap_high']:.0%}]" if "gap_share" in c else ""
        lines.append(f"| {c['grid']} | {c['dataset']} | {c['threat']} | {c['generator']} | {c['num_generated']} | "
                     f"{len(c['seeds'])} | {c['points']} | {cells[0]} | {cells[1]} | {gap} |")
    return lines + ["", "Points of accuracy; an interval that excludes 0 is an effect these seeds and test points "
                        "can see. Gap closed: Gowal et al.'s (arm - none) / (external - none) in robust accuracy, "
                        "where the grid's `external` arm is extra real data (gowal_gap, gowal_gap_smoke).", ""]
