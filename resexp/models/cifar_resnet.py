"""The CIFAR family of He et al. 2015 (sec. 4.2): 6n+2 layers, plain or residual.

Plain and residual nets share every layer; the residual one only adds the shortcut. Option A
shortcuts are parameter-free, so the twins have identical parameter counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resexp.model_config import (
    BN_MOMENTUM,
    DEFAULT_BN_BATCH,
    DEFAULT_ZERO_PAD,
    HE_INIT_MODE,
    STAGE_CHANNELS,
    Shortcut,
    ZeroPad,
    scaled_channels,
)
from resexp.models.recompute import run_blocks


def he_init_(model: nn.Module) -> None:
    """He et al. (2015b) init for every conv, BN as the identity.

    The classifier keeps PyTorch's default Linear init (as torchvision's ResNets do): He init
    assumes a ReLU after the layer, which the classifier lacks, and its smaller weights start
    the loss near ln(num_classes).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode=HE_INIT_MODE, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises each group of `group_size` images of the batch
    with that group's own statistics, as the paper's mini-batch of 128 "on two GPUs" was: each
    GPU's BN saw its own 64 images (no synchronised BN existed in 2015). The running statistics,
    which evaluation uses, are the first group's, as the first GPU's copy under PyTorch's
    DataParallel and Torch7's DataParallelTable (the one those save). group_size None, or a batch
    no larger than it: plain BatchNorm2d. Evaluation is plain BatchNorm2d's."""

    def __init__(self, channels: int, group_size: int | None = DEFAULT_BN_BATCH) -> None:
        super().__init__(channels, momentum=BN_MOMENTUM)
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.group_size is None or x.shape[0] <= self.group_size:
            return super().forward(x)
        if x.shape[0] % self.group_size:
            raise ValueError(f"a batch of {x.shape[0]} images does not split into BatchNorm groups of "
                             f"{self.group_size} (model.bn_batch)")
        first, *others = x.split(self.group_size)
        # The other groups' statistics normalise their own images and are then dropped, as the other GPUs' were.
        return torch.cat([super().forward(first), *(
            F.batch_norm(group, None, None, self.weight, self.bias, True, 0.0, self.eps) for group in others)])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the BN that follows subtracts the mean and has its own shift.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: stride-2 subsampling, then zero channels to the new width. `end` appends them
    after the existing channels; `split` puts half before and half after (the odd one, if any,
    after), as F.pad(x, (0, 0, 0, 0, p, p)) does in akamaster/pytorch_resnet_cifar10. Which one
    a net was trained with matters: the next blocks' weights expect the old channels in place."""

    def __init__(self, out_channels: int, stride: int, zero_pad: ZeroPad = DEFAULT_ZERO_PAD) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride
        self.zero_pad = zero_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra_channels = self.out_channels - x.shape[1]
        before = extra_channels // 2 if self.zero_pad == "split" else 0
        # F.pad lists dims from the last: (W left, W right, H top, H bottom, C front, C back).
        return F.pad(x, (0, 0, 0, 0, before, extra_channels - before))

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, stride={self.stride}, zero_pad={self.zero_pad}"


def projection_shortcut(in_channels: int, out_channels: int, stride: int,
                        bn_batch: int | None = DEFAULT_BN_BATCH) -> nn.Sequential:
    """Option B: 1x1 conv + BN, used only where the shape changes."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        SplitBatchNorm2d(out_channels, bn_batch),
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, then the shortcut is added (residual only), then ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, residual: bool, shortcut: Shortcut,
        zero_pad: ZeroPad = DEFAULT_ZERO_PAD, bn_batch: int | None = DEFAULT_BN_BATCH,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = SplitBatchNorm2d(out_channels, bn_batch)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = SplitBatchNorm2d(out_channels, bn_batch)
        # None marks the plain twin: no addition at all, not an addition of zeros.
        self.shortcut: nn.Module | None = None
        if residual:
            shape_changes = stride != 1 or in_channels != out_channels
            if not shape_changes:
                self.shortcut = nn.Identity()
            elif shortcut == "A":
                self.shortcut = ZeroPadShortcut(out_channels, stride, zero_pad)
            else:
                self.shortcut = projection_shortcut(in_channels, out_channels, stride, bn_batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """3x3 stem, three stages of n blocks on 32/16/8 maps, global average pool, Linear."""

    def __init__(
        self,
        depth: int,
        residual: bool = True,
        shortcut: Shortcut = "A",
        width: float = 1.0,
        zero_pad: ZeroPad = DEFAULT_ZERO_PAD,
        bn_batch: int | None = DEFAULT_BN_BATCH,
        in_channels: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        channels = [scaled_channels(c, width) for c in STAGE_CHANNELS]

        self.stem = nn.Sequential(
            conv3x3(in_channels, channels[0]), SplitBatchNorm2d(channels[0], bn_batch), nn.ReLU(inplace=True)
        )
        stages = []
        stage_in = channels[0]
        for stage_index, stage_out in enumerate(channels):
            blocks = []
            for block_index in range(blocks_per_stage):
                downsample = stage_index > 0 and block_index == 0
                blocks.append(
                    BasicBlock(stage_in, stage_out, 2 if downsample else 1, residual, shortcut, zero_pad, bn_batch)
                )
                stage_in = stage_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)
        self.recompute_segment = 0  # > 0: activation checkpointing in segments of this many blocks
        he_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = run_blocks(stage, x, self.recompute_segment)
        return self.fc(torch.flatten(self.pool(x), 1))
