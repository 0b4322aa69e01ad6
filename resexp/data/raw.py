"""RawData: what every dataset source returns, before anything moves to the device."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RawData:
    train_images: torch.Tensor  # uint8 (N, C, 32, 32), contiguous
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    channels: int
    name: str
