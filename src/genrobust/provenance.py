"""Stage timing that travels inside the artifacts themselves.

Each stage records its own wall time next to those of the stages upstream of it (read
from its inputs), so the final result JSON can report every stage's cost even when some
artifacts were pulled from a DVC remote rather than computed on this machine.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

import numpy as np

META_KEY = "meta"


class StageClock:
    """Started when a stage starts; `meta()` is what the stage stores in its outputs."""

    def __init__(self, stage: str, *upstream: Mapping[str, Any]) -> None:
        self.stage = stage
        self.started = time.perf_counter()
        self.times: dict[str, float] = {}
        self.gpus: dict[str, int] = {}
        for meta in upstream:
            self.times.update(meta.get("stage_wall_time_s", {}))
            self.gpus.update(meta.get("stage_gpus", {}))

    def meta(self, **extra: Any) -> dict[str, Any]:
        """Wall times and GPU counts (GPU-hours = seconds x GPUs / 3600; 0 GPUs for a CPU run)."""
        import torch   # here, not at the top: the Snakefile imports this module (via shards) on every parse,
        from . import distributed   # and each SLURM job parses it twice; torch costs 2 s of a 4.6 s parse
        times = dict(self.times, **{self.stage: round(time.perf_counter() - self.started, 3)})
        gpus = dict(self.gpus, **{self.stage: distributed.world_size() if torch.cuda.is_available() else 0})
        return {"stage": self.stage, "stage_wall_time_s": times, "stage_gpus": gpus, **extra}


def gpu_hours(meta: Mapping[str, Any]) -> dict[str, float]:
    """Per stage, from the wall times and GPU counts a StageClock recorded."""
    gpus = meta.get("stage_gpus", {})
    return {stage: round(seconds * gpus.get(stage, 0) / 3600, 6)
            for stage, seconds in meta.get("stage_wall_time_s", {}).items()}


def meta_array(meta: Mapping[str, Any]) -> np.ndarray:
    """A JSON string as a 0-d unicode array, so it can sit inside an npz beside the images."""
    return np.array(json.dumps(meta, sort_keys=True))


def read_meta(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The provenance stored in an npz, or {} for a user's own file that has none."""
    if META_KEY not in arrays:
        return {}
    return json.loads(str(arrays[META_KEY][()]))
