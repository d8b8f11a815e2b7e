"""Bartoldson et al.'s question, asked of whatever cells exist: how does robustness scale?

Robust accuracy is fitted as a saturating power law, acc(x) = a - b * x^(-c), against the number
of generated images and against training compute, measured three ways: images seen, FLOPs
(images seen x FLOPs per training image, flops.py) and the adv_train stage's wall time, which
depends on the device and is kept beside the two that do not. `a` is the accuracy the curve
saturates at; `c` how fast it gets there. A fit needs at least three distinct x > 0 (three
parameters); with fewer, the JSON says so.

Points are fitted only within one full configuration (CONFIGURATION): a curve through an
SiLU and a ReLU network, or through standard and rand AutoAttack scores, would describe no run.
Results with a failed sanity check or a partial score are listed but left out of every fit.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from .flops import COUNTED_FOR

AXES = {"data": ("num_generated", "generated images"),
        "images": ("images_seen", "training images seen"),
        "flops": ("train_flops", "training FLOPs"),
        "wall": ("adv_train_seconds", "adversarial training seconds (on the recorded device)")}
CONFIGURATION = ("dataset", "threat", "eps", "arch", "activation", "loss", "attack_steps", "attack_version",
                 "generator")


def saturating_power_law(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a - b * np.power(x, -c)


def fit_curve(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Fit on x / min(x), then map b (and its covariance) back, so 1e3 images and 1e16 FLOPs converge alike."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    points = [[float(a), float(b)] for a, b in zip(x, y)]
    if len(np.unique(x[x > 0])) < 3:
        return {"status": "too few points", "detail": "needs robust accuracy at 3 or more distinct x > 0",
                "points": points}
    keep = x > 0
    x, y = x[keep], y[keep]
    scale = float(x.min())
    start_a = min(1.0, y.max() + 0.02)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            (a, b_scaled, c), scaled_cov = curve_fit(saturating_power_law, x / scale, y,
                                                     p0=(start_a, max(start_a - y.min(), 0.01), 0.5),
                                                     bounds=([0.0, 0.0, 1e-3], [1.0, np.inf, 5.0]), maxfev=20000)
    except (RuntimeError, OptimizeWarning, ValueError) as exc:
        return {"status": "did not converge", "detail": str(exc), "points": points}
    b = b_scaled * scale ** c            # a - b_scaled (x/scale)^-c = a - b x^-c
    jacobian = np.array([[1.0, 0.0, 0.0], [0.0, scale ** c, b * np.log(scale)], [0.0, 0.0, 1.0]])
    covariance = jacobian @ scaled_cov @ jacobian.T
    grid = np.geomspace(x.min(), x.max() * 10, 50)
    residual = y - saturating_power_law(x, a, b, c)
    return {"status": "ok", "model": "robust_accuracy = a - b * x^(-c)",
            "params": {"a": float(a), "b": float(b), "c": float(c)},
            "stderr": {k: float(v) for k, v in zip("abc", np.sqrt(np.clip(np.diag(covariance), 0, None)))},
            "rmse": float(np.sqrt(np.mean(residual ** 2))), "points": points,
            "curve": [[float(g), float(saturating_power_law(g, a, b, c))] for g in grid]}


def group_name(key: dict[str, Any]) -> str:
    """A configuration in one line, for scaling.json and the legend of scaling.png."""
    eps = "?" if key["eps"] is None else f"{key['eps']:.4g}"
    return (f"{key['dataset']} {key['threat']} eps={eps} {key['arch']} {key['activation']} {key['loss']}-"
            f"{key['attack_steps']} AA-{key['attack_version']} {key['generator']}")


def fit_scaling(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One fit per configuration and axis; groups with nothing to fit, and the results left out, are listed too."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[name] for name in CONFIGURATION), []).append(r)
    listed: list[dict[str, Any]] = []
    for values, members in sorted(groups.items(), key=lambda item: [str(value) for value in item[0]]):
        key = dict(zip(CONFIGURATION, values))
        kept = [r for r in members if not r["flagged"]]
        fits: dict[str, Any] = {}
        for axis, (column, label) in AXES.items():
            usable = [r for r in kept if r.get(column) is not None]
            fits[axis] = dict(fit_curve([r[column] for r in usable], [r["robust_accuracy"] for r in usable]), x=label)
        listed.append({"name": group_name(key), "key": key, "results": len(members), "fitted": len(kept),
                       "excluded": [{"cell": r["cell"], "path": r["path"], "why": r["notes"]}
                                    for r in members if r["flagged"]],
                       "fits": fits})
    return {"model": "robust_accuracy = a - b * x^(-c), fitted within one configuration",
            "excluded": "results with a failed sanity check or partial: true (listed per group, never fitted)",
            "flops": COUNTED_FOR, "groups": listed}
