"""Dataset sources through the real loading path, on tiny files in each dataset's on-disk format."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.datasets import CIFAR10, FashionMNIST
from typer.testing import CliRunner

from cifar_files import TRAIN_BATCHES, md5, write_cifar10
from resexp.cli import app
from resexp.data import staging
from resexp.config import compose
from resexp.data.sources import RawData, check_dataset, load_source
from resexp.data.staging import REAL_COUNTS
from resexp.data.synthetic import KNOBS, class_balance, make_synthetic
from resexp.errors import ConfigError, DataError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"
PER_BATCH = 4  # 5 batches -> 20 training images
TEST_SIZE = 10


def _write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[np.ndarray, list[int]]]:
    return write_cifar10(root, monkeypatch, PER_BATCH, TEST_SIZE)


def _assert_dtypes(raw: RawData) -> None:
    splits = [(raw.train_images, raw.train_labels), (raw.test_images, raw.test_labels)]
    for images, labels in splits:
        assert images.dtype == torch.uint8 and images.is_contiguous()
        assert labels.dtype == torch.int64


def _cifar_cfg(root: Path | str, download: bool = False) -> dict:
    return {"name": "cifar10", "root": str(root), "download": download}


def test_cifar10_round_trips_pixels_and_labels(tmp_path, monkeypatch):
    written = _write_cifar10(tmp_path, monkeypatch)
    raw = load_source(_cifar_cfg(tmp_path))

    assert isinstance(raw, RawData)
    assert (raw.name, raw.num_classes, raw.channels) == ("cifar10", 10, 3)
    assert raw.train_images.shape == (5 * PER_BATCH, 3, 32, 32)
    assert raw.test_images.shape == (TEST_SIZE, 3, 32, 32)
    _assert_dtypes(raw)
    # Training images come batch by batch, in file order.
    train = np.concatenate([written[name][0] for name in TRAIN_BATCHES])
    test = written["test_batch"][0]
    for i, c, y, x in [(0, 0, 0, 0), (3, 1, 5, 30), (4, 2, 31, 31), (19, 0, 17, 2)]:
        assert raw.train_images[i, c, y, x] == train[i, c * 1024 + y * 32 + x]
    assert torch.equal(raw.train_images, torch.from_numpy(train).view(-1, 3, 32, 32))
    assert torch.equal(raw.test_images, torch.from_numpy(test).view(-1, 3, 32, 32))
    assert raw.train_labels.tolist() == sum((written[name][1] for name in TRAIN_BATCHES), [])
    assert raw.test_labels.tolist() == written["test_batch"][1]


def test_root_expands_home(tmp_path, monkeypatch):
    _write_cifar10(tmp_path / "data", monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(load_source(_cifar_cfg("~/data")).test_labels) == TEST_SIZE


def test_missing_cifar_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DataError) as info:
        load_source(_cifar_cfg(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data.download=false" in message
    assert "cifar-10-python.tar.gz" in message and "RESEXP_DATA" in message
    assert "\n" not in message


def test_failed_download_is_reported(tmp_path, monkeypatch):
    def offline(self):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(DataError, match="download failed: URLError") as info:
        load_source(_cifar_cfg(tmp_path, download=True))
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)


def test_corrupt_cifar_file_is_named(tmp_path, monkeypatch):
    _write_cifar10(tmp_path, monkeypatch)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))
    # Corrupt files are reported even when a download is allowed: nothing is fetched over them.
    with pytest.raises(DataError, match="corrupt") as info:
        load_source(_cifar_cfg(tmp_path, download=True))
    assert str(path) in str(info.value)


def test_unparsable_cifar_file_with_matchingmd5(tmp_path, monkeypatch):
    _write_cifar10(tmp_path, monkeypatch)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"not a pickle")
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(path)]])
    with pytest.raises(DataError, match="could not be parsed"):
        load_source(_cifar_cfg(tmp_path))


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError, match="cifar10, cifar100, fashion_mnist, synthetic"):
        load_source({"name": "imagenet"})


def _write_idx(path: Path, array: np.ndarray) -> None:
    # IDX: two zero bytes, type 0x08 (uint8), the number of dims, big-endian int32 sizes, data.
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_fashion_mnist(root: Path) -> dict[str, np.ndarray]:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in [("train", 12), ("t10k", 5)]:
        arrays[f"{split}-images"] = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}-labels"] = rng.integers(0, 10, n, dtype=np.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte", arrays[f"{split}-images"])
        _write_idx(raw / f"{split}-labels-idx1-ubyte", arrays[f"{split}-labels"])
    return arrays


def _fashion_cfg(root: Path) -> dict:
    return {"name": "fashion_mnist", "root": str(root), "download": False}


def test_fashion_mnist_is_zero_padded_to_32(tmp_path):
    arrays = _write_fashion_mnist(tmp_path)
    raw = load_source(_fashion_cfg(tmp_path))

    assert (raw.name, raw.num_classes, raw.channels) == ("fashion_mnist", 10, 1)
    for images, labels, split in [(raw.train_images, raw.train_labels, "train"),
                                  (raw.test_images, raw.test_labels, "t10k")]:
        assert images.shape == (len(arrays[f"{split}-images"]), 1, 32, 32)
        assert images.dtype == torch.uint8 and images.is_contiguous()
        # The written pixels are all >= 1, so the 2-pixel border must be exactly the padding.
        assert torch.equal(images[:, 0, 2:30, 2:30], torch.from_numpy(arrays[f"{split}-images"]))
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        assert images[:, 0, border].eq(0).all()
        assert labels.dtype == torch.int64
        assert labels.tolist() == arrays[f"{split}-labels"].tolist()


def test_missing_fashion_mnist_names_the_folder(tmp_path):
    with pytest.raises(DataError) as info:
        load_source(_fashion_cfg(tmp_path))
    assert str(tmp_path / "FashionMNIST" / "raw") in str(info.value)


def test_truncated_fashion_mnist_file_is_named(tmp_path):
    _write_fashion_mnist(tmp_path)
    path = tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="corrupt") as info:
        load_source(_fashion_cfg(tmp_path))
    assert str(path) in str(info.value)


def _synthetic_cfg(**overrides) -> DictConfig:
    cfg = OmegaConf.load(CONFIGS / "synthetic.yaml")
    return OmegaConf.merge(cfg, {"train_size": 300, "test_size": 100, **overrides})


def test_synthetic_config_reaches_the_generator():
    cfg = _synthetic_cfg()
    assert all(key in cfg for key in KNOBS)  # every knob is documented in the config
    raw = load_source(cfg)
    assert (raw.name, raw.num_classes, raw.channels) == ("synthetic", 10, 3)
    assert raw.train_images.shape == (300, 3, 32, 32) and raw.test_images.shape == (100, 3, 32, 32)
    _assert_dtypes(raw)
    # The config's knobs are used: turning the noise off changes the images.
    quiet = load_source(_synthetic_cfg(noise=0.0))
    assert not torch.equal(quiet.train_images, raw.train_images)


def test_synthetic_is_deterministic_per_seed():
    a, b = make_synthetic(200, 50, seed=3), make_synthetic(200, 50, seed=3)
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    other = make_synthetic(200, 50, seed=4)
    assert not torch.equal(a.train_images, other.train_images)
    assert not torch.equal(a.test_images, other.test_images)


def test_synthetic_test_set_is_independent_of_train_size():
    small, large = make_synthetic(100, 50, seed=0), make_synthetic(200, 50, seed=0)
    assert torch.equal(small.test_images, large.test_images)


def test_synthetic_splits_are_disjoint():
    raw = make_synthetic(300, 100, seed=0)
    train = {bytes(image.numpy()) for image in raw.train_images}
    assert not any(bytes(image.numpy()) in train for image in raw.test_images)


def test_synthetic_labels_are_balanced_and_shuffled():
    raw = make_synthetic(300, 100, seed=0)
    assert torch.bincount(raw.train_labels, minlength=10).tolist() == [30] * 10
    assert torch.bincount(raw.test_labels, minlength=10).tolist() == [10] * 10
    assert not torch.equal(raw.train_labels, torch.arange(300) % 10)


def test_class_balance_spreads_the_remainder():
    labels = class_balance(23, 10, torch.Generator().manual_seed(0))
    assert torch.bincount(labels, minlength=10).tolist() == [3, 3, 3] + [2] * 7


@pytest.mark.parametrize("bad, message", [({"train_size": 0}, "data.train_size must be a positive integer; got 0"),
                                          ({"noise": -0.1}, "data.noise must be a number >= 0; got -0.1"),
                                          ({"modes": 0}, "data.modes must be a positive integer; got 0")])
def test_synthetic_rejects_bad_knobs(bad, message):
    with pytest.raises(ConfigError, match=message):
        compose(["data=synthetic", *(f"data.{k}={v}" for k, v in bad.items())])


# ---- staging: archives extracted on first use, `resexp data check` and `download` ----

def _tiny_counts(monkeypatch, name="cifar10", counts=(5 * PER_BATCH, TEST_SIZE)):
    monkeypatch.setitem(REAL_COUNTS, name, counts)


def test_cifar_tar_gz_is_extracted_on_first_use(tmp_path, monkeypatch):
    written = _write_cifar10(tmp_path / "staged", monkeypatch)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # as the distribution packs it: the folder at the top
        tar.add(tmp_path / "staged" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5(archive))
    raw = load_source(_cifar_cfg(tmp_path))  # download=false: the archive is enough
    assert torch.equal(raw.test_images, torch.from_numpy(written["test_batch"][0]).view(-1, 3, 32, 32))
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_corrupt_archive_is_named_and_nothing_is_extracted(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="archive .*cifar-10-python.tar.gz is corrupt"):
        load_source(_cifar_cfg(tmp_path))
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_fashion_mnist_gz_files_are_extracted_on_first_use(tmp_path, monkeypatch):
    arrays = _write_fashion_mnist(tmp_path)
    raw_folder = tmp_path / "FashionMNIST" / "raw"
    resources = []
    for path in sorted(raw_folder.iterdir()):
        gz = path.with_name(path.name + ".gz")
        gz.write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
        resources.append((gz.name, md5(gz)))
    monkeypatch.setattr(FashionMNIST, "resources", resources)
    raw = load_source(_fashion_cfg(tmp_path))
    assert raw.test_labels.tolist() == arrays["t10k-labels"].tolist()
    assert (raw_folder / "t10k-images-idx3-ubyte").is_file()


def _gzip_fashion_mnist(root: Path, level: int, damage: str | None = None) -> dict[str, tuple[str, int]]:
    """The unpacked files gzipped at `level` (one byte of `damage` flipped first) in their place;
    returns each file's md5 and size as written unpacked."""
    contents = {}
    for path in sorted((root / "FashionMNIST" / "raw").iterdir()):
        content = path.read_bytes()
        contents[path.name] = (hashlib.md5(content).hexdigest(), len(content))
        if path.name == damage:
            content = content[:-1] + bytes([content[-1] ^ 1])
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(content, compresslevel=level, mtime=0))
        path.unlink()
    return contents


def test_a_recompressed_fashion_mnist_archive_is_checked_by_what_it_unpacks_to(tmp_path, monkeypatch):
    """Debian's dataset-fashion-mnist gzips the same files anew: other archive md5s than torchvision's,
    the same contents. It used to be refused as corrupt; a changed content still is."""
    arrays = _write_fashion_mnist(tmp_path / "good")
    _write_fashion_mnist(tmp_path / "bad")
    good, bad = (tmp_path / kind / "FashionMNIST" / "raw" for kind in ("good", "bad"))
    upstream = {f"{p.name}.gz": hashlib.md5(gzip.compress(p.read_bytes(), compresslevel=9, mtime=0)).hexdigest()
                for p in sorted(good.iterdir())}
    monkeypatch.setattr(FashionMNIST, "resources", list(upstream.items()))
    unpacked = _gzip_fashion_mnist(tmp_path / "good", level=1)
    _gzip_fashion_mnist(tmp_path / "bad", level=1, damage="t10k-labels-idx1-ubyte")
    assert all(md5(good / name) != upstream[name] for name in upstream)  # recompressed: other archive md5s
    monkeypatch.setattr(staging, "FASHION_MNIST_UNPACKED", unpacked, raising=False)
    _tiny_counts(monkeypatch, "fashion_mnist", (12, 5))

    result = CliRunner().invoke(app, ["data", "check", "fashion_mnist", "--root", str(tmp_path / "good")])
    assert result.exit_code == 0, result.output
    assert result.output.split()[:2] == ["fashion_mnist", "ok"]
    assert ("12 train + 5 test images, 1x32x32, 10 classes; recompressed archives, contents verified: "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz") in " ".join(result.output.split())
    assert load_source(_fashion_cfg(tmp_path / "good")).test_labels.tolist() == arrays["t10k-labels"].tolist()

    check = check_dataset("fashion_mnist", tmp_path / "bad")
    assert check.state == "corrupt"
    assert f"archive {bad / 't10k-labels-idx1-ubyte.gz'} is corrupt (md5 mismatch" in check.detail
    assert not (bad / "t10k-labels-idx1-ubyte").exists()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        load_source(_fashion_cfg(tmp_path / "bad"))


def test_data_check_passes_a_whole_dataset_and_names_a_corrupt_file(tmp_path, monkeypatch):
    _write_cifar10(tmp_path, monkeypatch)
    _tiny_counts(monkeypatch)
    check = check_dataset("cifar10", tmp_path)
    assert (check.state, check.detail) == ("ok", "20 train + 10 test images, 3x32x32, 10 classes")
    result = CliRunner().invoke(app, ["data", "check", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output  # the others are missing, none corrupt
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert lines["cifar10"].split()[1] == "ok"
    assert lines["fashion_mnist"].split()[1] == "missing" and "resexp data download fashion_mnist" in lines[
        "fashion_mnist"]

    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:-10])
    check = check_dataset("cifar10", tmp_path)
    assert check.state == "corrupt" and str(path) in check.detail
    result = CliRunner().invoke(app, ["data", "check", "cifar10", "--root", str(tmp_path)])
    assert result.exit_code == 2 and str(path) in result.output


def test_data_check_counts_against_the_real_dataset(tmp_path, monkeypatch):
    _write_cifar10(tmp_path, monkeypatch)  # md5s match, but 20 images are not CIFAR-10's 50,000
    check = check_dataset("cifar10", tmp_path)
    assert check.state == "corrupt" and "the real dataset has 50000 + 10000" in check.detail


def test_data_check_of_a_truncated_fashion_mnist_file(tmp_path, monkeypatch):
    _write_fashion_mnist(tmp_path)
    _tiny_counts(monkeypatch, "fashion_mnist", (12, 5))
    assert check_dataset("fashion_mnist", tmp_path).state == "ok"
    path = tmp_path / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    check = check_dataset("fashion_mnist", tmp_path)
    assert check.state == "corrupt" and str(path) in check.detail


def test_data_download_fetches_then_checks(tmp_path, monkeypatch):
    staged = tmp_path / "elsewhere"
    _write_cifar10(staged, monkeypatch)
    _tiny_counts(monkeypatch)

    def fetch(self):  # what torchvision's download leaves: the extracted folder
        shutil.copytree(staged / "cifar-10-batches-py", Path(self.root) / "cifar-10-batches-py")

    monkeypatch.setattr(CIFAR10, "download", fetch)
    result = CliRunner().invoke(app, ["data", "download", "cifar10", "--root", str(tmp_path / "root")])
    assert result.exit_code == 0, result.output
    assert "cifar10: ok, 20 train + 10 test images" in result.output

    def offline(self):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(CIFAR10, "download", offline)
    result = CliRunner().invoke(app, ["data", "download", "cifar10", "--root", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "the download failed: URLError" in result.output and "Traceback" not in result.output
    unknown = CliRunner().invoke(app, ["data", "download", "synthetic"])
    assert unknown.exit_code == 2 and "nothing to download); choose from: cifar10, cifar100, fashion_mnist" in \
        unknown.output
