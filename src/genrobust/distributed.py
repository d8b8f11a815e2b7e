"""Data-parallel training under `torchrun`: the same code runs as one process or as N.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `start()` joins the process group (NCCL on
GPUs, gloo on CPUs) only when there is more than one process, so a plain `python -m
genrobust` run never touches torch.distributed.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def summed(value: torch.Tensor) -> torch.Tensor:
    """`value` summed over the processes (itself in a plain run): counts that each process made on its share."""
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def start() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        dist.init_process_group(backend)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
