"""Counting the operations that make the host wait for the GPU, on any device (a CPU included).

A GPU step that reads a value back (`.item()`, a data-dependent size) stalls the host until the
queued kernels finish, so the next batch is not launched ahead. On CUDA
`torch.cuda.set_sync_debug_mode` reports such waits; on a CPU nothing waits, but the same ops
pass through the dispatcher, so tests and `benchmarks/gpu_check.py --tiny` count them there.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

SYNCING = frozenset({"bincount", "_local_scalar_dense", "nonzero", "item", "unique", "_unique2", "masked_select",
                     "is_nonzero", "equal"})


class HostSyncs(TorchDispatchMode):
    """`with HostSyncs() as syncs: ...` then `syncs.seen`, the syncing ops' names in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.__name__.split(".")[0]
        if name in SYNCING:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.seen))
