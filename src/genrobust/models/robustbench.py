"""What a RobustBench submission needs from one of our checkpoints.

Our models keep the input normalisation as persistent buffers so that a checkpoint is
self-contained; RobustBench's DMWideResNet / DMPreActResNet take mean and std as
constructor arguments instead and keep them out of the state dict.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch


def robustbench_state_dict(ckpt: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[float], list[float]]:
    """The state dict RobustBench's architecture loads with strict=True, and the mean and std to build it with."""
    state = dict(ckpt["state_dict"])
    mean, std = state.pop("mean"), state.pop("std")
    return state, mean.flatten().tolist(), std.flatten().tolist()
