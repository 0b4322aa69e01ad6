"""The one input path: uint8 images resident on the training device, batches cut there.

Each split lives on the device as uint8 (N, C, H, W). A training batch is a slice of an
on-device permutation; augmentation (pad 4, random crop, random flip) and normalisation
(per-pixel mean subtraction) are a handful of vectorised tensor ops on the same device.
No DataLoader, no worker processes, no host round trip: the same code runs on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

PAD = 4  # the paper pads 4 pixels on each side before the random 32x32 crop


class DeviceBatcher:
    """Endless stream of augmented, mean-subtracted training batches, reshuffled every epoch.

    Taking a batch has a host half and a device half, so that the device half can be captured
    in a CUDA graph and replayed: `advance` (host: starts a new epoch when the current one has
    no full batch left, refreshing the permutation in place) and `cut` (device: the batch at an
    on-device cursor, augmented with the batcher's generator; no value is read back to the host).
    `next` is both, for eager use."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: torch.Tensor,
        batch_size: int,
        augment: bool,
        generator: torch.Generator,
        memory_format: torch.memory_format = torch.channels_last,
    ) -> None:
        self.images = images
        self.labels = labels
        self.mean = mean
        self.batch_size = batch_size
        self.augment = augment
        self.generator = generator
        self.memory_format = memory_format
        self.device = images.device
        # Padding once up front keeps the per-batch crop a pure gather. The mean is padded with
        # zeros too, so padded pixels are exactly 0 after mean subtraction, as in the paper.
        self.padded = F.pad(images, (PAD,) * 4) if augment else images
        self.padded_mean = F.pad(mean, (PAD,) * 4) if augment else mean
        self.order = self._permutation()
        self.position = 0  # host copy of the cursor: decides when an epoch ends
        self.cursor = torch.zeros((), dtype=torch.int64, device=self.device)
        self.epoch = 0
        self.batch_steps = torch.arange(batch_size, device=self.device)
        self.steps_y = torch.arange(images.shape[2], device=self.device)
        self.steps_x = torch.arange(images.shape[3], device=self.device)

    def _permutation(self) -> torch.Tensor:
        return torch.randperm(len(self.images), device=self.device, generator=self.generator)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.advance()
        return self.cut()

    def advance(self) -> None:
        """The host half of taking a batch; call it once before each `cut`."""
        # Epochs hold only full batches; the remainder of an epoch is dropped, like drop_last.
        if self.position + self.batch_size > len(self.order):
            self.order.copy_(self._permutation())  # in place: a captured cut keeps reading it
            self.cursor.zero_()
            self.position = 0
            self.epoch += 1
        self.position += self.batch_size

    def cut(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The device half: the batch at the cursor, augmented; moves the cursor on."""
        index = self.order[self.cursor + self.batch_steps]
        self.cursor += self.batch_size
        labels = self.labels[index]
        if not self.augment:
            return normalise(self.images[index], self.mean, self.memory_format), labels
        return self._crop_and_flip(index), labels

    def _crop_and_flip(self, index: torch.Tensor) -> torch.Tensor:
        n = len(index)
        # One offset pair per image, each of the (2*PAD+1)^2 offsets equally likely.
        offsets = torch.randint(0, 2 * PAD + 1, (2, n), device=self.device, generator=self.generator)
        flip = torch.rand(n, device=self.device, generator=self.generator) < 0.5
        rows = offsets[0, :, None] + self.steps_y  # (n, H)
        cols = offsets[1, :, None] + self.steps_x  # (n, W)
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reverses column order
        rows_, cols_ = rows[:, :, None], cols[:, None, :]
        crops = self.padded[index[:, None, None], :, rows_, cols_]  # (n, H, W, C)
        means = self.padded_mean[:, rows_, cols_]  # (C, n, H, W)
        out = crops.permute(0, 3, 1, 2).float().div_(255).sub_(means.permute(1, 0, 2, 3))
        return out.contiguous(memory_format=self.memory_format)

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        return {
            "order": self.order,
            "position": self.position,
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.order.copy_(state["order"])
        self.position = int(state["position"])
        self.cursor.fill_(self.position)
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"].cpu())  # a checkpoint loaded onto CUDA moved it


def normalise(
    images: torch.Tensor, mean: torch.Tensor, memory_format: torch.memory_format
) -> torch.Tensor:
    """uint8 images -> float in [0, 1] minus the per-pixel training mean (no std division)."""
    return (images.float().div_(255) - mean).contiguous(memory_format=memory_format)


def eval_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor,
    batch_size: int,
    memory_format: torch.memory_format = torch.channels_last,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The plain, un-augmented view of an evaluation split, in order."""
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        yield normalise(images[start:stop], mean, memory_format), labels[start:stop]
