"""The report's figures, drawn with matplotlib's file-only backend (no display on a cluster node)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from .. import io  # noqa: E402
from .scaling import AXES  # noqa: E402

FIGURES = ("robust_vs_generated.png", "clean_vs_robust.png", "robust_vs_quality.png", "training_curves.png",
           "scaling.png", "certified_vs_radius.png", "paired_vs_none.png")
QUALITY_AXES = {"fid": "FID (Inception)", "classifier_fd": "classifier FD", "class_agreement": "class agreement",
                "arc": "ARC (lower: closer to real)"}


def _save(figure: plt.Figure, path: Path) -> None:
    with io.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def robust_vs_generated(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One line per (grid, dataset, threat, generator): the Sehwag/Wang question, more generated data."""
    figure, axis = plt.subplots(figsize=(6, 4))
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        lines.setdefault(f"{r['grid']}: {r['dataset']} {r['threat']} {r['generator']}", []).append(
            (r["num_generated"], r["robust_accuracy"]))
    for label, points in sorted(lines.items()):
        points.sort()
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    axis.set_xscale("symlog", linthresh=100)
    axis.set(xlabel="generated images used", ylabel="robust accuracy (AutoAttack)",
             title="Robust accuracy against the amount of generated data")
    axis.legend(fontsize=7)
    _save(figure, path)


def clean_vs_robust(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    for r in rows:
        axis.scatter(r["clean_accuracy"], r["robust_accuracy"])
        axis.annotate(r["cell"], (r["clean_accuracy"], r["robust_accuracy"]), fontsize=6)
    axis.set(xlabel="clean accuracy", ylabel="robust accuracy (AutoAttack)", title="Clean against robust accuracy")
    _save(figure, path)


def robust_vs_quality(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Robust accuracy against each quality figure of the generated set trained on, one colour per generator:
    Wang et al.'s claim (lower FID, more robustness) and Sehwag et al.'s (ARC predicts it, FID does not)."""
    figure, axes = plt.subplots(2, 2, figsize=(10, 7), layout="constrained")
    for axis, (key, label) in zip(axes.flat, QUALITY_AXES.items()):
        by_generator: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if r.get(key) is not None:
                by_generator.setdefault(r["generator"], []).append((r[key], r["robust_accuracy"]))
        for generator, points in sorted(by_generator.items()):
            axis.scatter([p[0] for p in points], [p[1] for p in points], label=generator)
        axis.set(xlabel=label, ylabel="robust accuracy (AutoAttack)")
        if not by_generator:
            axis.text(0.5, 0.5, "no result records this figure", ha="center", va="center", transform=axis.transAxes)
        if axis.collections:
            axis.legend(fontsize=7)
    figure.suptitle("Robust accuracy against the quality of the generated data")
    _save(figure, path)


def training_curves(records: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Held-out PGD accuracy per epoch (training loss where a run had no validation)."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, record in sorted(records.items()):
        history = record.get("training", {}).get("history") or []
        key = "val_robust_accuracy" if any("val_robust_accuracy" in h for h in history) else "loss"
        points = [(h["images_seen"], h[key]) for h in history if key in h]
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=f"{Path(name).stem} ({key})")
    axis.set(xlabel="images seen", ylabel="held-out PGD accuracy / loss", title="Adversarial training, per epoch")
    if axis.lines:
        axis.legend(fontsize=6)
    _save(figure, path)


def scaling(fits: Mapping[str, Any], path: Path) -> None:
    """One panel per axis of scaling.json: each configuration's fitted points and, where it converged, its curve."""
    figure, axes = plt.subplots(2, 2, figsize=(11, 8), layout="constrained")
    for axis, name in zip(axes.flat, AXES):
        for group in fits["groups"]:
            fit = group["fits"][name]
            points = [p for p in fit["points"] if p[0] > 0]
            if not points:
                continue
            dots = axis.scatter([p[0] for p in points], [p[1] for p in points], label=group["name"])
            if fit["status"] == "ok":
                axis.plot([p[0] for p in fit["curve"]], [p[1] for p in fit["curve"]], color=dots.get_facecolor()[0],
                          label=f"a={fit['params']['a']:.3f}, c={fit['params']['c']:.2f}")
        axis.set_xscale("log")
        axis.set(xlabel=AXES[name][1], ylabel="robust accuracy", title=f"Scaling with {name}: a - b x^-c")
        if axis.collections:
            axis.legend(fontsize=5)
    _save(figure, path)


def certified_vs_radius(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Cohen et al.'s figure: certified accuracy against L2 radius, a line per (grid, sigma, generator, images)."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for r in rows:
        points = r["curve"]
        axis.step([p["radius"] for p in points], [p["certified_accuracy"] for p in points], where="post",
                  label=f"{r['grid']}: {r['dataset']} sigma={r['sigma']:g} {r['generator']} {r['num_generated']}")
    axis.set(xlabel="L2 radius", ylabel="certified accuracy", title="Certified accuracy of the smoothed classifiers")
    if rows:
        axis.legend(fontsize=6)
    else:
        axis.text(0.5, 0.5, "no certified results", ha="center", va="center", transform=axis.transAxes)
    _save(figure, path)


def paired_vs_none(found: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Each arm's paired difference from real data alone, robust and clean, with its 95% bootstrap interval."""
    figure, axis = plt.subplots(figsize=(6, 0.6 + 0.45 * max(len(found), 1)))
    for offset, (kind, color) in enumerate((("robust", "C0"), ("clean", "C1"))):
        ys = [i + 0.15 * (offset * 2 - 1) for i in range(len(found))]
        axis.errorbar([100 * c[f"{kind}_diff"] for c in found], ys, color=color, fmt="o", capsize=3, label=kind,
                      xerr=[[100 * (c[f"{kind}_diff"] - c[f"{kind}_low"]) for c in found],
                            [100 * (c[f"{kind}_high"] - c[f"{kind}_diff"]) for c in found]])
    axis.axvline(0, color="grey", linewidth=0.8)
    axis.set_yticks(range(len(found)), [f"{c['grid']}: {c['generator']} {c['num_generated']}" for c in found],
                    fontsize=7)
    axis.set(xlabel="accuracy points, arm - none (95% paired bootstrap)", title="Against real data alone")
    if found:
        axis.legend(fontsize=7)
    else:
        axis.text(0.5, 0.5, "no grid with a none arm and per-point results", ha="center", va="center",
                  transform=axis.transAxes)
    _save(figure, path)
