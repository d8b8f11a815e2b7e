"""prepare_data: every source read through its real loader from files in the real on-disk formats.

The archives are small but built exactly as the official ones are (CIFAR's Python-2 pickles
in a .tar.gz, SVHN's MATLAB files, Fashion-MNIST's gzipped idx files), so the tests exercise
torchvision's own reading code and our staging of those files, not a stand-in.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, ClassVar
from urllib.error import URLError

import numpy as np
import pytest
import scipy.io
from torchvision.datasets import cifar as tv_cifar
from torchvision.datasets import svhn as tv_svhn

from genrobust import config, io
from genrobust.data import sources
from genrobust.data.prepare import prepare_data
from genrobust.data.transform import to_rgb32
from genrobust.errors import UserError
from genrobust.provenance import read_meta

REPO = Path(__file__).resolve().parents[1]
FASHION_SPLITS = {"train": 60000, "t10k": 10000}


# --- writers of the official formats ------------------------------------------------------

def _save_py2_str(pickler: Any, obj: bytes) -> None:
    """Write bytes as Python 2 wrote its str (BINSTRING), as the official CIFAR pickles do.

    Read back with encoding='bytes' (the CIFAR web page's recipe) the keys are b'data',
    with encoding='latin1' (torchvision) 'data': a Python 3 pickle of either kind would
    only satisfy one of the two readers.
    """
    if len(obj) < 256:
        pickler.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
    else:
        pickler.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
    pickler.memoize(obj)


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]  # the pure-Python pickler has a dispatch table
    dispatch: ClassVar[dict[type, Callable[..., None]]] = {
        **pickle._Pickler.dispatch, bytes: _save_py2_str}  # type: ignore[attr-defined]


def _py2_pickle(obj: Any) -> bytes:
    buffer = BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _rows(images: np.ndarray) -> np.ndarray:
    """CIFAR's row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _write_tar(path: Path, folder: str, members: dict[str, bytes]) -> Path:
    staging = path.parent / f"{path.name}.src"
    (staging / folder).mkdir(parents=True)
    for name, data in members.items():
        (staging / folder / name).write_bytes(data)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(staging / folder, arcname=folder)
    return path


def _random_split(rng: np.random.Generator, count: int, num_classes: int) -> tuple[np.ndarray, list[int]]:
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    return images, [int(label) for label in np.arange(count) % num_classes]


def _cifar10_archive(tmp_path: Path, rng: np.random.Generator
                     ) -> tuple[Path, np.ndarray, list[int], np.ndarray, list[int]]:
    train, train_labels = _random_split(rng, 50, 10)
    test, test_labels = _random_split(rng, 10, 10)
    test[0] = 0
    test[0, 1, 2] = (200, 100, 50)  # one known pixel: row 1, column 2, red/green/blue
    members = {f"data_batch_{k + 1}": _py2_pickle({
        b"batch_label": f"training batch {k + 1} of 5".encode(), b"labels": train_labels[10 * k:10 * (k + 1)],
        b"data": _rows(train[10 * k:10 * (k + 1)]), b"filenames": [b"x.png"] * 10}) for k in range(5)}
    members["test_batch"] = _py2_pickle({b"batch_label": b"testing batch 1 of 1", b"labels": test_labels,
                                         b"data": _rows(test), b"filenames": [b"x.png"] * 10})
    members["batches.meta"] = _py2_pickle({b"label_names": [f"class{k}".encode() for k in range(10)],
                                           b"num_cases_per_batch": 10, b"num_vis": 3072})
    archive = _write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    return archive, train, train_labels, test, test_labels


def _idx(array: np.ndarray) -> bytes:
    """The idx format: zero, zero, type 0x08 (unsigned byte), rank; big-endian sizes; the bytes."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture
def any_checksum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let torchvision accept files made here, whose md5 cannot match the official ones it pins.

    Only the md5 comparison is replaced (a file must still exist); every line that reads
    the data stays torchvision's own, and production code keeps the checksums. Patching
    the module-level `check_integrity` rather than `CIFAR10._check_integrity` covers
    CIFAR's separate check of `batches.meta` too.
    """
    def exists(fpath: str | os.PathLike, md5: str | None = None) -> bool:
        return os.path.isfile(fpath)

    monkeypatch.setattr(tv_cifar, "check_integrity", exists)
    monkeypatch.setattr(tv_svhn, "check_integrity", exists)


# --- torchvision sources ------------------------------------------------------------------

def test_cifar10_archive_round_trip(tmp_path: Path, any_checksum: None) -> None:
    archive, train, train_labels, test, test_labels = _cifar10_archive(tmp_path, np.random.default_rng(0))
    root = tmp_path / "raw"
    train_x, train_y, test_x, test_y = sources.cifar10(root, archive)
    np.testing.assert_array_equal(train_x, train)
    np.testing.assert_array_equal(test_x, test)
    assert test_x[0, 1, 2].tolist() == [200, 100, 50] and int(test_x[0].astype(int).sum()) == 350
    assert train_y.dtype == np.int64 and train_y.tolist() == train_labels and test_y.tolist() == test_labels
    archive.unlink()  # what was unpacked into root is enough from now on
    np.testing.assert_array_equal(sources.cifar10(root, None)[0], train)


def test_cifar100_archive_fine_labels(tmp_path: Path, any_checksum: None) -> None:
    rng = np.random.default_rng(1)
    train, train_labels = _random_split(rng, 200, 100)
    test, test_labels = _random_split(rng, 100, 100)
    def batch(images: np.ndarray, labels: list[int]) -> bytes:
        return _py2_pickle({b"filenames": [b"x.png"] * len(labels), b"batch_label": b"b", b"fine_labels": labels,
                            b"coarse_labels": [label // 5 for label in labels], b"data": _rows(images)})
    archive = _write_tar(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", {
        "train": batch(train, train_labels), "test": batch(test, test_labels),
        "meta": _py2_pickle({b"fine_label_names": [f"f{k}".encode() for k in range(100)],
                             b"coarse_label_names": [f"c{k}".encode() for k in range(20)]})})
    entry = {"name": "cifar100", "source": "torchvision", "root": str(tmp_path / "raw"), "archive": str(archive),
             "num_classes": 100}
    train_x, train_y, test_x, test_y = sources.load(entry, seed=0)
    np.testing.assert_array_equal(train_x, train)
    assert train_y.tolist() == train_labels and test_y.tolist() == test_labels


def test_svhn_folder_maps_ten_to_zero(tmp_path: Path, any_checksum: None) -> None:
    rng = np.random.default_rng(2)
    folder = tmp_path / "svhn-files"
    folder.mkdir()
    expected = {}
    for split, count in (("train", 20), ("test", 10)):
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        digits = np.arange(count) % 10
        mat_labels = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)  # SVHN writes 0 as 10
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": mat_labels})
        expected[split] = (images, digits)
    train_x, train_y, test_x, test_y = sources.svhn(tmp_path / "raw", folder)
    np.testing.assert_array_equal(train_x, expected["train"][0])
    np.testing.assert_array_equal(test_x, expected["test"][0])
    assert train_y.tolist() == expected["train"][1].tolist() and test_y.tolist() == expected["test"][1].tolist()


@pytest.mark.parametrize("gzipped", [True, False])
def test_fashionmnist_idx_folder(tmp_path: Path, gzipped: bool) -> None:
    rng = np.random.default_rng(3)
    folder = tmp_path / "fashion-files"
    folder.mkdir()
    expected = {}
    for split, count in (("train", 20), ("t10k", 10)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = _idx(array)
            path = folder / f"{split}-{kind}-ubyte"
            if gzipped:
                path, data = path.with_name(f"{path.name}.gz"), gzip.compress(data)
            path.write_bytes(data)
        expected[split] = (images, labels)
    train_x, train_y, test_x, test_y = sources.fashionmnist(tmp_path / "raw", folder, tmp_path / "no-debian")
    np.testing.assert_array_equal(train_x, to_rgb32(expected["train"][0]))
    np.testing.assert_array_equal(test_x, to_rgb32(expected["t10k"][0]))
    assert train_x.shape == (20, 32, 32, 3) and (train_x == train_x[..., :1]).all()  # grey: equal channels
    assert train_y.tolist() == expected["train"][1].tolist() and test_y.dtype == np.int64


@pytest.mark.skipif(not sources.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_fashionmnist_from_debian_package(tmp_path: Path) -> None:
    train_x, train_y, test_x, test_y = sources.fashionmnist(tmp_path / "raw", None)
    assert train_x.shape == (60000, 32, 32, 3) and test_x.shape == (10000, 32, 32, 3) and train_x.dtype == np.uint8
    assert np.bincount(train_y).tolist() == [6000] * 10 and np.bincount(test_y).tolist() == [1000] * 10


# --- digits and the stage -----------------------------------------------------------------

def test_digits_split_is_stratified_and_deterministic() -> None:
    train_x, train_y, test_x, test_y = sources.digits(0.2, seed=0)
    assert train_x.shape[1:] == (32, 32, 3) and train_x.dtype == np.uint8 and train_y.dtype == np.int64
    assert len(train_x) + len(test_x) == 1797 and len(test_x) == 360
    assert train_x.max() == 255 and train_x.min() == 0
    np.testing.assert_allclose(np.bincount(test_y) / len(test_y), np.bincount(train_y) / len(train_y), atol=0.01)
    again = sources.digits(0.2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train_x, train_y, test_x, test_y), again, strict=True))
    assert not np.array_equal(sources.digits(0.2, seed=1)[1], train_y)


def test_prepare_data_writes_the_image_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = config.resolve(config.load_params(REPO / "params.yaml"), "digits")
    prepare_data(settings, tmp_path / "train.npz", tmp_path / "test.npz", tmp_path / "extra_real.npz")
    train_x, train_y = io.load_images(tmp_path / "train.npz", num_classes=10)
    test_x, _ = io.load_images(tmp_path / "test.npz", num_classes=10)
    assert len(train_x) == 1437 and len(test_x) == 360 and set(train_y.tolist()) == set(range(10))
    meta = read_meta(io.open_npz(tmp_path / "train.npz"))
    assert meta["dataset"] == "digits" and meta["num_classes"] == 10 and meta["source"] == "sklearn"
    assert "prepare_data" in meta["stage_wall_time_s"]
    assert "1437 train and 360 test" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.tmp"))


def test_npz_source_converts_any_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    np.savez_compressed(train, image=rng.random((20, 28, 28)), label=np.arange(20, dtype=np.int32) % 4)
    np.savez(test, image=rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8), label=np.arange(6) % 4)
    entry = {"name": "mine", "source": "npz", "train": str(train), "test": str(test), "num_classes": 4}
    train_x, train_y, test_x, test_y = sources.load(entry, seed=0)
    assert train_x.shape == (20, 32, 32, 3) and test_x.shape == (6, 32, 32, 3) and train_x.dtype == np.uint8
    assert train_y.dtype == np.int64 and test_y.tolist() == [0, 1, 2, 3, 0, 1]


# --- to_rgb32 -----------------------------------------------------------------------------

def test_to_rgb32_ranges_and_sizes() -> None:
    rgb = np.random.default_rng(5).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb32(rgb), rgb)
    np.testing.assert_array_equal(to_rgb32(np.full((2, 8, 8, 1), 16), max_value=16), np.full((2, 32, 32, 3), 255))
    np.testing.assert_array_equal(to_rgb32(np.full((1, 64, 48), 0.4), max_value=1.0), np.full((1, 32, 32, 3), 102))
    with pytest.raises(ValueError, match="expected \\[0, 1.0\\]"):
        to_rgb32(np.full((1, 32, 32), 2.0), max_value=1.0)
    with pytest.raises(ValueError, match="shape"):
        to_rgb32(np.zeros((1, 32, 32, 2), dtype=np.uint8))


# --- errors name the file -----------------------------------------------------------------

def test_missing_archive_is_named(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    with pytest.raises(UserError, match=f"{archive}: not found.*datasets.cifar10.archive"):
        sources.cifar10(tmp_path / "raw", archive)


def test_truncated_archive_is_named(tmp_path: Path, any_checksum: None) -> None:
    archive, *_ = _cifar10_archive(tmp_path, np.random.default_rng(6))
    archive.write_bytes(archive.read_bytes()[:20000])
    with pytest.raises(UserError, match=f"{archive}: not a readable .tar.gz archive, or truncated"):
        sources.cifar10(tmp_path / "raw", archive)


def test_archive_member_outside_root_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    (tmp_path / "evil").write_bytes(b"x")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "evil", arcname="../evil")
    with pytest.raises(UserError, match="outside the target folder"):
        sources.cifar10(tmp_path / "raw", archive)
    assert (tmp_path / "evil").read_bytes() == b"x"


def test_failed_download_says_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> None:
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(UserError) as caught:
        sources.cifar10(tmp_path / "raw", None)
    message = str(caught.value)
    for part in ("cifar10: the download", "failed", "make the internet reachable",
                 "datasets.cifar10.archive in params.yaml", "cifar-10-python.tar.gz"):
        assert part in message


def test_truncated_idx_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-files"
    folder.mkdir()
    for split, count in (("train", 10), ("t10k", 10)):
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros((count, 28, 28), np.uint8))))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.arange(count, dtype=np.uint8))))
    broken = folder / "train-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-30])
    with pytest.raises(UserError, match=f"{broken}: not a readable gzip file, or truncated"):
        sources.fashionmnist(tmp_path / "raw", folder, tmp_path / "no-debian")


def test_svhn_folder_without_test_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "svhn-files"
    folder.mkdir()
    scipy.io.savemat(folder / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 10), np.uint8), "y": np.ones((10, 1))})
    with pytest.raises(UserError, match=f"{folder / 'test_32x32.mat'}: not found"):
        sources.svhn(tmp_path / "raw", folder)


def _npz_entry(tmp_path: Path, train_labels: np.ndarray) -> dict[str, Any]:
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    images = np.zeros((len(train_labels), 32, 32, 3), np.uint8)
    np.savez(train, image=images, label=train_labels)
    np.savez(test, image=np.zeros((3, 32, 32, 3), np.uint8), label=np.arange(3))
    return {"name": "mine", "source": "npz", "train": str(train), "test": str(test), "num_classes": 3}


def test_npz_without_label_is_named(tmp_path: Path) -> None:
    entry = _npz_entry(tmp_path, np.arange(3))
    np.savez(entry["test"], image=np.zeros((3, 32, 32, 3), np.uint8))
    with pytest.raises(UserError, match=f"{entry['test']}: missing array 'label'"):
        sources.load(entry, seed=0)


def test_label_out_of_range_is_named(tmp_path: Path) -> None:
    entry = _npz_entry(tmp_path, np.array([0, 1, 2, 3]))
    with pytest.raises(UserError, match=f"{entry['train']}: label 3 outside the class range \\[0, 2\\]"):
        sources.load(entry, seed=0)


def test_class_missing_from_train_is_named(tmp_path: Path) -> None:
    entry = _npz_entry(tmp_path, np.array([0, 0, 2, 2]))
    with pytest.raises(UserError, match=f"{entry['train']}: class 1 has no training image"):
        sources.load(entry, seed=0)


def test_unknown_torchvision_name(tmp_path: Path) -> None:
    entry = {"name": "imagenet", "source": "torchvision", "root": str(tmp_path), "num_classes": 1000}
    with pytest.raises(UserError, match="datasets.imagenet: source 'torchvision' provides cifar10"):
        sources.load(entry, seed=0)


def test_checksums_stay_on_in_production(tmp_path: Path) -> None:
    """Without the test's patch, torchvision rejects files that are not the official ones."""
    archive, *_ = _cifar10_archive(tmp_path, np.random.default_rng(7))
    with pytest.raises(UserError, match=f"{archive}: torchvision cannot read cifar10 .*official cifar-10-python"):
        sources.cifar10(tmp_path / "raw", archive)
