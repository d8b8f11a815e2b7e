"""Is a checkpoint the one a dvc.lock records? So that a score can be pinned to a shared model.

DVC records, for every file a stage outputs, the md5 of the file's bytes; `dvc pull` checks
what it downloads against it, but nothing stops the file from being replaced or damaged
afterwards. `evaluate --dvc-lock dvc.lock` checks the checkpoint against that record first.

The check is asked for, not automatic: a Snakemake run that rebuilds a model (after a params
change, say) leaves the committed dvc.lock describing the previous model until `make share`
records the new one, so an automatic check would refuse every such run; and `dvc repro`
reruns any stage whose output no longer matches the lock before evaluate ever sees it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .. import io
from ..errors import UserError


def _locked_outputs(lock: Path) -> dict[Path, tuple[str, str]]:
    """Every file output the lock records: absolute path -> (stage, md5)."""
    if not lock.is_file():
        raise UserError(f"{lock}: file not found; expected the dvc.lock of the project the checkpoint belongs to")
    try:
        data: Any = yaml.safe_load(lock.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{lock}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise UserError(f"{lock}: no 'stages' mapping; expected a dvc.lock written by DVC")
    outputs = {}
    for stage, entry in data["stages"].items():
        for out in (entry or {}).get("outs", []):
            if isinstance(out, dict) and "path" in out and "md5" in out and not str(out["md5"]).endswith(".dir"):
                outputs[(lock.parent / out["path"]).resolve()] = (stage, out["md5"])
    return outputs


def verify_locked(path: Path, lock: Path) -> dict[str, str]:
    """Refuse `path` unless its md5 is the one `lock` records for it; return that record."""
    outputs = _locked_outputs(lock)
    record = outputs.get(path.resolve())
    if record is None:
        raise UserError(f"{lock}: records no file output {path}; expected the checkpoint to be one of its stages' "
                        f"outputs ({len(outputs)} recorded)")
    stage, recorded = record
    actual = io.md5(path)
    if actual != recorded:
        raise UserError(f"{path}: md5 {actual} disagrees with {lock}, which records {recorded} (stage {stage}); "
                        f"`dvc checkout --force {path}` restores the recorded file, `dvc commit --force {stage}` "
                        f"records this one")
    return {"file": str(lock), "stage": stage, "md5": recorded}
