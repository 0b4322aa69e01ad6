"""Dataset sources: a data config in, raw uint8 train/test tensors out.

Augmentation and normalisation happen later, on the training device (resexp.data.batcher).
Files are verified before they are parsed, and a missing or corrupt file is a DataError that
names the file: other data is never substituted.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import check_integrity

from resexp.data.raw import RawData
from resexp.data.synthetic import KNOBS, make_synthetic
from resexp.errors import ConfigError, DataError

SOURCES = ("cifar10", "cifar100", "fashion_mnist", "synthetic")
# torchvision's urlopen has no timeout: behind a firewall that drops packets it would hang.
# This bounds each blocking socket operation (connect, one read), not the whole download.
DOWNLOAD_TIMEOUT_S = 30.0
CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
FASHION_MNIST_PAGE = "https://github.com/zalandoresearch/fashion-mnist"
FASHION_MNIST_PAD = 2  # 28x28 -> 32x32, so the CIFAR architectures apply unchanged


class Problem(NamedTuple):
    """The first bad file of a dataset: absent (missing=True) or failing its check."""

    path: Path
    missing: bool


@dataclass(frozen=True)
class _Cifar:
    cls: type[CIFAR10]
    title: str
    num_classes: int


_CIFARS = {
    "cifar10": _Cifar(CIFAR10, "CIFAR-10", 10),
    "cifar100": _Cifar(CIFAR100, "CIFAR-100", 100),
}


def load_source(cfg: Mapping[str, Any]) -> RawData:
    """The raw train and test sets of the data config ``cfg`` (configs/data/*.yaml)."""
    name = cfg["name"]
    if name == "synthetic":
        knobs = {key: cfg[key] for key in KNOBS if key in cfg}
        return make_synthetic(
            int(cfg["train_size"]), int(cfg["test_size"]), int(cfg["seed"]), **knobs
        )
    if name in _CIFARS:
        return load_cifar(name, data_root(cfg), bool(cfg["download"]))
    if name == "fashion_mnist":
        return load_fashion_mnist(data_root(cfg), bool(cfg["download"]))
    raise ConfigError(f"unknown data.name={name!r}; choose one of {', '.join(SOURCES)}")


def data_root(cfg: Mapping[str, Any]) -> Path:
    return Path(os.path.expanduser(str(cfg["root"])))


def verify_cifar(folder: Path, dataset_cls: type[CIFAR10]) -> Problem | None:
    """The first file of the class's md5 lists (batches, then meta) that is absent or bad."""
    meta = dataset_cls.meta
    expected = [*dataset_cls.train_list, *dataset_cls.test_list, (meta["filename"], meta["md5"])]
    for filename, md5 in expected:
        path = folder / filename
        if not path.is_file():
            return Problem(path, missing=True)
        if not check_integrity(str(path), md5):
            return Problem(path, missing=False)
    return None


def load_cifar(name: str, root: Path, download: bool) -> RawData:
    """CIFAR-10 or CIFAR-100 ("cifar10", "cifar100") from under root, downloaded if allowed."""
    spec = _CIFARS[name]
    folder = root / spec.cls.base_folder
    problem = verify_cifar(folder, spec.cls)
    if problem is not None and problem.missing:
        fetch = partial(spec.cls, str(root), train=False, download=True)
        reason = _download(fetch) if download else None
        problem = verify_cifar(folder, spec.cls)
        if problem is not None and problem.missing:
            raise DataError(
                f"{spec.title} not found: expected {problem.path} "
                f"({_why_absent(download, reason)}); {_enable(download)}download "
                f"{spec.cls.filename} from {CIFAR_PAGE} and extract it under {root}, or set "
                f"RESEXP_DATA or data.root= to a folder that holds {spec.cls.base_folder}/"
            )
    if problem is not None:
        raise DataError(
            f"{spec.title} file {problem.path} is corrupt (md5 mismatch); delete it and "
            f"re-download it (data.download=true, or {spec.cls.filename} from {CIFAR_PAGE} "
            f"extracted under {root})"
        )
    train_images, train_labels = _parse_cifar(spec, root, train=True)
    test_images, test_labels = _parse_cifar(spec, root, train=False)
    return RawData(train_images, train_labels, test_images, test_labels, spec.num_classes, 3, name)


def _parse_cifar(spec: _Cifar, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split through torchvision's reader: (N, 32, 32, 3) numpy -> uint8 (N, 3, 32, 32)."""
    folder = root / spec.cls.base_folder
    try:
        dataset = spec.cls(str(root), train=train, download=False)
    # Unpickling a damaged file can raise almost any exception type.
    except Exception as error:
        raise DataError(
            f"{spec.title} in {folder} could not be parsed ({_one_line(error)}); "
            f"delete {folder} and re-download {spec.cls.filename} from {CIFAR_PAGE}"
        ) from error
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    _check_labels(labels, len(images), spec.num_classes, f"{spec.title} in {folder}")
    return images, labels


def fashion_mnist_files(raw_folder: Path) -> dict[str, Path]:
    """torchvision's four uncompressed IDX files: train/t10k images/labels."""
    names = [os.path.splitext(filename)[0] for filename, _ in FashionMNIST.resources]
    return {name: raw_folder / name for name in names}


def load_fashion_mnist(root: Path, download: bool) -> RawData:
    # torchvision knows md5s only for the .gz archives: the unpacked files are checked by parsing.
    raw_folder = root / FashionMNIST.__name__ / "raw"
    files = fashion_mnist_files(raw_folder)
    missing = [path for path in files.values() if not path.is_file()]
    if missing:
        fetch = partial(FashionMNIST, str(root), train=False, download=True)
        reason = _download(fetch) if download else None
        missing = [path for path in files.values() if not path.is_file()]
        if missing:
            raise DataError(
                f"Fashion-MNIST not found: expected {missing[0]} "
                f"({_why_absent(download, reason)}); {_enable(download)}download the four "
                f"*-ubyte.gz files from {FASHION_MNIST_PAGE} and gunzip them into {raw_folder}, "
                f"or set RESEXP_DATA or data.root= to a folder that holds FashionMNIST/raw/"
            )
    train_images, train_labels = _parse_fashion_mnist(
        files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"]
    )
    test_images, test_labels = _parse_fashion_mnist(
        files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"]
    )
    return RawData(train_images, train_labels, test_images, test_labels, 10, 1, "fashion_mnist")


def _parse_fashion_mnist(images_file: Path, labels_file: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's IDX readers, then (N, 28, 28) -> zero-padded uint8 (N, 1, 32, 32)."""
    images = _read_idx(read_image_file, images_file)
    labels = _read_idx(read_label_file, labels_file)
    if images.shape[1:] != (28, 28):
        raise _corrupt_idx(images_file, f"images are {tuple(images.shape[1:])}, not 28x28")
    _check_labels(labels, len(images), 10, f"Fashion-MNIST {labels_file}")
    padded = F.pad(images, (FASHION_MNIST_PAD,) * 4)  # constant 0 on all four sides
    return padded.unsqueeze(1).contiguous(), labels


def _read_idx(reader: Callable[[str], torch.Tensor], path: Path) -> torch.Tensor:
    try:
        return reader(str(path))
    # The exceptions torchvision's IDX reader raises on a bad header, dtype or length.
    except (AssertionError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _corrupt_idx(path, _one_line(error)) from error


def _corrupt_idx(path: Path, detail: str) -> DataError:
    return DataError(
        f"Fashion-MNIST file {path} is corrupt ({detail}); delete it and re-download it "
        f"(data.download=true, or the .gz from {FASHION_MNIST_PAGE}, gunzipped)"
    )


def _check_labels(labels: torch.Tensor, count: int, num_classes: int, where: str) -> None:
    if len(labels) != count:
        raise DataError(
            f"{where} has {count} images but {len(labels)} labels; delete it and re-download it"
        )
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise DataError(
            f"{where} has labels outside 0..{num_classes - 1}; delete it and re-download it"
        )


def _download(fetch: Callable[[], object]) -> str | None:
    """Run a torchvision download; None on success, else why it failed, on one line.

    Failures are not raised here: the caller re-checks the files and reports what is missing.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        fetch()
    # URLError and timeouts are OSErrors; torchvision wraps md5 and mirror failures in RuntimeError.
    except (OSError, RuntimeError) as error:
        return _one_line(error)
    finally:
        socket.setdefaulttimeout(previous)
    return None


def _why_absent(download: bool, reason: str | None) -> str:
    if not download:
        return "data.download=false"
    if reason is not None:
        return f"the download failed: {reason}"
    return "the download finished without it"


def _enable(download: bool) -> str:
    return "" if download else "set data.download=true, or "


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"
