"""Activation checkpointing for the CIFAR nets (trainer.recompute_blocks): keep only the input
of every segment of N blocks for the backward and recompute the rest there, for nets too deep
for the device's memory (ResNet-1202). One extra forward per step; the maths is unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint



def run_blocks(blocks: nn.Sequential, x: torch.Tensor, segment: int) -> torch.Tensor:
    """blocks(x); with segment > 0 and gradients on, in checkpointed segments of that many blocks."""
    if segment <= 0 or not torch.is_grad_enabled():
        return blocks(x)
    for start in range(0, len(blocks), segment):
        part = blocks[start:start + segment]
        # no random numbers in these blocks: nothing to replay, and no RNG state read inside a CUDA graph
        x = checkpoint(part, x, use_reentrant=False, context_fn=partial(_contexts, part), preserve_rng_state=False)
    return x


def _contexts(part: nn.Module) -> tuple:
    """(around the forward, around the recomputation)."""
    return nullcontext(), frozen_running_statistics(part)


@contextmanager
def frozen_running_statistics(module: nn.Module) -> Iterator[None]:
    """The recomputation normalises with the batch's statistics, as the forward did, but must
    not move the BN running statistics (or their batch count) a second time: momentum 0 leaves
    them exactly as they are."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)

