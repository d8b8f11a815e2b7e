"""Sharded storage of generated images: the layout, the pure-function seeding, and a reader.

A generated set of N images lives in `shards/shard-00000.npz` ... plus `shards/manifest.json`.
Shard k holds images [k*S, min((k+1)*S, N)); image i is of class i mod K (class-balanced);
its random numbers come from a seed derived from (base seed, k) alone, so any shard can be
made on any machine, in any order, and is identical every time on the same device and dtype.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from . import io
from .errors import UserError
from .provenance import StageClock, meta_array, read_meta

MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npz"


def filtered(sample: Mapping[str, Any], generator: str) -> bool:
    """Whether a generated set is oversampled and filtered by pseudo_label.

    Wang et al. do it only to build a diffusion model's smaller sets (their 1M: the top 20% of
    5M); their 20M and 50M sets, like Gowal et al.'s DDPM samples and Gaussian baseline, are used as generated.
    """
    return generator == "edm" and sample["num_images"] <= sample["filter_up_to"]


def oversample(sample: Mapping[str, Any], generator: str) -> int:
    return sample["oversample"] if filtered(sample, generator) else 1


def generated_count(sample: Mapping[str, Any], generator: str) -> int:
    """Images a sampling stage makes, of which pseudo_label keeps a fraction when they were oversampled.

    The Snakemake rules count shards with this too, so the pipelines and the stages agree.
    """
    return sample["num_images"] * oversample(sample, generator)


def shard_count(sample: Mapping[str, Any], generator: str) -> int:
    return len(shard_bounds(generated_count(sample, generator), sample["shard_size"]))


def shard_bounds(num_images: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, num_images)) for start in range(0, num_images, shard_size)]


def shard_labels(start: int, stop: int, num_classes: int) -> np.ndarray:
    return np.arange(start, stop, dtype=np.int64) % num_classes


def shard_seed(base_seed: int, index: int) -> int:
    """A well-mixed 63-bit seed from (base seed, shard index), independent of everything else."""
    return int(np.random.SeedSequence([base_seed, index]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def write_shard(directory: str | os.PathLike, index: int, images: np.ndarray, labels: np.ndarray,
                meta: dict[str, Any]) -> Path:
    path = Path(directory) / shard_name(index)
    io.validate_images(path, {"image": images, "label": labels})
    io.save_npz(path, image=images, label=labels, meta=meta_array(meta))
    return path


def shard_is_complete(path: Path, expected: int, identity: Mapping[str, Any] | None = None) -> bool:
    """A shard counts as done only if it opens, holds the expected number of images and, given an
    identity (model hash, seed, ...), was made with exactly that: a stale run's shard is redone."""
    if not path.is_file():
        return False
    try:
        arrays = io.open_npz(path)
        images, _ = io.validate_images(path, arrays)
    except UserError:
        return False
    if len(images) != expected:
        return False
    meta = read_meta(arrays)
    return all(meta.get(key) == value for key, value in (identity or {}).items())


def write_manifest(directory: str | os.PathLike, bounds: Sequence[tuple[int, int]], num_classes: int,
                   clock: StageClock, **fields: Any) -> dict[str, Any]:
    """Hash every shard and record the set; written last, so its presence means the set is whole.

    Shards may have been made by many jobs, so the stage's wall time is the sum of the
    `seconds` each shard recorded, plus this gather step.
    """
    directory = Path(directory)
    shards, seconds = [], 0.0
    for index, (start, stop) in enumerate(bounds):
        path = directory / shard_name(index)
        if not shard_is_complete(path, stop - start):
            raise UserError(f"{path}: missing or incomplete shard ({stop - start} images expected)")
        shards.append({"file": path.name, "start": start, "count": stop - start, "sha256": io.sha256(path)})
        seconds += read_meta(io.open_npz(path)).get("seconds", 0.0)
    meta = clock.meta()
    meta["stage_wall_time_s"][clock.stage] = round(meta["stage_wall_time_s"][clock.stage] + seconds, 3)
    manifest = {"count": bounds[-1][1] if bounds else 0, "num_classes": num_classes, "shards": shards, **fields,
                "meta": meta}
    io.write_json(directory / MANIFEST, manifest)
    return manifest


def fill(out_dir: Path, num_images: int, shard_size: int, num_classes: int, seed: int, only: list[int] | None,
         identity: Mapping[str, Any], make: Callable[[int, np.ndarray, int], np.ndarray], clock: StageClock,
         conditional: bool = True) -> None:
    """Make every shard of `num_images` images that is not done (all, or those in `only`), then, for all, the manifest.

    `make(start, labels, shard_seed)` returns the uint8 NHWC images start, start + 1, ... of the given labels; it is
    the only thing a generator supplies, so every generator gets the same layout, seeding, resume and manifest.
    An unconditional generator's (`conditional` false) images are labelled -1: pseudo_label gives them a class.
    """
    bounds = shard_bounds(num_images, shard_size)
    if only is not None and (bad := [k for k in only if not 0 <= k < len(bounds)]):
        raise UserError(f"shard {bad[0]} does not exist: sample.num_images x sample.oversample = {num_images} "
                        f"images in shards of sample.shard_size = {shard_size} are shards 0 to {len(bounds) - 1}")
    wanted = range(len(bounds)) if only is None else sorted(set(only))
    todo = [k for k in wanted if not shard_is_complete(out_dir / shard_name(k), bounds[k][1] - bounds[k][0], identity)]
    if todo:
        # The manifest vouches for every shard's hash; it stops being true once one is rewritten.
        (out_dir / MANIFEST).unlink(missing_ok=True)
    for k in todo:
        tick = time.perf_counter()
        start, stop = bounds[k]
        labels = shard_labels(start, stop, num_classes) if conditional else np.full(stop - start, -1, np.int64)
        images = make(start, labels, shard_seed(seed, k))
        seconds = round(time.perf_counter() - tick, 3)
        write_shard(out_dir, k, images, labels, {**identity, "shard": k, "start": start, "stop": stop,
                                                 "seconds": seconds})
        print(f"{clock.stage}: shard {k} ({stop - start} images) in {seconds:.1f} s", flush=True)
    if only is None:
        write_manifest(out_dir, bounds, num_classes, clock, **identity)


@dataclass
class ShardSet:
    """Memory-mapped view of a shard directory: indexing reads only the images asked for."""

    directory: Path
    manifest: dict[str, Any]
    images: list[np.ndarray]
    labels: list[np.ndarray]
    offsets: np.ndarray

    @classmethod
    def open(cls, directory: str | os.PathLike, verify: bool = False) -> "ShardSet":
        directory = Path(directory)
        manifest = io.read_json(directory / MANIFEST)
        images, labels = [], []
        for entry in manifest["shards"]:
            path = directory / entry["file"]
            if verify and io.sha256(path) != entry["sha256"]:
                raise UserError(f"{path}: content hash differs from {directory / MANIFEST}; the shard is corrupt")
            shard_images, shard_labels = io.validate_images(path, io.open_npz(path), manifest["num_classes"],
                                                            allow_unlabelled=True)
            if len(shard_images) != entry["count"]:
                raise UserError(f"{path}: holds {len(shard_images)} images, {directory / MANIFEST} says {entry['count']}")
            images.append(shard_images)
            labels.append(shard_labels)
        offsets = np.cumsum([0] + [len(x) for x in images])
        if offsets[-1] != manifest["count"]:
            raise UserError(f"{directory / MANIFEST}: count {manifest['count']} disagrees with its shards ({offsets[-1]})")
        return cls(directory, manifest, images, labels, offsets)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels at global indices (any order), touching only those rows of the shards."""
        indices = np.asarray(indices, dtype=np.int64)
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        images = np.empty((len(indices), *io.IMAGE_SHAPE), dtype=np.uint8)
        labels = np.empty(len(indices), dtype=np.int64)
        for shard in np.unique(which):
            mask = which == shard
            local = indices[mask] - self.offsets[shard]
            images[mask] = self.images[shard][local]
            labels[mask] = self.labels[shard][local]
        return images, labels

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield self.take(np.arange(start, min(start + batch_size, len(self))))
