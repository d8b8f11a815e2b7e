"""Find every result JSON under a results directory and flatten each into one table row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError

COLUMNS = ["grid", "cell", "dataset", "threat", "generator", "num_generated", "arch", "activation", "preset",
           "clean_accuracy", "robust_accuracy", "n_examples", "images_seen", "attack_version", "adv_train_seconds",
           "path"]
REQUIRED = ("dataset", "threat", "clean_accuracy", "robust_accuracy", "model")


def result_files(results_dir: Path) -> list[Path]:
    """The pipeline's `results/{dataset}_{threat}.json` and the grids' `results/grid/{grid}/{cell}.json`."""
    found = sorted(results_dir.glob("*_*.json")) + sorted(results_dir.glob("grid/*/*.json"))
    return [path for path in found if "." not in path.stem]     # not side files such as X.model_info.json


def load_result(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable result JSON ({exc})") from exc
    missing = [key for key in REQUIRED if not isinstance(record, dict) or key not in record]
    if missing:
        raise UserError(f"{path}: not a genrobust result (missing {', '.join(missing)})")
    return record


def row(path: Path, record: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    relative = path.relative_to(results_dir)
    in_grid = relative.parts[0] == "grid" and len(relative.parts) == 3
    return {
        "grid": relative.parts[1] if in_grid else "pipeline",
        "cell": path.stem,
        "dataset": record["dataset"],
        "threat": record["threat"],
        "generator": record.get("generator", "none"),
        "num_generated": record.get("num_generated", 0),
        "arch": f"{record['model'].get('arch')}-{record['model'].get('depth')}-{record['model'].get('width')}",
        "activation": record["model"].get("activation"),
        "preset": record.get("preset"),
        "clean_accuracy": record["clean_accuracy"],
        "robust_accuracy": record["robust_accuracy"],
        "n_examples": record.get("n_examples"),
        "images_seen": record.get("images_seen"),
        "attack_version": record.get("attack", {}).get("version"),
        "adv_train_seconds": record.get("stage_wall_time_s", {}).get("adv_train"),
        "path": str(path),
    }


def collect(results_dir: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Rows sorted by grid then cell, and each result's full record by path (for the training curves)."""
    records = {str(path): load_result(path) for path in result_files(results_dir)}
    rows = [row(Path(path), record, results_dir) for path, record in records.items()]
    rows.sort(key=lambda r: (r["grid"] != "pipeline", r["grid"], r["dataset"], r["threat"], r["num_generated"],
                             r["generator"], str(r["activation"])))
    return rows, records
