"""CIFAR-10 files in the dataset's exact on-disk format, for tests that read them through
torchvision (tests/test_data_sources.py, tests/test_evaluation.py)."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import CIFAR10

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 str opcodes, as the CIFAR files (pickled by Python 2) hold them.

    torchvision unpickles with encoding="latin1", which turns exactly these into str keys
    ("data", "labels") and feeds numpy the raw pixel string the way it reads the real files.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        Python2Pickler(f, protocol=2).dump(obj)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int,
                  test_size: int) -> dict[str, tuple[np.ndarray, list[int]]]:
    """cifar-10-batches-py/ with random batches, torchvision's md5 lists patched to match them;
    returns {file name: (rows of pixels, labels)} as written."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [*TRAIN_BATCHES, "test_batch"]:
        n = test_size if name == "test_batch" else per_batch
        # One row per image: 1024 red, then 1024 green, then 1024 blue values, each row-major.
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        write_pickle(folder / name, {
            b"batch_label": f"{name} of 5".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)],
        })
        written[name] = (data, labels)
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer",
                                 "dog", "frog", "horse", "ship", "truck")]
    write_pickle(folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names,
                                           b"num_vis": 3072})
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5(folder / n)] for n in TRAIN_BATCHES])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(folder / "batches.meta")})
    return written
