"""One loader per dataset source, each giving (train_images, train_labels, test_images, test_labels).

Images come back as uint8 NHWC (N,32,32,3), labels as int64. The torchvision datasets are
read by torchvision's own dataset classes from their official on-disk formats, so what we
train on is exactly what everyone else means by "CIFAR-10"; this module only decides where
those files come from: `root` if they are already there (checksums included), else the
user's local `archive`, else torchvision's download, and otherwise an error that says how
to provide them on a machine without internet.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision import datasets

from .. import io
from ..errors import UserError
from .transform import to_rgb32

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
T = TypeVar("T")

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
DEFAULT_TEST_FRACTION = 0.2
DIGITS_MAX = 16  # load_digits counts set pixels in 4x4 blocks: values 0..16


def load(entry: Mapping[str, Any], seed: int) -> Split:
    """Load the dataset that a params.yaml `datasets:` entry (plus its `name`) describes, labels checked."""
    name, source = entry["name"], entry["source"]
    if source == "npz":
        split = npz(Path(entry["train"]), Path(entry["test"]))
        train_where, test_where = entry["train"], entry["test"]
    elif source == "sklearn":
        split = digits(entry.get("test_fraction", DEFAULT_TEST_FRACTION), seed)
        train_where = test_where = f"{name} (scikit-learn load_digits)"
    else:
        if name not in TORCHVISION:
            raise UserError(f"datasets.{name}: source 'torchvision' provides {', '.join(TORCHVISION)}; "
                            f"for other data use source: npz")
        archive = entry.get("archive")
        split = TORCHVISION[name](Path(entry["root"]), Path(archive) if archive else None)
        train_where, test_where = f"{name} training set in {entry['root']}", f"{name} test set in {entry['root']}"
    check_labels(split[1], entry["num_classes"], train_where, every_class=True)
    check_labels(split[3], entry["num_classes"], test_where, every_class=False)
    return split


def check_labels(labels: np.ndarray, num_classes: int, where: str, every_class: bool) -> None:
    """Labels must index the classifier's outputs; a training set must also show every class,
    because the per-class Gaussian fit and the class-conditional generator need examples of each."""
    if not len(labels):
        raise UserError(f"{where}: holds no images")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise UserError(f"{where}: label {int(labels[bad][0])} outside the class range [0, {num_classes - 1}] "
                        f"(num_classes = {num_classes})")
    if every_class and (missing := np.setdiff1d(np.arange(num_classes), labels)).size:
        raise UserError(f"{where}: class {int(missing[0])} has no training image ({missing.size} of {num_classes} "
                        f"classes missing); the Gaussian fit and the class-conditional generator need every class")


# --- torchvision datasets -------------------------------------------------------------------

def cifar10(root: Path, archive: Path | None) -> Split:
    return _cifar(datasets.CIFAR10, "cifar10", root, archive)


def cifar100(root: Path, archive: Path | None) -> Split:
    return _cifar(datasets.CIFAR100, "cifar100", root, archive)


def svhn(root: Path, archive: Path | None) -> Split:
    def build(download: bool) -> tuple[datasets.SVHN, datasets.SVHN]:
        return (datasets.SVHN(root, split="train", download=download),
                datasets.SVHN(root, split="test", download=download))

    official = f"a folder holding copies of the official {' and '.join(SVHN_FILES)}"
    train, test = _obtain("svhn", root, archive, official, _copy_svhn, build)
    # torchvision keeps SVHN as NCHW and has already turned the .mat files' label 10 into digit 0.
    return (to_rgb32(train.data.transpose(0, 2, 3, 1)), _labels(train.labels),
            to_rgb32(test.data.transpose(0, 2, 3, 1)), _labels(test.labels))


def fashionmnist(root: Path, archive: Path | None, system_folder: Path = DEBIAN_FASHION_MNIST) -> Split:
    """Debian's dataset-fashion-mnist package stands in for `archive` when that is not set."""
    def build(download: bool) -> tuple[datasets.FashionMNIST, datasets.FashionMNIST]:
        return (datasets.FashionMNIST(root, train=True, download=download),
                datasets.FashionMNIST(root, train=False, download=download))

    if archive is None and system_folder.is_dir():
        archive = system_folder
    official = (f"a folder holding copies of the official {', '.join(f'{file}.gz' for file in FASHION_FILES)} "
                f"(or install Debian's dataset-fashion-mnist package)")
    train, test = _obtain("fashionmnist", root, archive, official, _unpack_idx, build)
    return (to_rgb32(train.data.numpy()), _labels(train.targets),
            to_rgb32(test.data.numpy()), _labels(test.targets))


TORCHVISION: dict[str, Callable[[Path, Path | None], Split]] = {
    "cifar10": cifar10, "cifar100": cifar100, "svhn": svhn, "fashionmnist": fashionmnist}


def _cifar(cls: type[datasets.CIFAR10], name: str, root: Path, archive: Path | None) -> Split:
    def build(download: bool) -> tuple[datasets.CIFAR10, datasets.CIFAR10]:
        return cls(root, train=True, download=download), cls(root, train=False, download=download)

    train, test = _obtain(name, root, archive, f"a local copy of the official {cls.filename}", _extract_tar, build)
    return to_rgb32(train.data), _labels(train.targets), to_rgb32(test.data), _labels(test.targets)


def _obtain(name: str, root: Path, archive: Path | None, official: str,
            stage: Callable[[Path, Path], None], build: Callable[[bool], T]) -> T:
    """Read from `root`, else stage `archive` into it, else download into it.

    Always called with download=False first: torchvision then only checks the files (and
    their checksums) already in root, so an offline machine never tries the network when
    the data or an archive is at hand. torchvision says "not found or corrupted" with a
    RuntimeError, which is what sends us on to the next way of getting the files.
    """
    try:
        return build(False)
    except RuntimeError:
        pass
    if archive is not None:
        if not archive.exists():
            raise UserError(f"{archive}: not found (datasets.{name}.archive in params.yaml); expected {official}")
        stage(archive, root)
        try:
            return build(False)
        except RuntimeError as exc:
            raise UserError(f"{archive}: torchvision cannot read {name} from what it unpacked into {root} "
                            f"({_one_line(exc)}); expected {official}, unmodified") from exc
    try:
        return build(True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad checksum is a RuntimeError
        raise UserError(f"{name}: the download into {root} failed ({_one_line(exc)}). To fix it, either make the "
                        f"internet reachable, or set datasets.{name}.archive in params.yaml to {official}") from exc


def _extract_tar(archive: Path, root: Path) -> None:
    """Unpack regular files and folders only, each checked to land inside root.

    An archive is outside data; this keeps a crafted member name (`../x`, an absolute path,
    a link) from writing anywhere else, on every Python version (tarfile's own `filter=`
    arrived in patch releases). The official CIFAR archives hold nothing but files and folders.
    """
    root = root.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                target = (root / member.name).resolve()
                if not target.is_relative_to(root) or not (member.isfile() or member.isdir()):
                    raise UserError(f"{archive}: member {member.name!r} is a link, a device or points outside "
                                    f"the target folder; this is not an official dataset archive")
                source = tar.extractfile(member)  # None for a folder
                if source is None:
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    io.write_bytes(target, source.read())
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise UserError(f"{archive}: not a readable .tar.gz archive, or truncated ({exc}); "
                        f"download it again") from exc


def _copy_svhn(folder: Path, root: Path) -> None:
    _require_folder(folder, SVHN_FILES)
    for file in SVHN_FILES:
        source = folder / file
        if not source.is_file():
            raise UserError(f"{source}: not found; the SVHN archive folder must hold {' and '.join(SVHN_FILES)}")
        with io.atomic_path(root / file) as tmp:
            shutil.copyfile(source, tmp)


def _unpack_idx(folder: Path, root: Path) -> None:
    """Place the four idx files, uncompressed, where torchvision's FashionMNIST looks for them."""
    _require_folder(folder, FASHION_FILES)
    raw = root / "FashionMNIST" / "raw"
    for file in FASHION_FILES:
        io.write_bytes(raw / file, _read_idx(folder, file))


def _read_idx(folder: Path, file: str) -> bytes:
    plain, packed = folder / file, folder / f"{file}.gz"
    path = plain if plain.is_file() else packed
    if not path.is_file():
        raise UserError(f"{packed}: not found; the Fashion-MNIST archive folder must hold "
                        f"{', '.join(FASHION_FILES)} (each may be gzipped)")
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: not a readable gzip file, or truncated ({exc})") from exc
    _check_idx(path, data)
    return data


def _check_idx(path: Path, data: bytes) -> None:
    """torchvision meets a short idx file with a bare AssertionError; name the file instead."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise UserError(f"{path}: not an idx file of unsigned bytes (bad magic number)")
    header = 4 + 4 * data[3]
    dims = np.frombuffer(data[4:header], dtype=">u4")
    if len(data) < header or len(data) - header != int(np.prod(dims, dtype=np.int64)):
        raise UserError(f"{path}: holds {max(len(data) - header, 0)} bytes of data but its header announces "
                        f"{int(np.prod(dims, dtype=np.int64))}; the file is truncated or damaged")


def _require_folder(folder: Path, files: tuple[str, ...]) -> None:
    if not folder.is_dir():
        raise UserError(f"{folder}: expected a folder holding {', '.join(files)}")


def _labels(targets: Any) -> np.ndarray:
    return np.asarray(targets, dtype=np.int64)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --- offline and user data ------------------------------------------------------------------

def digits(test_fraction: float, seed: int) -> Split:
    """scikit-learn's 1,797 8x8 digits, split by class proportion so both halves see all ten."""
    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        bunch.images, labels, test_size=test_fraction, random_state=seed, stratify=labels)
    return to_rgb32(train_x, DIGITS_MAX), train_y, to_rgb32(test_x, DIGITS_MAX), test_y


def npz(train: Path, test: Path) -> Split:
    return (*_read_npz(train), *_read_npz(test))


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A user's own images in any size, greyscale or RGB: uint8/integer in [0, 255], float in [0, 1]."""
    arrays = io.open_npz(path)
    for key in ("image", "label"):
        if key not in arrays:
            raise UserError(f"{path}: missing array {key!r}; expected 'image' (N,H,W) or (N,H,W,1|3) "
                            f"and integer 'label' (N,)")
    images, labels = arrays["image"], arrays["label"]
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"{path}: 'label' is {labels.dtype} {tuple(labels.shape)}; "
                        f"expected integers of shape ({len(images)},)")
    max_value = 1.0 if np.issubdtype(images.dtype, np.floating) else 255.0
    try:
        images = to_rgb32(images, max_value)
    except ValueError as exc:
        raise UserError(f"{path}: 'image' {exc} (integer images lie in [0, 255], float images in [0, 1])") from exc
    return images, labels.astype(np.int64)
