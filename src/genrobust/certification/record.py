"""The certified result JSON, results/{dataset}_smooth{sigma}.json: figures, the curve, and provenance.

It follows workflow/schemas/certified.schema.yaml, checked before it is written, and carries the
same provenance as the AutoAttack result (hashes, package versions, device, stage times,
training history), so a certified number can be traced to the data and model behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .. import io
from ..evaluation.evaluate import provenance
from ..evaluation.result_schema import CERTIFIED_SCHEMA, validate_result


def certified_accuracy(rows: Sequence[dict[str, Any]], radius: float) -> float:
    """Cohen et al.'s figure: the share of points predicted correctly with a certified radius of at least `radius`."""
    hits = sum(1 for r in rows if r["radius"] is not None and r["prediction"] == r["label"] and r["radius"] >= radius)
    return hits / len(rows) if rows else 0.0


def curve(rows: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """Certified accuracy at every radius where it changes (each correct point's radius), from radius 0."""
    radii = sorted({0.0} | {r["radius"] for r in rows if r["radius"] is not None and r["prediction"] == r["label"]})
    return [{"radius": radius, "certified_accuracy": certified_accuracy(rows, radius)} for radius in radii]


def certified_record(settings: dict[str, Any], sigma: float, rows: list[dict[str, Any]], ckpt: dict[str, Any],
                     checkpoint: Path, test_path: Path, test_set_size: int, base_clean: float,
                     stages: dict[str, Any], seconds: float) -> dict[str, Any]:
    cfg, meta = settings["certify"], ckpt["meta"]
    record = {
        "dataset": settings["dataset"]["name"],
        "sigma": sigma,
        "preset": settings["preset"],
        "clean_accuracy": certified_accuracy(rows, 0.0),      # the smoothed classifier's, abstentions wrong
        "base_clean_accuracy": base_clean,                    # the base classifier's on the clean points
        "certified_accuracy": {f"{radius:g}": certified_accuracy(rows, radius) for radius in cfg["radii"]},
        "curve": curve(rows),
        "abstention_rate": sum(r["radius"] is None for r in rows) / len(rows) if rows else 0.0,
        "certify": {"n0": cfg["n0"], "n": cfg["n"], "alpha": cfg["alpha"], "skip": cfg["skip"],
                    "batch_size": cfg["batch_size"], "seed": settings["seed"], "seconds": round(seconds, 3),
                    "samples_per_point": cfg["n0"] + cfg["n"]},
        "n_examples": len(rows),
        "n_examples_requested": cfg["n_examples"],
        "partial": len(rows) < cfg["n_examples"],
        "test_set_size": test_set_size,
        "points": rows,
        "model": ckpt["model"],
        "trained_sigma": meta.get("sigma"),
        **provenance(meta, checkpoint, test_path, stages),
        "training": {"history": meta.get("history", []), "best_epoch": meta.get("best_epoch"),
                     "checkpoint": meta.get("checkpoint"), "held_out": meta.get("held_out")},
        "checkpoint": str(checkpoint),
    }
    if record["partial"]:
        record["note"] = (f"partial: every {cfg['skip']}th test point gives only {len(rows)}; {cfg['n_examples']} "
                          f"were asked for (certify.allow_fewer: true)")
    return record


def write_certified(record: dict[str, Any], path: Path) -> None:
    validate_result(record, str(path), CERTIFIED_SCHEMA)
    io.write_json(path, record)
