"""The files of the torchvision datasets under a data root: which they are, whether they are
whole (md5), extracting the archives they are distributed as, and downloading them.

`resexp data download/check` and the loaders in resexp.data.sources both go through here, so
a dataset a check calls whole is one training can read.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST
from torchvision.datasets.utils import check_integrity, extract_archive

from resexp.errors import ConfigError, DataError, one_line

# torchvision's urlopen has no timeout: behind a firewall that drops packets it would hang.
# This bounds each blocking socket operation (connect, one read), not the whole download.
DOWNLOAD_TIMEOUT_S = 30.0
CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
FASHION_MNIST_PAGE = "https://github.com/zalandoresearch/fashion-mnist"


class Problem(NamedTuple):
    """A file of a dataset that is absent (missing=True) or fails its md5."""

    path: Path
    missing: bool


@dataclass(frozen=True)
class DatasetFiles:
    """Where one dataset's files live under a root and what they must hash to."""

    name: str  # the data config's name
    title: str
    cls: type  # the torchvision dataset class, which downloads it
    subfolder: str  # relative to the root
    files: tuple[tuple[str, str | None], ...]  # (file name, md5 or None where torchvision knows none)
    archives: tuple[tuple[str, str], ...]  # (archive name relative to the folder, md5), as distributed
    archive_dir: str  # where the archives sit, relative to the root
    page: str
    counts: tuple[int, int]  # train and test images of the real dataset
    unpacked: tuple[tuple[str, str, int], ...] = ()  # (file name, md5, size) a .gz archive holds, where known

    def folder(self, root: Path) -> Path:
        return root / self.subfolder


def _cifar(cls: type, title: str) -> DatasetFiles:
    listed = (*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"]))
    return DatasetFiles(cls.__name__.lower(), title, cls, cls.base_folder, tuple(map(tuple, listed)),
                        ((cls.filename, cls.tgz_md5),), ".", CIFAR_PAGE, REAL_COUNTS[cls.__name__.lower()])


def _fashion_mnist() -> DatasetFiles:
    # torchvision knows md5s only for the .gz archives: the unpacked files are checked by parsing.
    raw = f"{FashionMNIST.__name__}/raw"
    files = tuple((os.path.splitext(gz)[0], None) for gz, _ in FashionMNIST.resources)
    unpacked = tuple((name, md5, size) for name, (md5, size) in FASHION_MNIST_UNPACKED.items())
    return DatasetFiles("fashion_mnist", "Fashion-MNIST", FashionMNIST, raw, files, tuple(FashionMNIST.resources),
                        raw, FASHION_MNIST_PAGE, REAL_COUNTS["fashion_mnist"], unpacked)


# md5 and size of Fashion-MNIST's unpacked IDX files, as upstream's archives hold them. An archive
# gzipped anew (Debian's dataset-fashion-mnist package ships such) has another md5 than
# torchvision's list but the same contents: those are what is checked.
FASHION_MNIST_UNPACKED = {
    "train-images-idx3-ubyte": ("f4a8712d7a061bf5bd6d2ca38dc4d50a", 47040016),
    "train-labels-idx1-ubyte": ("9018921c3c673c538a1fc5bad174d6f9", 60008),
    "t10k-images-idx3-ubyte": ("8181f5470baa50b63fa0f6fddb340f0a", 7840016),
    "t10k-labels-idx1-ubyte": ("15d484375f8d13e6eb1aabb0c3f46965", 10008),
}


# Train and test images of each real dataset: `resexp data check` compares against them.
REAL_COUNTS = {"cifar10": (50000, 10000), "cifar100": (50000, 10000), "fashion_mnist": (60000, 10000)}


def dataset_files(name: str) -> DatasetFiles:
    """The file list of a downloadable dataset, read from torchvision's classes at call time."""
    specs = {"cifar10": lambda: _cifar(CIFAR10, "CIFAR-10"), "cifar100": lambda: _cifar(CIFAR100, "CIFAR-100"),
             "fashion_mnist": _fashion_mnist}
    if name not in specs:
        extra = " (synthetic is generated in memory: nothing to download)" if name == "synthetic" else ""
        raise ConfigError(f"unknown dataset '{name}'{extra}; choose from: {', '.join(DOWNLOADABLE)}")
    return specs[name]()


DOWNLOADABLE = ("cifar10", "cifar100", "fashion_mnist")


def file_problems(spec: DatasetFiles, root: Path) -> list[Problem]:
    """Every file of the dataset that is absent or fails its md5, in the dataset's own order."""
    folder, problems = spec.folder(root), []
    for filename, md5 in spec.files:
        path = folder / filename
        if not path.is_file():
            problems.append(Problem(path, missing=True))
        elif md5 is not None and not check_integrity(str(path), md5):
            problems.append(Problem(path, missing=False))
    return problems


def present(spec: DatasetFiles, root: Path) -> bool:
    """Whether any of the dataset's files or archives is under root, whole or not."""
    return (any((spec.folder(root) / name).is_file() for name, _ in spec.files)
            or any((root / spec.archive_dir / name).is_file() for name, _ in spec.archives))


def extract_archives(spec: DatasetFiles, root: Path) -> list[Path]:
    """Unpack the dataset's archives (.tar.gz, .gz) found under root when files they hold are
    missing, as the distribution ships them. A .gz whose own md5 differs but whose unpacked
    md5 and size are the known ones (spec.unpacked) was recompressed: it is unpacked, and returned.
    Any other archive that fails its md5 is a DataError naming it: nothing is unpacked from it."""
    if not any(p.missing for p in file_problems(spec, root)):
        return []
    unpacked = {name: (md5, size) for name, md5, size in spec.unpacked}
    recompressed = []
    for name, md5 in spec.archives:
        archive = root / spec.archive_dir / name
        single_file = not name.endswith(".tar.gz")  # a .gz holds one file, named without the .gz, beside it
        if not archive.is_file() or (single_file and archive.with_suffix("").is_file()):
            continue
        if not check_integrity(str(archive), md5):
            known = unpacked.get(archive.stem)
            if known is None or unpacked_md5_and_size(archive) != known:
                contents = f"; what it unpacks to is not {spec.title}'s either" if known else ""
                raise DataError(f"{spec.title} archive {archive} is corrupt (md5 mismatch{contents}); delete it and "
                                f"download it again (resexp data download {spec.name}, or from {spec.page})")
            recompressed.append(archive)
        extract_archive(str(archive), str(archive.parent))
    return recompressed


def unpacked_md5_and_size(archive: Path) -> tuple[str, int] | None:
    """The md5 and size of what a .gz archive unpacks to; None where it is not whole gzip."""
    digest, size = hashlib.md5(), 0
    try:
        with gzip.open(archive, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except (OSError, EOFError, zlib.error):  # not gzip (BadGzipFile is an OSError), truncated, damaged
        return None
    return digest.hexdigest(), size


def download(spec: DatasetFiles, root: Path) -> str | None:
    """Run torchvision's download (with its progress bar) into root; None on success, else why
    it failed, on one line. Failures are not raised: the caller checks the files again and
    reports what is missing. A failed download leaves no empty folders behind."""
    folders_before = set(download_folders(spec, root))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        spec.cls(str(root), train=False, download=True)
    # URLError and timeouts are OSErrors; torchvision wraps md5 and mirror failures in RuntimeError.
    except (OSError, RuntimeError) as error:
        remove_empty_folders(spec, root, folders_before)
        return f"{type(error).__name__}: {one_line(error)}"
    finally:
        socket.setdefaulttimeout(previous)
    return None


def download_folders(spec: DatasetFiles, root: Path) -> list[Path]:
    """The folders a download may create that exist now: root and those above it, and those from
    root down to where the dataset's archives and files go (not the rest of a shared data root)."""
    below = [root / spec.archive_dir, spec.folder(root)]
    chains = [path for target in below for path in (target, *target.parents) if path.is_relative_to(root)]
    return [path for path in {root, *root.parents, *chains} if path.is_dir()]


def remove_empty_folders(spec: DatasetFiles, root: Path, keep: set[Path]) -> None:
    """Remove those of download_folders that are not in keep (this download made them) and are
    empty, deepest first."""
    made = [path for path in download_folders(spec, root) if path not in keep]
    for path in sorted(made, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: the download left a file there
            path.rmdir()


def stage(spec: DatasetFiles, root: Path, allow_download: bool,
          fetch: Callable[..., str | None] = download, suggest: bool = True) -> list[Path]:
    """Make the dataset's files present and whole under root: extract its archives if they are
    there, else download it if allowed. A DataError names the first missing or corrupt file and
    how to fix it (with suggest, also `resexp data download` and data=synthetic: not where that
    command is the caller); a corrupt file is never downloaded over. Returns the recompressed
    archives it extracted (extract_archives)."""
    recompressed = extract_archives(spec, root)
    problems = file_problems(spec, root)
    reason = None
    if any(p.missing for p in problems) and allow_download:
        reason = fetch(spec, root)
        problems = file_problems(spec, root)
    missing = [p for p in problems if p.missing]
    if missing:
        why = ("data.download=false" if not allow_download else
               f"the download failed: {reason}" if reason else "the download finished without it")
        archives = ", ".join(name for name, _ in spec.archives)
        fixes = [f"download {archives} from {spec.page} into {root / spec.archive_dir}",
                 f"set RESEXP_DATA or data.root= to a folder that holds {spec.subfolder}/"]
        if suggest:
            fixes.insert(0, f"run resexp data download {spec.name} (where there is internet: a login node)")
        if not allow_download:
            fixes.insert(0, "set data.download=true")
        try_synthetic = "; to try resexp without it, train on data=synthetic (no download)" if suggest else ""
        raise DataError(f"{spec.title} not found: expected {missing[0].path} ({why}); "
                        f"{', '.join(fixes[:-1])}, or {fixes[-1]}{try_synthetic}")
    if problems:
        raise DataError(
            f"{spec.title} file {problems[0].path} is corrupt (md5 mismatch); delete it and download it again "
            f"(resexp data download {spec.name}, or from {spec.page})"
        )
    return recompressed
