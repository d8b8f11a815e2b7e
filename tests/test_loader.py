"""The GPU-feeding path of the training loop, checked on a CPU: batches built ahead in loader workers equal the
per-image reference, each rank builds only its share, a step never reads a value back, and compiled training
neither recompiles nor all-reduces on every micro-batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from genrobust import shards
from genrobust.host_syncs import HostSyncs
from genrobust.models.checkpoint import build_classifier
from genrobust.provenance import StageClock
from genrobust.training.batches import TrainingData, interleave
from genrobust.training.compile_check import EXPECTED_GRAPHS, compiled_graphs
from genrobust.training.loader import batches
from genrobust.training.loop import Recipe, _step, make_optimizer, train_step
from genrobust.training.mixing import BatchMixer

from .conftest import LINF

TINY_WRN = {"arch": "wrn", "depth": 10, "width": 1, "activation": "silu"}


def _per_image_batch(data: TrainingData, mixer: BatchMixer, step: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole global batch as the loop built it before loader workers: gathered, ordered, then a Python loop
    cropping and mirroring one image at a time with the draws taken in this order."""
    real_idx, gen_idx = mixer.batch(step)
    images = [data.real_images[real_idx], data.generated.take(data.generated_index[gen_idx])[0]]
    labels = [data.real_labels[real_idx], data.generated_labels[gen_idx]]
    order = interleave(len(real_idx), len(gen_idx))
    batch = np.concatenate(images)[order]
    rng = np.random.default_rng([seed, 2, step])
    shifts, flips = rng.integers(0, 9, size=(len(batch), 2)), (rng.random(len(batch)) < 0.5) & data.flip
    padded = np.pad(batch, ((0, 0), (4, 4), (4, 4), (0, 0)))
    out = np.empty_like(batch)
    for i, ((dy, dx), mirrored) in enumerate(zip(shifts, flips)):
        crop = padded[i, dy:dy + 32, dx:dx + 32]
        out[i] = crop[:, ::-1] if mirrored else crop
    return out, np.concatenate(labels)[order]


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory) -> TrainingData:
    directory = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    generated = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    for k, (start, stop) in enumerate(shards.shard_bounds(40, 16)):
        shards.write_shard(directory, k, generated[start:stop], np.arange(start, stop) % 10, {})
    shards.write_manifest(directory, shards.shard_bounds(40, 16), 10, StageClock("sample_diffusion"), generator="edm")
    keep = np.sort(rng.choice(40, 30, replace=False))
    return TrainingData(rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 24),
                        shards.ShardSet.open(directory), keep, rng.integers(0, 10, 30), flip=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_each_rank_builds_its_share_of_the_reference_batch(mixed_data: TrainingData, workers: int) -> None:
    mixer = BatchMixer(24, 30, 16, 0.75, seed=3)
    reference = [_per_image_batch(mixed_data, mixer, step, 5) for step in range(4)]
    for world in (1, 2, 4):
        for rank in range(world):
            got = list(batches(mixed_data, mixer, 5, range(1, 4), torch.device("cpu"), rank, world, workers))
            assert len(got) == 3
            for (x, y), (images, labels) in zip(got, reference[1:]):
                expected = torch.from_numpy(images[rank::world].transpose(0, 3, 1, 2).copy()).float() / 255
                assert x.is_contiguous() and torch.equal(x, expected), (world, rank)
                assert y.tolist() == labels[rank::world].tolist()


def test_a_training_step_never_waits_for_the_device() -> None:
    """TRADES with its 2-step attack, EMA and batch-norm momentum: nothing in the step reads a value back."""
    torch.manual_seed(0)
    model = build_classifier(TINY_WRN, 10, [0.5] * 3, [0.25] * 3)
    recipe = Recipe("trades", 10, 0.1, 0.9, True, 5e-4, 0.1, None, 0, LINF, 2, 6.0, 0.1, bn_momentum=0.01,
                    accumulation_steps=2)
    optimizer = make_optimizer(model, recipe)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    train_step(model, model, optimizer, None, x, y, 0, recipe, 5)
    with HostSyncs() as syncs:
        loss = train_step(model, model, optimizer, None, x, y, 1, recipe, 5)
    assert syncs.seen == [] and loss.shape == ()


def test_compiled_training_compiles_each_forward_once() -> None:
    """The attack's two forwards and the final one: three graphs, however many steps (the momentum-1 first step
    runs eagerly; compiled, it doubled them)."""
    torch.manual_seed(0)
    model = build_classifier(TINY_WRN, 10, [0.5] * 3, [0.25] * 3)
    rng = np.random.default_rng(0)
    data = TrainingData(rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 64))
    recipe = Recipe("trades", 4, 0.1, 0.9, True, 5e-4, 0.1, 0.99, 0, LINF, 2, 6.0, 0.1, compile=True,
                    bn_momentum=0.01, accumulation_steps=2, epoch_steps=2)
    assert compiled_graphs(model, data, BatchMixer(64, 0, 16, 0.0, 0), recipe, backend="eager") == EXPECTED_GRAPHS == 3


def test_compiled_ddp_all_reduces_on_the_last_micro_batch_only(monkeypatch, tmp_path: Path) -> None:
    """`no_sync` reaches the DistributedDataParallel wrapper inside torch.compile's (an isinstance check missed it)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = build_classifier(TINY_WRN, 10, [0.5] * 3, [0.25] * 3)
        ddp = DistributedDataParallel(model)
        reductions: list[int] = []

        def counted(state, bucket):                         # noqa: ANN001, ANN202 (DDP's hook signature)
            reductions.append(bucket.index())
            return allreduce_hook(state, bucket)
        ddp.register_comm_hook(None, counted)
        compiled = torch.compile(ddp, backend="eager")
        x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
        for accumulation in (1, 4):
            reductions.clear()
            recipe = Recipe("ce", 10, 0.1, 0.9, True, 5e-4, 0.1, None, 0, accumulation_steps=accumulation)
            _step(model, compiled, x, y, recipe, ddp)
            if accumulation == 1:
                once = list(reductions)
        assert reductions == once and once
    finally:
        dist.destroy_process_group()
        torch._dynamo.reset()
