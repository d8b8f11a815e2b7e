"""Bartoldson et al.'s question, asked of whatever cells exist: how does robustness scale?

Robust accuracy is fitted as a saturating power law, acc(x) = a - b * x^(-c), once against
the number of generated images and once against training compute (the adv_train stage's
recorded seconds). `a` is the accuracy the curve saturates at; `c` how fast it gets there.
A fit needs at least three distinct x > 0 (three parameters); with fewer, the JSON says so.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

AXES = {"data": ("num_generated", "generated images"),
        "compute": ("adv_train_seconds", "adversarial training seconds (on the recorded device)")}


def saturating_power_law(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a - b * np.power(x, -c)


def fit_curve(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    points = [[float(a), float(b)] for a, b in zip(x, y)]
    if len(np.unique(x[x > 0])) < 3:
        return {"status": "too few points", "detail": "needs robust accuracy at 3 or more distinct x > 0",
                "points": points}
    keep = x > 0
    x, y = x[keep], y[keep]
    start = (min(1.0, y.max() + 0.02), max(y.max() - y.min(), 0.01) * float(x.min()) ** 0.5, 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            (a, b, c), covariance = curve_fit(saturating_power_law, x, y, p0=start,
                                              bounds=([0.0, 0.0, 1e-3], [1.0, np.inf, 5.0]), maxfev=20000)
    except (RuntimeError, OptimizeWarning, ValueError) as exc:
        return {"status": "did not converge", "detail": str(exc), "points": points}
    grid = np.geomspace(x.min(), x.max() * 10, 50)
    residual = y - saturating_power_law(x, a, b, c)
    return {"status": "ok", "model": "robust_accuracy = a - b * x^(-c)",
            "params": {"a": float(a), "b": float(b), "c": float(c)},
            "stderr": {k: float(v) for k, v in zip("abc", np.sqrt(np.clip(np.diag(covariance), 0, None)))},
            "rmse": float(np.sqrt(np.mean(residual ** 2))), "points": points,
            "curve": [[float(g), float(saturating_power_law(g, a, b, c))] for g in grid]}


def fit_scaling(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One fit per (dataset, threat, generator) group and axis; groups with nothing to fit are listed too."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(f"{r['dataset']}_{r['threat']}_{r['generator']}", []).append(r)
    fits: dict[str, Any] = {}
    for name, members in sorted(groups.items()):
        fits[name] = {}
        for axis, (column, label) in AXES.items():
            usable = [r for r in members if r.get(column) is not None]
            fits[name][axis] = dict(fit_curve([r[column] for r in usable], [r["robust_accuracy"] for r in usable]),
                                    x=label)
    return fits
