"""Import the authors' released generated sets (Wang et al. 2023, DM-Improves-AT) as our shards.

Their files are npz archives holding `image` (uint8, N x 32 x 32 x 3) and `label` (N class labels),
up to ~30 GB each. np.load reads a whole member into memory, so each member's .npy header is parsed
by hand and its rows are read as a stream, one shard's worth at a time. Every file is checked before
anything is written, so a bad or truncated download never leaves half a set behind.
"""

from __future__ import annotations

import contextlib
import re
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

import numpy as np

from .. import io
from ..errors import UserError
from ..provenance import StageClock
from ..shards import MANIFEST, shard_bounds, shard_is_complete, shard_name, write_manifest, write_shard

LABEL_MODES = ("given", "classifier")
CHUNK_BYTES = 1 << 20   # one read: small beside a shard, large enough for full disk throughput (read-ahead)
EXPECTED = "expected the released format: uint8 'image' (N, 32, 32, 3) and integer 'label' (N,)"
_READ_ERRORS = (zipfile.BadZipFile, ValueError, EOFError, OSError)


class _Member:
    """One .npy member of an open archive, read forward a chunk of rows at a time.

    A stored (np.savez) member is read from the file itself, so skipping rows, as a resumed
    import does past its finished shards, is a seek; a deflated one (np.savez_compressed) can
    only be decompressed through.
    """

    def __init__(self, path: Path, archive: zipfile.ZipFile, key: str, stack: contextlib.ExitStack) -> None:
        try:
            self.info = archive.getinfo(f"{key}.npy")
        except KeyError:
            raise UserError(f"{path}: missing array {key!r}; {EXPECTED}") from None
        self.stream: BinaryIO = stack.enter_context(archive.open(self.info))
        version = np.lib.format.read_magic(self.stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        self.shape, self.fortran, self.dtype = read_header(self.stream)
        self.header_bytes = self.start = self.stream.tell()
        if self.info.compress_type == zipfile.ZIP_STORED:
            raw = stack.enter_context(open(path, "rb"))
            raw.seek(self.info.header_offset)
            local = raw.read(30)
            names = int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            self.start += self.info.header_offset + 30 + names
            raw.seek(self.start)
            self.stream = raw
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.row = 0

    def data_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def rows(self, start: int, count: int) -> Iterator[np.ndarray]:
        """Rows [start, start + count) in chunks of about CHUNK_BYTES."""
        if start != self.row:
            self.stream.seek(self.start + start * self.row_bytes)
        per_chunk = max(1, CHUNK_BYTES // max(self.row_bytes, 1))
        for first in range(start, start + count, per_chunk):
            rows = min(per_chunk, start + count - first)
            data = self.stream.read(rows * self.row_bytes)
            if len(data) != rows * self.row_bytes:
                raise EOFError(f"member {self.info.filename} ends early")
            self.row = first + rows
            yield np.frombuffer(data, self.dtype).reshape(rows, *self.shape[1:])


def _check(path: Path, num_classes: int) -> int:
    """The file's image count, or a UserError naming it and what it should be."""
    if not path.is_file():
        raise UserError(f"{path}: file not found; {EXPECTED}")
    try:
        with zipfile.ZipFile(path) as archive, contextlib.ExitStack() as stack:
            image, label = (_Member(path, archive, key, stack) for key in ("image", "label"))
            if image.dtype != np.uint8:
                raise UserError(f"{path}: 'image' is {image.dtype}; expected uint8 pixels (0-255)")
            if len(image.shape) != 4 or tuple(image.shape[1:]) != io.IMAGE_SHAPE:
                raise UserError(f"{path}: 'image' has shape {image.shape}; expected (N, 32, 32, 3), channels last")
            if image.fortran:
                raise UserError(f"{path}: 'image' is stored in Fortran order; expected C order (one image per row)")
            count = image.shape[0]
            if label.dtype.kind not in "iu":
                raise UserError(f"{path}: 'label' is {label.dtype}; expected integer class labels")
            if tuple(label.shape) != (count,):
                raise UserError(f"{path}: 'label' has shape {label.shape}; expected ({count},), one per image")
            for member in (image, label):
                if member.info.file_size != member.header_bytes + member.data_bytes():
                    raise UserError(f"{path}: member {member.info.filename} holds {member.info.file_size} bytes, "
                                    f"not what its header's {member.dtype} {member.shape} needs; the file is damaged")
            for labels in label.rows(0, count):
                bad = (labels < 0) | (labels >= num_classes)
                if bad.any():
                    raise UserError(f"{path}: label {int(labels[bad][0])} outside the class range "
                                    f"[0, {num_classes - 1}]; is this a set of another dataset?")
    except _READ_ERRORS as exc:
        raise UserError(f"{path}: not a readable npz file ({exc}); {EXPECTED}") from exc
    return count


def validate_external(paths: Sequence[Path], num_classes: int) -> list[int]:
    """Check every file (header, dtypes, shapes, a chunked pass over the labels); their image counts."""
    return [_check(Path(path), num_classes) for path in paths]


def _fingerprint(path: Path) -> dict[str, Any]:
    """Name, size and the members' CRC-32s from the zip directory: cheap, and unlike an mtime it
    survives a copy (dvc pull, rsync) while any rewrite of the data changes it."""
    with zipfile.ZipFile(path) as archive:
        crcs = {f"{key}_crc32": archive.getinfo(f"{key}.npy").CRC for key in ("image", "label")}
    return {"file": path.name, "bytes": path.stat().st_size, **crcs}


def import_external(paths: Sequence[Path], num_images: int, shard_size: int, num_classes: int, labels: str,
                    out_dir: Path, clock: StageClock | None = None) -> None:
    """The first `num_images` images of `paths` (in order) become shards of `shard_size` plus the manifest.

    labels "given" keeps the files' labels; "classifier" stores -1 (unconditional), so pseudo_label
    labels them with the standard classifier. Shards already complete with the same identity are kept.
    """
    if labels not in LABEL_MODES:
        raise UserError(f"labels = {labels!r}; expected one of {', '.join(LABEL_MODES)}")
    if num_images < 1 or shard_size < 1:
        raise UserError(f"num_images = {num_images}, shard_size = {shard_size}; expected both >= 1")
    paths, out_dir = [Path(path) for path in paths], Path(out_dir)
    counts = validate_external(paths, num_classes)
    if sum(counts) < num_images:
        raise UserError(f"{', '.join(map(str, paths))}: hold {sum(counts)} images in all; {num_images} were asked for")
    clock = clock or StageClock("import_external")
    identity = {"generator": "external", "sources": [_fingerprint(path) for path in paths], "num_images": num_images,
                "shard_size": shard_size, "labels": labels}
    bounds = shard_bounds(num_images, shard_size)
    todo = [k for k, (a, b) in enumerate(bounds) if not shard_is_complete(out_dir / shard_name(k), b - a, identity)]
    if todo:
        (out_dir / MANIFEST).unlink(missing_ok=True)   # it vouches for hashes that are about to change
    # A former import of more images left shards past the end; DVC would track them with the folder.
    for stale in out_dir.glob("shard-*.npz"):
        if (match := re.fullmatch(r"shard-(\d+)\.npz", stale.name)) and int(match[1]) >= len(bounds):
            stale.unlink()
    offsets = np.cumsum([0, *counts])
    keys = ("image", "label") if labels == "given" else ("image",)
    with contextlib.ExitStack() as stack:
        members: dict[tuple[int, str], _Member] = {}
        for k in todo:
            tick, (a, b) = time.perf_counter(), bounds[k]
            out = {"image": np.empty((b - a, *io.IMAGE_SHAPE), np.uint8), "label": np.full(b - a, -1, np.int64)}
            for f, path in enumerate(paths):
                lo, hi = max(a, offsets[f]), min(b, offsets[f + 1])
                if lo >= hi:
                    continue
                try:
                    for key in keys:
                        if (f, key) not in members:
                            archive = stack.enter_context(zipfile.ZipFile(path))
                            members[f, key] = _Member(path, archive, key, stack)
                        at = lo - a
                        for rows in members[f, key].rows(int(lo - offsets[f]), int(hi - lo)):
                            out[key][at:at + len(rows)] = rows
                            at += len(rows)
                except _READ_ERRORS as exc:
                    raise UserError(f"{path}: could not be read after it was checked ({exc}); "
                                    "was it changed during the import?") from exc
            seconds = round(time.perf_counter() - tick, 3)
            write_shard(out_dir, k, out["image"], out["label"], {**identity, "shard": k, "start": a, "stop": b,
                                                                  "seconds": seconds})
            print(f"{clock.stage}: shard {k} ({b - a} images) in {seconds:.1f} s", flush=True)
    write_manifest(out_dir, bounds, num_classes, clock, **identity)


def import_settings(settings: dict[str, Any], out_dir: Path) -> None:
    """The `import_external` stage: `datasets.<name>.external` (paths relative to the project) into shards,
    `sample.num_images` of them in shards of `sample.shard_size`, as a sampling stage would have made."""
    dataset = settings["dataset"]
    if "external" not in dataset:
        raise UserError(f"params.yaml: datasets.{dataset['name']}.external is not set; it names the released npz "
                        "files to import (paths: [...], labels: given | classifier)")
    external, sample = dataset["external"], settings["sample"]
    import_external([Path(p) for p in external["paths"]], sample["num_images"], sample["shard_size"],
                    dataset["num_classes"], external["labels"], Path(out_dir))
    print(f"import_external: {sample['num_images']} images from {len(external['paths'])} file(s), labels "
          f"{external['labels']}; wrote {out_dir}")
