"""Batches built ahead of the training step, in loader worker processes, and copied to the device without waiting.

Building batch t (picking, reading shards, cropping) is CPU work that a GPU step must not wait
for: `workers` processes build the next batches while the step runs, the pages of a 50M-image
set are faulted in by them rather than by the training process, and pinned host memory lets the
copy to the GPU overlap the step. The batches are the same numbers whatever `workers` is.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .batches import TrainingData, make_batch
from .mixing import BatchMixer

PREFETCH = 4    # batches each worker keeps ready: the step's time covers a slow page fault or two


class StepBatches(Dataset):
    """Item t is this rank's share of batch t as uint8 NHWC images and int64 labels (CPU tensors)."""

    def __init__(self, data: TrainingData, mixer: BatchMixer, seed: int, rank: int, world: int) -> None:
        self.data, self.mixer, self.seed, self.rank, self.world = data, mixer, seed, rank, world

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = make_batch(self.data, self.mixer, step, self.seed, self.rank, self.world)
        return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """uint8 NHWC (a quarter of the bytes of floats) copied as is, then float NCHW in [0, 1] on the device.

    The values equal `data.transform.to_tensor`'s; the memory format is the one the step asks for.
    """
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def batches(data: TrainingData, mixer: BatchMixer, seed: int, steps: range, device: torch.device, rank: int = 0,
            world: int = 1, workers: int = 0, channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches `steps` (e.g. range(resumed_step, total_steps)) for this rank, on `device`.

    workers 0 builds each batch in this process when it is asked for (what a CPU run wants: no
    process competes with the step for the cores).
    """
    loader = DataLoader(StepBatches(data, mixer, seed, rank, world), batch_size=None, sampler=steps,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=PREFETCH if workers else None, persistent_workers=False)
    for images, labels in loader:
        yield to_device(images, device, channels_last), labels.to(device, non_blocking=True)
