"""The one way resexp runs a model in another mode: in_mode sets train or eval mode for the block
and puts every module's own mode back after, so a model with some submodules in another mode (a
frozen BatchNorm, say) comes back as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def in_mode(model: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """Eval mode (training=False) or train mode inside the block; each module's mode restored."""
    modes = {module: module.training for module in model.modules()}
    model.train(training)
    try:
        yield model
    finally:
        for module, was_training in modes.items():
            module.training = was_training
