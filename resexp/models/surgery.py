"""Block surgery on a trained CIFAR net, undone afterwards: a block deleted (its shortcut alone)
or two blocks swapped. The lesion study (resexp/analysis/lesion.py) and the skip-loss probe
of training (resexp/engine/probes.py) use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from resexp.models.cifar_resnet import BasicBlock, ZeroPadShortcut


class ShortcutOnly(nn.Module):
    """A deleted block: its input through the shortcut only, then the block's final ReLU."""

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        stride, out_channels = block.conv1.stride[0], block.conv2.out_channels
        if block.shortcut is not None:
            self.path: nn.Module = block.shortcut
        elif stride != 1 or block.conv1.in_channels != out_channels:  # a plain net's downsampling block
            self.path = ZeroPadShortcut(out_channels, stride)
        else:
            self.path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.path(x))


def blocks_of(model: nn.Module) -> list[tuple[int, int]]:
    """(stage, position) of every block, in network order."""
    return [(s, b) for s, stage in enumerate(model.stages) for b in range(len(stage))]


@contextmanager
def lesioned(model: nn.Module, deleted: list[tuple[int, int]] = (),
             swapped: list[tuple[tuple[int, int], tuple[int, int]]] = ()) -> Iterator[nn.Module]:
    """The model with blocks deleted and pairs swapped, for the duration of the block; the
    original blocks are put back afterwards (the model's own modules, so nothing is copied)."""
    originals = {(s, b): model.stages[s][b] for s, b in blocks_of(model)}
    try:
        for first, second in swapped:
            model.stages[first[0]][first[1]] = originals[second]
            model.stages[second[0]][second[1]] = originals[first]
        for s, b in deleted:
            model.stages[s][b] = ShortcutOnly(originals[(s, b)])
        yield model
    finally:
        for (s, b), block in originals.items():
            model.stages[s][b] = block
