"""Find every result JSON under a results directory and flatten each into one table row.

A row keeps what makes a number trustworthy or comparable: the attack version, whether the
score is partial, which sanity checks failed (`flagged` is either), and the full training
configuration, so that neither the table nor the scaling fit can silently mix unlike results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from .certified import is_certified
from .flops import flops_per_image

COLUMNS = ["grid", "cell", "dataset", "threat", "eps", "generator", "num_generated", "arch", "activation", "loss",
           "attack_steps", "preset", "seed", "clean_accuracy", "robust_accuracy", "n_examples", "attack_version",
           "partial", "sanity", "flagged", "images_seen", "train_flops", "adv_train_seconds",
           "fid", "classifier_fd", "class_agreement", "arc", "path"]
QUALITY = ("fid", "classifier_fd", "class_agreement", "arc")   # the generated set's quality.json figures
REQUIRED = ("dataset", "threat", "clean_accuracy", "robust_accuracy", "model")


def result_files(results_dir: Path) -> list[Path]:
    """The pipeline's `results/{dataset}_{threat}.json` and the grids' `results/grid/{grid}/{cell}.json`
    (certified results have their own table: report/certified.py)."""
    found = sorted(results_dir.glob("*_*.json")) + sorted(results_dir.glob("grid/*/*.json"))
    # not side files such as X.model_info.json, nor certified results
    return [path for path in found if "." not in path.stem and not is_certified(path)]


def load_result(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable result JSON ({exc})") from exc
    missing = [key for key in REQUIRED if not isinstance(record, dict) or key not in record]
    if missing:
        raise UserError(f"{path}: not a genrobust result (missing {', '.join(missing)})")
    return record


def flags(record: dict[str, Any]) -> tuple[str, list[str]]:
    """The sanity column (ok, not checked, or the failed checks' names) and every reason to distrust the score."""
    sanity = record.get("sanity")
    if sanity is None:
        column, notes = "not checked", []
    else:
        failed = [name for name, check in sanity.get("checks", {}).items() if not check.get("passed", False)]
        notes = list(sanity.get("warnings", [])) or [f"sanity check {name} failed" for name in failed]
        column = "; ".join(failed) or ("warned" if notes else "ok")
    if record.get("partial"):
        notes.append(record.get("note") or f"partial: scored on {record.get('n_examples')} of "
                                           f"{record.get('n_examples_requested')} requested test points")
    return column, notes


def row(path: Path, record: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    """One table row; `notes` (the reasons a row is flagged) rides along for the Markdown footnotes."""
    relative = path.relative_to(results_dir)
    in_grid = relative.parts[0] == "grid" and len(relative.parts) == 3
    model = record["model"]
    training = record.get("training") or {}
    loss, attack_steps = record.get("training_loss"), training.get("attack_steps")
    images_seen = record.get("images_seen")
    try:
        per_image = flops_per_image(model, loss, attack_steps)
    except ValueError as exc:       # a model or loss this genrobust cannot build or count
        raise UserError(f"{path}: {exc}") from exc
    sanity, notes = flags(record)
    quality = record.get("generated_quality") or {}
    return {
        "grid": relative.parts[1] if in_grid else "pipeline",
        "cell": path.stem,
        "dataset": record["dataset"],
        "threat": record["threat"],
        "eps": record.get("eps"),
        "generator": record.get("generator", "none"),
        "num_generated": record.get("num_generated", 0),
        "arch": f"{model.get('arch')}-{model.get('depth')}-{model.get('width')}",
        "activation": model.get("activation"),
        "loss": loss,
        "attack_steps": attack_steps,
        "preset": record.get("preset"),
        "seed": record.get("seed"),
        "clean_accuracy": record["clean_accuracy"],
        "robust_accuracy": record["robust_accuracy"],
        "n_examples": record.get("n_examples"),
        "attack_version": record.get("attack", {}).get("version"),
        "partial": bool(record.get("partial", False)),
        "sanity": sanity,
        "flagged": bool(notes),
        "images_seen": images_seen,
        "train_flops": None if per_image is None or images_seen is None else per_image * images_seen,
        "adv_train_seconds": record.get("stage_wall_time_s", {}).get("adv_train"),
        **{key: quality.get(key) for key in QUALITY},
        "path": str(path),
        "notes": notes,
    }


def collect(results_dir: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Rows sorted by grid then cell, and each result's full record by path (for the training curves)."""
    records = {str(path): load_result(path) for path in result_files(results_dir)}
    rows = [row(Path(path), record, results_dir) for path, record in records.items()]
    rows.sort(key=lambda r: (r["grid"] != "pipeline", r["grid"], r["dataset"], r["threat"], r["num_generated"],
                             r["generator"], str(r["activation"])))
    return rows, records
