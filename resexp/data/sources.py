"""Dataset sources: a data config in, raw uint8 train/test tensors out.

Augmentation and normalisation happen later, on the training device (resexp.data.batcher).
Files are verified before they are parsed, and a missing or corrupt file is a DataError that
names the file: other data is never substituted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.datasets.mnist import read_image_file, read_label_file

from resexp.config import compose
from resexp.data.raw import RawData
from resexp.data.staging import DOWNLOADABLE, DatasetFiles, dataset_files, file_problems, present, stage
from resexp.data.synthetic import KNOBS, make_synthetic
from resexp.errors import ConfigError, DataError, one_line

SOURCES = ("cifar10", "cifar100", "fashion_mnist", "synthetic")
FASHION_MNIST_PAD = 2  # 28x28 -> 32x32, so the CIFAR architectures apply unchanged
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "fashion_mnist": 10}
CHANNELS = {"cifar10": 3, "cifar100": 3, "fashion_mnist": 1}


def load_source(cfg: Mapping[str, Any]) -> RawData:
    """The raw train and test sets of the data config ``cfg`` (configs/data/*.yaml)."""
    name = cfg["name"]
    if name == "synthetic":
        knobs = {key: cfg[key] for key in KNOBS if key in cfg}
        return make_synthetic(
            int(cfg["train_size"]), int(cfg["test_size"]), int(cfg["seed"]), **knobs
        )
    if name not in SOURCES:
        raise ConfigError(f"unknown data.name={name!r}; choose one of {', '.join(SOURCES)}")
    spec = dataset_files(name)
    root = data_root(cfg)
    stage(spec, root, bool(cfg["download"]))
    return parse_files(spec, root)


def local_source(cfg: Mapping[str, Any]) -> tuple[RawData, str]:
    """The data config's splits as far as this machine has them, never downloaded, and what they
    are, in words: the dataset itself (generated, or read from data.root; a corrupt file is
    refused as training refuses it), or, where none of a torchvision dataset's files is there,
    random uint8 images with its shape, split sizes and classes. For timing: a step's speed
    does not depend on pixel values."""
    name = cfg["name"]
    if name == "synthetic":
        raw = load_source(cfg)
        return raw, f"synthetic ({len(raw.train_labels):,} generated train images)"
    spec, root = dataset_files(name), data_root(cfg)
    if present(spec, root):
        return load_source({**cfg, "download": False}), f"{spec.title} from {root}"
    (train, test), channels, generator = spec.counts, CHANNELS[name], torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (n, channels, 32, 32), dtype=torch.uint8, generator=generator)
              for n in (train, test)]
    labels = [torch.randint(0, NUM_CLASSES[name], (n,), generator=generator) for n in (train, test)]
    raw = RawData(images[0], labels[0], images[1], labels[1], NUM_CLASSES[name], channels, f"{name}-shaped noise")
    return raw, (f"random uint8 images of {spec.title}'s shape ({train:,} × {channels}×32×32; "
                 f"{spec.title} not found under {root})")


def parse_files(spec: DatasetFiles, root: Path) -> RawData:
    """The staged files of a torchvision dataset as raw uint8 tensors; DataError if they do not parse."""
    if spec.name == "fashion_mnist":
        return load_fashion_mnist(spec.folder(root))
    return load_cifar(spec, root)


def data_root(cfg: Mapping[str, Any]) -> Path:
    return Path(os.path.expanduser(str(cfg["root"])))


@dataclass
class DatasetCheck:
    """What `resexp data check` says of one dataset under one root."""

    name: str
    folder: Path
    state: str  # "ok", "missing" or "corrupt"
    detail: str  # counts and shape when ok; the file and what is wrong otherwise


def check_dataset(name: str, root: Path) -> DatasetCheck:
    """Every file present and whole (md5 where torchvision knows one), then parsed as training
    reads it: image and label counts, image shape, label range. Archives found under root are
    extracted first, as training would."""
    spec = dataset_files(name)
    folder = spec.folder(root)
    try:
        recompressed = stage(spec, root, allow_download=False, suggest=False)
        raw = parse_files(spec, root)
    except DataError as error:
        missing = [p for p in file_problems(spec, root) if p.missing]
        archived = any((root / spec.archive_dir / archive).is_file() for archive, _ in spec.archives)
        if missing and not archived:  # with an archive there, it was refused: corrupt, not missing
            return DatasetCheck(name, folder, "missing", f"{missing[0].path} (and {len(missing) - 1} more)"
                                if len(missing) > 1 else str(missing[0].path))
        return DatasetCheck(name, folder, "corrupt", one_line(error))
    counts = (len(raw.train_labels), len(raw.test_labels))
    shape = "x".join(map(str, raw.train_images.shape[1:]))
    detail = f"{counts[0]} train + {counts[1]} test images, {shape}, {raw.num_classes} classes"
    if counts != spec.counts:
        return DatasetCheck(name, folder, "corrupt", f"{detail}; the real dataset has {spec.counts[0]} + "
                            f"{spec.counts[1]}: delete {folder} and download it again")
    if recompressed:  # a distribution's own gzip of the files: the archive md5s differ, the contents do not
        detail += (f"; recompressed archive{'s' if len(recompressed) > 1 else ''}, contents verified: "
                   f"{', '.join(archive.name for archive in recompressed)}")
    return DatasetCheck(name, folder, "ok", detail)


def dataset_root(name: str, root: str | None = None) -> Path:
    """--root, or else the data root that data=NAME composes to (RESEXP_DATA or ~/.cache/resexp/data)."""
    return Path(root).expanduser() if root is not None else data_root(compose([f"data={name}"]).data)


def download_dataset(name: str, root: str | None = None) -> str:
    """`resexp data download`: torchvision's download (md5-checked), extracted and checked as
    `resexp data check` does; the line it prints, or an error unless the dataset is usable."""
    spec = dataset_files(name)  # an unknown name is refused before the config is composed
    where = dataset_root(name, root)
    stage(spec, where, allow_download=True, suggest=False)  # a DataError says what is missing and why
    result = check_dataset(name, where)
    if result.state != "ok":
        raise DataError(f"{name} in {result.folder} is {result.state} after the download: {result.detail}")
    return f"{name}: ok, {result.detail}, in {result.folder}"


def check_datasets(name: str | None = None, root: str | None = None) -> tuple[list[str], bool]:
    """`resexp data check`: a line per dataset (every downloadable one without a name), and whether
    it passes: the named dataset usable, or none corrupt."""
    names = list(DOWNLOADABLE) if name is None else [dataset_files(name).name]
    results = [check_dataset(n, dataset_root(n, root)) for n in names]
    width = max(len(n) for n in names)
    lines = []
    for result in results:
        fix = f"; resexp data download {result.name}" if result.state == "missing" else ""
        lines.append(f"{result.name:<{width}}  {result.state:<7}  {result.detail}{fix}"
                     + (f"  ({result.folder})" if result.state == "ok" else ""))
    passes = not any(r.state == "corrupt" or (name is not None and r.state != "ok") for r in results)
    return lines, passes


def load_cifar(spec: DatasetFiles, root: Path) -> RawData:
    """CIFAR-10 or CIFAR-100 from staged files (resexp.data.staging.stage)."""
    train_images, train_labels = _parse_cifar(spec, root, train=True)
    test_images, test_labels = _parse_cifar(spec, root, train=False)
    return RawData(train_images, train_labels, test_images, test_labels, NUM_CLASSES[spec.name], 3, spec.name)


def _parse_cifar(spec: DatasetFiles, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split through torchvision's reader: (N, 32, 32, 3) numpy -> uint8 (N, 3, 32, 32)."""
    folder = spec.folder(root)
    try:
        dataset = spec.cls(str(root), train=train, download=False)
    # Unpickling a damaged file can raise almost any exception type.
    except Exception as error:
        raise DataError(
            f"{spec.title} in {folder} could not be parsed ({type(error).__name__}: {one_line(error)}); "
            f"delete {folder} and download it again (resexp data download {spec.name})"
        ) from error
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    _check_labels(labels, len(images), NUM_CLASSES[spec.name], f"{spec.title} in {folder}")
    return images, labels


def load_fashion_mnist(raw_folder: Path) -> RawData:
    """Fashion-MNIST's four unpacked IDX files in raw_folder, zero-padded to 32x32."""
    train_images, train_labels = _parse_fashion_mnist(
        raw_folder / "train-images-idx3-ubyte", raw_folder / "train-labels-idx1-ubyte"
    )
    test_images, test_labels = _parse_fashion_mnist(
        raw_folder / "t10k-images-idx3-ubyte", raw_folder / "t10k-labels-idx1-ubyte"
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
        raise _corrupt_idx(path, f"{type(error).__name__}: {one_line(error)}") from error


def _corrupt_idx(path: Path, detail: str) -> DataError:
    return DataError(
        f"Fashion-MNIST file {path} is corrupt ({detail}); delete it (and its .gz) and download it again "
        f"(resexp data download fashion_mnist)"
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
