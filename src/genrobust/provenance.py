"""Stage timing and numerics that travel inside the artifacts themselves.

Each stage records its own wall time next to those of the stages upstream of it (read
from its inputs), so the final result JSON can report every stage's cost even when some
artifacts were pulled from a DVC remote rather than computed on this machine. The same way, each
stage records the flags that change its numbers without changing any param (TF32, cuDNN's
algorithm choice and determinism, the precision it computed in), so two results that differ can be
told apart by more than their device name.
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
        self.numerics: dict[str, dict[str, Any]] = {}
        self.precision = "fp32"   # a stage that autocasts says so: `clock.precision = "bf16"`
        for meta in upstream:
            self.times.update(meta.get("stage_wall_time_s", {}))
            self.gpus.update(meta.get("stage_gpus", {}))
            self.numerics.update(meta.get("stage_numerics", {}))

    def meta(self, **extra: Any) -> dict[str, Any]:
        """Wall times and GPU counts (GPU-hours = seconds x GPUs / 3600; 0 GPUs for a CPU run)."""
        import torch   # here, not at the top: the Snakefile imports this module (via shards) on every parse,
        from . import distributed   # and each SLURM job parses it twice; torch costs 2 s of a 4.6 s parse
        times = dict(self.times, **{self.stage: round(time.perf_counter() - self.started, 3)})
        gpus = dict(self.gpus, **{self.stage: distributed.world_size() if torch.cuda.is_available() else 0})
        numerics = dict(self.numerics, **{self.stage: numerics_flags(self.precision)})
        return {"stage": self.stage, "stage_wall_time_s": times, "stage_gpus": gpus, "stage_numerics": numerics,
                **extra}


def numerics_flags(precision: str) -> dict[str, Any]:
    """The process-wide switches that change float results on a GPU, as they stand now, and the stage's precision."""
    import torch
    return {"precision": precision,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


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
