"""The one evaluation loop: error and loss on a run's evaluation split, for training's periodic
evaluation and for every analysis of a trained model."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from resexp.data import Data
from resexp.models.modes import in_mode


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, batch_size: int,
             memory_format: torch.memory_format = torch.contiguous_format,
             autocast: Callable[[], AbstractContextManager] = nullcontext,
             limit: int | None = None) -> tuple[float, float]:
    """Error (%) and mean cross-entropy on the first `limit` images of the evaluation split (all
    by default), the plain un-augmented view, in eval mode; the model's mode is put back after.
    Sums stay on the device (one host read at the end) in float64, exact for any split size."""
    errors = torch.zeros((), dtype=torch.float64, device=data.eval_images.device)
    loss = torch.zeros((), dtype=torch.float64, device=data.eval_images.device)
    seen = 0
    with in_mode(model):
        for images, labels in data.eval_batches(batch_size, memory_format):
            if limit is not None:
                if seen >= limit:
                    break
                images, labels = images[: limit - seen], labels[: limit - seen]
            with autocast():
                logits = model(images)
            errors += (logits.argmax(1) != labels).sum()
            loss += F.cross_entropy(logits.float(), labels, reduction="sum")
            seen += len(labels)
    return 100.0 * errors.item() / seen, loss.item() / seen
