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
        for meta in upstream:
            self.times.update(meta.get("stage_wall_time_s", {}))

    def meta(self, **extra: Any) -> dict[str, Any]:
        times = dict(self.times, **{self.stage: round(time.perf_counter() - self.started, 3)})
        return {"stage": self.stage, "stage_wall_time_s": times, **extra}


def meta_array(meta: Mapping[str, Any]) -> np.ndarray:
    """A JSON string as a 0-d unicode array, so it can sit inside an npz beside the images."""
    return np.array(json.dumps(meta, sort_keys=True))


def read_meta(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The provenance stored in an npz, or {} for a user's own file that has none."""
    if META_KEY not in arrays:
        return {}
    return json.loads(str(arrays[META_KEY][()]))
