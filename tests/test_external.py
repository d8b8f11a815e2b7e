"""Importing the authors' released generated sets: round trip, refusal before any write, resumption, flat memory."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from genrobust import io, shards
from genrobust.data import external
from genrobust.data.external import import_external, validate_external
from genrobust.errors import UserError
from genrobust.provenance import read_meta

SAVERS = {"stored": np.savez, "deflated": np.savez_compressed}


def _release(directory: Path, sizes: list[int], savers: list[str], label_dtypes: list[type] | None = None,
             seed: int = 0) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Files in the released format (random images, so a misplaced row shows), and all their rows in order."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (sum(sizes), 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, sum(sizes))
    paths, start = [], 0
    for index, (size, saver) in enumerate(zip(sizes, savers)):
        dtype = (label_dtypes or [np.int64] * len(sizes))[index]
        paths.append(directory / f"part{index}.npz")
        SAVERS[saver](paths[-1], image=images[start:start + size], label=labels[start:start + size].astype(dtype))
        start += size
    return paths, images, labels


def _shard_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("shard-*")) if directory.exists() else []


@pytest.mark.parametrize("labels", ["given", "classifier"])
def test_round_trip_across_files_with_straddling_shards(tmp_path, monkeypatch, labels) -> None:
    """18 of 21 images in shards of 5: shard 1 spans files 0 and 1, shard 3 files 1 and 2 (read 3 rows at a time)."""
    monkeypatch.setattr(external, "CHUNK_BYTES", 3 * 32 * 32 * 3)
    paths, images, given = _release(tmp_path, [7, 9, 5], ["stored", "deflated", "stored"], [np.int64, np.uint8, np.int32])
    assert validate_external(paths, 10) == [7, 9, 5]
    import_external(paths, 18, 5, 10, labels, tmp_path / "out")
    shard_set = shards.ShardSet.open(tmp_path / "out", verify=True)
    assert len(shard_set) == 18 and [entry["count"] for entry in shard_set.manifest["shards"]] == [5, 5, 5, 3]
    got_images, got_labels = shard_set.take(np.arange(18))
    np.testing.assert_array_equal(got_images, images[:18])
    np.testing.assert_array_equal(got_labels, given[:18] if labels == "given" else np.full(18, -1))
    manifest = shard_set.manifest
    assert manifest["labels"] == labels and manifest["generator"] == "external" and manifest["num_classes"] == 10
    assert [(s["file"], s["bytes"]) for s in manifest["sources"]] == [(p.name, p.stat().st_size) for p in paths]
    assert read_meta(io.open_npz(tmp_path / "out" / shards.shard_name(3)))["sources"] == manifest["sources"]


def _bad_file(case: str, save: Callable[..., None], path: Path) -> None:
    image, label = np.zeros((4, 32, 32, 3), np.uint8), np.arange(4)
    arrays = {"no_label": {"image": image}, "no_image": {"label": label},
              "float_image": {"image": image.astype(np.float32), "label": label},
              "nchw": {"image": image.transpose(0, 3, 1, 2).copy(), "label": label},
              "float_label": {"image": image, "label": label.astype(np.float64)},
              "short_label": {"image": image, "label": label[:3]},
              "fortran": {"image": np.asfortranarray(image), "label": label},
              "label_high": {"image": image, "label": np.array([0, 1, 2, 10])},
              "label_negative": {"image": image, "label": np.array([0, 1, 2, -1])}}
    if case == "not_zip":
        path.write_bytes(b"<html>404 Not Found</html>")
    elif case == "truncated":
        save(path, image=image, label=label)
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "short_member":                                         # a valid zip, a label member cut short
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED if save is np.savez else zipfile.ZIP_DEFLATED) as archive:
            for key, array, cut in (("image", image, None), ("label", label, -8)):
                buffer = BytesIO()
                np.save(buffer, array)
                archive.writestr(f"{key}.npy", buffer.getvalue()[:cut])
    elif case != "missing":
        save(path, **arrays[case])


BAD = {"missing": "file not found", "not_zip": "not a readable npz file", "truncated": "not a readable npz file",
       "no_label": "missing array 'label'", "no_image": "missing array 'image'", "float_image": "expected uint8",
       "nchw": "expected (N, 32, 32, 3)", "float_label": "expected integer class labels",
       "short_label": "expected (4,), one per image", "fortran": "Fortran order; expected C order",
       "label_high": "label 10 outside the class range [0, 9]",
       "label_negative": "label -1 outside the class range [0, 9]", "short_member": "the file is damaged"}


@pytest.mark.parametrize("saver", SAVERS)
@pytest.mark.parametrize("case", BAD)
def test_bad_file_is_named_before_any_shard_is_written(tmp_path, monkeypatch, case, saver) -> None:
    """A good first file could fill shard 0 on its own; the bad second one must stop the import first."""
    monkeypatch.setattr(external, "CHUNK_BYTES", 2 * 8)   # the bad label is in the last chunk of the label pass
    (good,), _, _ = _release(tmp_path, [6], [saver])
    bad = tmp_path / "bad.npz"
    _bad_file(case, SAVERS[saver], bad)
    with pytest.raises(UserError, match=f"bad.npz: .*{re.escape(BAD[case])}"):
        import_external([good, bad], 10, 4, 10, "given", tmp_path / "out")
    assert _shard_files(tmp_path / "out") == [] and not (tmp_path / "out" / shards.MANIFEST).exists()


def test_too_few_images_names_the_files_and_their_total(tmp_path) -> None:
    paths, _, _ = _release(tmp_path, [7, 9], ["stored", "deflated"])
    with pytest.raises(UserError, match=r"part0.npz, .*part1.npz: hold 16 images in all; 20 were asked for"):
        import_external(paths, 20, 5, 10, "given", tmp_path / "out")
    assert _shard_files(tmp_path / "out") == []


def _arrays(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    arrays = io.open_npz(path)
    meta = read_meta(arrays)
    meta.pop("seconds")
    return np.array(arrays["image"]), np.array(arrays["label"]), meta


def test_resumption_keeps_finished_shards_and_redoes_missing_ones_identically(tmp_path) -> None:
    paths, _, _ = _release(tmp_path, [7, 9, 5], ["stored", "deflated", "stored"])
    out = tmp_path / "out"
    import_external(paths, 18, 5, 10, "given", out)
    kept = (out / shards.shard_name(0)).stat()
    before = [_arrays(out / shards.shard_name(k)) for k in range(4)]
    (out / shards.shard_name(1)).unlink()                               # a job that never ran
    (out / shards.shard_name(3)).write_bytes(b"half a shard")           # or was killed outside atomic_path
    import_external(paths, 18, 5, 10, "given", out)
    again = (out / shards.shard_name(0)).stat()
    assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    for k in (1, 3):
        image, label, meta = _arrays(out / shards.shard_name(k))
        np.testing.assert_array_equal(image, before[k][0])
        np.testing.assert_array_equal(label, before[k][1])
        assert meta == before[k][2]
    assert len(shards.ShardSet.open(out, verify=True)) == 18


def test_a_changed_identity_redoes_shards_and_drops_surplus_ones(tmp_path) -> None:
    paths, images, _ = _release(tmp_path, [7, 9], ["stored", "deflated"])
    out = tmp_path / "out"
    import_external(paths, 15, 5, 10, "given", out)
    first = (out / shards.shard_name(0)).stat().st_ino
    import_external(paths, 15, 5, 10, "classifier", out)                 # another labels mode
    assert (out / shards.shard_name(0)).stat().st_ino != first
    assert (shards.ShardSet.open(out).take(np.arange(15))[1] == -1).all()
    changed, _, _ = _release(tmp_path, [7], ["stored"], seed=1)          # same name and size, other images
    import_external(paths, 15, 5, 10, "classifier", out)
    np.testing.assert_array_equal(shards.ShardSet.open(out, verify=True).take(np.arange(7))[0],
                                  np.load(changed[0])["image"])
    import_external(paths, 10, 5, 10, "classifier", out)                 # fewer images: shard 2 goes
    assert _shard_files(out) == [shards.shard_name(0), shards.shard_name(1)]


IMPORTER = """
import sys
from pathlib import Path
import numpy as np
from genrobust.data.external import import_external

def status(key: str) -> int:
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(key + ":"))

*paths, out, mode, count, shard = sys.argv[1:]
paths, out = [Path(p) for p in paths], Path(out)
import_external(paths, 16, 8, 10, "given", out / "warm")   # first-use allocations (imports, caches) are not growth
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")                                         # the peak (VmHWM) starts again from the current size
base = status("VmRSS")
if mode == "hold":
    kept = [np.load(path)["image"] for path in paths]
else:
    import_external(paths, int(count), int(shard), 10, "given", out / "set")
print(status("VmHWM") - base)
"""


def test_importing_a_set_many_shards_large_keeps_memory_flat(tmp_path) -> None:
    """12 shards of 6 MB from a stored and a deflated file raise the importer's peak resident memory by
    well under half the set: the shard being written, np.savez's copy of it and a read chunk, not the set
    (about 20 MB of 72 MB here, the same for 4 shards as for 12). The peak is the kernel's high-water mark,
    reset just before the import, so no short-lived copy escapes; the control loads the files whole."""
    per_shard, count = 2048, 12
    total = per_shard * count
    paths, _, _ = _release(tmp_path, [15000, total - 15000], ["stored", "deflated"])
    total_bytes = total * 32 * 32 * 3

    def growth(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", IMPORTER, *map(str, paths), str(tmp_path / mode), mode, str(total),
                               str(per_shard)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return int(done.stdout.splitlines()[-1])

    streamed = growth("stream")
    assert len(shards.ShardSet.open(tmp_path / "stream" / "set")) == total
    assert streamed < total_bytes / 2, f"import grew by {streamed / 2**20:.1f} MiB of {total_bytes / 2**20:.1f} MiB"
    assert growth("hold") > 0.9 * total_bytes
