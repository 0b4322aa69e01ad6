"""build_data(cfg): a dataset source turned into device-resident splits and a batcher."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from resexp.data.batcher import DeviceBatcher, eval_batches, normalise
from resexp.data.raw import RawData
from resexp.data.sources import load_source, local_source
from resexp.errors import ConfigError

__all__ = ["Data", "DeviceBatcher", "RawData", "build_data", "device_data", "eval_batches", "normalise", "load_source",
           "local_source"]

VAL_SPLIT_SEED = 0  # the held-out val images are the same for every run seed


@dataclass
class Data:
    train: DeviceBatcher
    eval_images: torch.Tensor  # uint8 (N, C, H, W) on the device
    eval_labels: torch.Tensor
    eval_split: str  # "test", or "val" when data.val_size > 0
    mean: torch.Tensor  # per-pixel mean of the training images, (C, H, W) in [0, 1]
    channels: int
    num_classes: int
    name: str

    def eval_batches(self, batch_size: int, memory_format: torch.memory_format):
        return eval_batches(self.eval_images, self.eval_labels, self.mean, batch_size, memory_format)


def build_data(
    cfg: Mapping,
    device: torch.device,
    batch_size: int,
    seed: int,
    memory_format: torch.memory_format = torch.channels_last,
    raw: RawData | None = None,
) -> Data:
    """The data config's splits on the device; `raw`: its source already loaded (local_source, for
    the bench), else load_source(cfg) loads it."""
    return device_data(load_source(cfg) if raw is None else raw, int(cfg["val_size"]), bool(cfg["augment"]),
                       device, batch_size, seed, memory_format)


def device_data(
    raw: RawData,
    val_size: int,
    augment: bool,
    device: torch.device,
    batch_size: int,
    seed: int,
    memory_format: torch.memory_format = torch.channels_last,
) -> Data:
    """Raw uint8 splits moved to the device, with the batcher that augments them there."""
    train_images, train_labels, eval_images, eval_labels, split = _split(raw, val_size)
    train_images, eval_images = train_images.to(device), eval_images.to(device)
    train_labels, eval_labels = train_labels.to(device), eval_labels.to(device)
    # Summing uint8 in float64 avoids a float copy of the whole training set.
    mean = (train_images.sum(0, dtype=torch.float64) / (255 * len(train_images))).float()
    if batch_size > len(train_images):
        raise ConfigError(f"trainer.batch_size={batch_size} exceeds the {len(train_images)} training images")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    train = DeviceBatcher(
        train_images, train_labels, mean, batch_size, augment, generator, memory_format
    )
    return Data(train, eval_images, eval_labels, split, mean, raw.channels, raw.num_classes, raw.name)


def _split(raw: RawData, val_size: int):
    """The paper tuned on a 45k/5k train/val split of the training set (val_size=5000)."""
    if val_size <= 0:
        return raw.train_images, raw.train_labels, raw.test_images, raw.test_labels, "test"
    if val_size >= len(raw.train_images):
        raise ConfigError(
            f"data.val_size={val_size} must be smaller than the {len(raw.train_images)} training images"
        )
    order = torch.randperm(len(raw.train_images), generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    train, val = order[:-val_size], order[-val_size:]
    return raw.train_images[train], raw.train_labels[train], raw.train_images[val], raw.train_labels[val], "val"
