"""Atomic writes, the image contract, memory-mapped shards, the manifest, and the reader's memory use."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from genrobust import io, shards
from genrobust.errors import UserError
from genrobust.provenance import StageClock


def test_failed_write_leaves_no_file_under_the_final_name(tmp_path) -> None:
    target = tmp_path / "out.npz"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_written_files_get_the_usual_permissions(tmp_path) -> None:
    io.write_json(tmp_path / "r.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_open_npz_memory_maps_uncompressed_members(tmp_path) -> None:
    images = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
    io.save_npz(tmp_path / "a.npz", image=images, label=np.array([0, 1]))
    arrays = io.open_npz(tmp_path / "a.npz")
    assert isinstance(arrays["image"], np.memmap)
    np.testing.assert_array_equal(arrays["image"], images)


def test_compressed_npz_from_a_user_is_read_too(tmp_path) -> None:
    np.savez_compressed(tmp_path / "c.npz", image=np.zeros((1, 32, 32, 3), np.uint8), label=np.array([3]))
    images, labels = io.load_images(tmp_path / "c.npz", num_classes=10)
    assert labels.tolist() == [3]


@pytest.mark.parametrize("arrays, message", [
    ({"image": np.zeros((1, 32, 32, 3), np.uint8)}, "missing array 'label'"),
    ({"image": np.zeros((1, 28, 28), np.uint8), "label": np.array([0])}, "expected uint8 (N, 32, 32, 3)"),
    ({"image": np.zeros((1, 32, 32, 3), np.float32), "label": np.array([0])}, "expected uint8"),
    ({"image": np.zeros((2, 32, 32, 3), np.uint8), "label": np.array([0])}, "expected int64 (2,)"),
    ({"image": np.zeros((1, 32, 32, 3), np.uint8), "label": np.array([10])}, "label 10 outside the class range"),
])
def test_bad_image_files_are_named(tmp_path, arrays, message) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match="bad.npz") as error:
        io.load_images(path, num_classes=10)
    assert message in str(error.value)


def test_truncated_npz_is_named(tmp_path) -> None:
    path = tmp_path / "t.npz"
    io.save_npz(path, image=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros(4, np.int64))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="t.npz: not a readable npz file"):
        io.load_images(path)


def _write_set(directory, num_images: int, shard_size: int) -> list[tuple[int, int]]:
    bounds = shards.shard_bounds(num_images, shard_size)
    for index, (start, stop) in enumerate(bounds):
        labels = shards.shard_labels(start, stop, 10)
        images = np.broadcast_to(np.arange(start, stop, dtype=np.int64)[:, None, None, None] % 251,
                                 (stop - start, 32, 32, 3)).astype(np.uint8)
        shards.write_shard(directory, index, images, labels, {"shard": index})
    shards.write_manifest(directory, bounds, 10, StageClock("test"), generator="test")
    return bounds


def test_shard_layout_is_class_balanced_and_seeds_are_per_shard() -> None:
    assert shards.shard_bounds(25, 10) == [(0, 10), (10, 20), (20, 25)]
    labels = np.concatenate([shards.shard_labels(a, b, 10) for a, b in shards.shard_bounds(100, 30)])
    assert np.bincount(labels).tolist() == [10] * 10
    seeds = {shards.shard_seed(0, k) for k in range(100)} | {shards.shard_seed(1, k) for k in range(100)}
    assert len(seeds) == 200 and shards.shard_seed(0, 3) == shards.shard_seed(0, 3)


def test_shard_set_reads_across_shards_in_any_order(tmp_path) -> None:
    _write_set(tmp_path, 25, 10)
    shard_set = shards.ShardSet.open(tmp_path, verify=True)
    assert len(shard_set) == 25
    images, labels = shard_set.take(np.array([24, 0, 13, 9]))
    assert images[:, 0, 0, 0].tolist() == [24, 0, 13, 9] and labels.tolist() == [4, 0, 3, 9]
    assert sum(len(b[0]) for b in shard_set.batches(7)) == 25


def test_corrupt_shard_and_disagreeing_manifest_are_named(tmp_path) -> None:
    _write_set(tmp_path, 20, 10)
    manifest = io.read_json(tmp_path / shards.MANIFEST)
    manifest["count"] = 21
    io.write_json(tmp_path / shards.MANIFEST, manifest)
    with pytest.raises(UserError, match="count 21 disagrees with its shards"):
        shards.ShardSet.open(tmp_path)
    shard = tmp_path / shards.shard_name(1)
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="shard-00001.npz: content hash differs"):
        shards.ShardSet.open(tmp_path, verify=True)


def test_manifest_refuses_a_missing_shard(tmp_path) -> None:
    bounds = _write_set(tmp_path, 20, 10)
    (tmp_path / shards.shard_name(0)).unlink()
    with pytest.raises(UserError, match="shard-00000.npz: missing or incomplete shard"):
        shards.write_manifest(tmp_path, bounds, 10, StageClock("test"))


READER = """
import sys
import numpy as np
from genrobust.shards import ShardSet

def rss_anon() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))

shard_set, hold = ShardSet.open(sys.argv[1], verify=True), sys.argv[2] == "hold"
rng, kept = np.random.default_rng(0), []
shard_set.take(rng.integers(0, len(shard_set), 256))     # first-use allocations are not growth
base = peak = rss_anon()
for _ in range(1 if hold else 3):
    for images, _ in shard_set.batches(256):             # in order, as pseudo_label reads
        kept += [images] if hold else []
        peak = max(peak, rss_anon())
    for _ in range(len(shard_set) // 256):               # at random, as adv_train draws batches
        images, _ = shard_set.take(rng.integers(0, len(shard_set), 256))
        peak = max(peak, rss_anon())
print(peak - base)
"""


def test_reading_a_set_many_shards_large_keeps_memory_bounded(tmp_path) -> None:
    """Three passes over 60 MB of shards (8 of 7.5 MB) grow the reader's anonymous memory by less than a shard.

    RssAnon, not VmRSS: the shards are memory-mapped, so the pages they touch count as file-backed
    resident memory, which the kernel drops under pressure; a leak (a copy kept, a cache that grows)
    is anonymous memory. The control keeps every batch of one pass and must show the whole set.
    """
    per_shard, count = 2560, 8
    for index in range(count):
        start = index * per_shard
        images = np.full((per_shard, 32, 32, 3), index * 30, np.uint8)
        shards.write_shard(tmp_path, index, images, shards.shard_labels(start, start + per_shard, 10), {})
    shards.write_manifest(tmp_path, shards.shard_bounds(per_shard * count, per_shard), 10, StageClock("test"))
    shard_bytes, total = per_shard * 32 * 32 * 3, per_shard * count * 32 * 32 * 3

    def growth(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", READER, str(tmp_path), mode], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return int(done.stdout)

    assert growth("stream") < shard_bytes / 2
    assert growth("hold") > 0.9 * total


def test_fill_removes_what_a_killed_writer_left_and_counts_oversampled_images(tmp_path) -> None:
    """SIGKILL skips atomic_path's cleanup; the rewrite of the same file removes them (io.atomic_path),
    so DVC never caches them with the shard directory."""
    leftovers = [tmp_path / ".shard-00001.npz.k1ll3d.tmp", tmp_path / ".manifest.json.k1ll3d.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    sample = {"num_images": 20, "oversample": 3, "filter_up_to": 20, "shard_size": 25}
    made = []

    def make(start: int, labels: np.ndarray, seed: int) -> np.ndarray:
        made.append(len(labels))
        return np.zeros((len(labels), 32, 32, 3), np.uint8)

    shards.fill(tmp_path, shards.generated_count(sample, "edm"), sample["shard_size"], 10, 0, None, {}, make, StageClock("t"))
    assert made == [25, 25, 10] and shards.shard_count(sample, "edm") == 3
    assert not any(path.exists() for path in leftovers)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == [shards.MANIFEST] + [shards.shard_name(k) for k in range(3)]
