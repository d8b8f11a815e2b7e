"""Atomic writes, validated image arrays, memory-mapped shards and content hashes.

Every stage writes through these helpers so that an interrupted run never leaves a
half-written file under a final output name: data goes to a temporary file in the same
directory and is renamed into place (rename is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io as _io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .errors import UserError

IMAGE_SHAPE = (32, 32, 3)
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A writer killed outright (SIGKILL, a lost node) cannot remove its temporary file; the next
    # write of the same path does, so a killed shard job leaves no partial shard in a DVC-tracked folder.
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); give it the mode a plain open() would, so that
    # outputs stay readable to the group sharing a DVC cache or a cluster file system.
    os.chmod(tmp_path, 0o666 & ~_UMASK)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, final)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise UserError(f"{final}: could not write ({exc.strerror or exc})") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Uncompressed npz, so that readers can memory-map its members (see `open_npz`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def open_npz(path: str | os.PathLike, mmap: bool = True) -> dict[str, np.ndarray]:
    """Open every member of an uncompressed npz as a read-only memory map.

    np.load cannot memory-map inside a zip archive; an uncompressed member is a plain
    .npy file at a known offset, so we map it directly. Compressed members (a user's own
    `np.savez_compressed` file) are read into memory instead.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                if mmap and info.compress_type == zipfile.ZIP_STORED:
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                    name_len = int.from_bytes(local[26:28], "little")
                    extra_len = int.from_bytes(local[28:30], "little")
                    raw.seek(info.header_offset + 30 + name_len + extra_len)
                    version = np.lib.format.read_magic(raw)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, fortran, dtype = read_header(raw)
                    if dtype.hasobject:
                        raise UserError(f"{path}: member {name!r} holds Python objects; expected numeric arrays")
                    arrays[name] = np.memmap(raw.name, dtype=dtype, mode="r", offset=raw.tell(),
                                             shape=shape, order="F" if fortran else "C")
                else:
                    with archive.open(info) as member:
                        arrays[name] = np.lib.format.read_array(_io.BytesIO(member.read()), allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise UserError(f"{path}: not a readable npz file ({exc}); delete it and rerun the stage that makes it") from exc
    return arrays


def validate_images(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], num_classes: int | None = None,
                    allow_unlabelled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Check the on-disk image contract: uint8 NHWC 32x32x3 `image`, int64 `label` of the same length."""
    for key in ("image", "label"):
        if key not in arrays:
            raise UserError(f"{path}: missing array {key!r}; expected uint8 'image' (N,32,32,3) and int64 'label' (N,)")
    images, labels = arrays["image"], arrays["label"]
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise UserError(f"{path}: 'image' is {images.dtype} {tuple(images.shape)}; expected uint8 (N, 32, 32, 3)")
    if labels.dtype != np.int64 or labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"{path}: 'label' is {labels.dtype} {tuple(labels.shape)}; expected int64 ({len(images)},)")
    if num_classes is not None and len(labels):
        low = -1 if allow_unlabelled else 0
        bad = (labels < low) | (labels >= num_classes)
        if bad.any():
            raise UserError(f"{path}: label {int(labels[bad][0])} outside the class range [{low}, {num_classes - 1}]")
    return images, labels


def load_images(path: str | os.PathLike, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load and validate an image npz; arrays stay memory-mapped."""
    return validate_images(path, open_npz(path), num_classes)


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def md5(path: str | os.PathLike) -> str:
    """What DVC records for a file output: the md5 of its bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def require_every_class(path: str | os.PathLike, labels: np.ndarray, num_classes: int, needed_by: str) -> None:
    """A class-conditional generator or a per-class fit cannot model a class it never saw."""
    missing = np.flatnonzero(np.bincount(np.asarray(labels), minlength=num_classes) == 0)
    if missing.size:
        raise UserError(f"{path}: class {int(missing[0])} has no images ({missing.size} of {num_classes} classes "
                        f"missing); {needed_by} needs at least one image of every class")
