"""Run-time stand-ins that let NVlabs' training_loop run on one CPU process, since it assumes CUDA and torchrun.

While `training_run.train_c8` runs the loop, this process (only) gets: torch.distributed as a
single gloo process; DistributedDataParallel built without `device_ids` when the module is on the
CPU (torch refuses device_ids=[cpu]); torch.cuda.reset_peak_memory_stats as a no-op (it needs a
GPU); torch.utils.data.Sampler taking (and ignoring) the data_source argument InfiniteSampler
passes it, as torch < 2.2 did. All of them are undone afterwards.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Set obj.name to value for the duration; restore (or delete, if it was inherited) afterwards."""
    had = name in vars(obj)
    old = vars(obj).get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


@contextlib.contextmanager
def single_gloo_process() -> Iterator[None]:
    """A one-process gloo group, the world training_loop's torch_utils.distributed expects to find set up."""
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    torch.distributed.init_process_group("gloo", init_method="env://", rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class CpuDDP(torch.nn.parallel.DistributedDataParallel):
    """torch refuses device_ids=[cpu]; a CPU module takes device_ids=None."""

    def __init__(self, module: torch.nn.Module, device_ids: list[Any] | None = None, **kw: Any) -> None:
        if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids=device_ids, **kw)
