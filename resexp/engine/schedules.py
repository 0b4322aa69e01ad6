"""Learning-rate schedules, as plain functions of the iteration."""

from __future__ import annotations

import math
from collections.abc import Mapping



def learning_rate(optim: Mapping, iteration: int, max_iters: int, in_error_warmup: bool = False) -> float:
    """lr at `iteration` (0-based) for the optim config; `in_error_warmup` is the paper's
    ResNet-110 warm-up phase (lr optim.error_warmup.lr until the training error drops)."""
    if in_error_warmup:
        return float(optim["error_warmup"]["lr"])
    base = float(optim["lr"])
    warmup = int(optim.get("warmup_iters", 0))
    if iteration < warmup:
        return base * (iteration + 1) / warmup
    kind = optim["schedule"]
    if kind == "step":
        passed = sum(iteration >= round(f * max_iters) for f in optim["milestones"])
        return base * float(optim["gamma"]) ** passed
    if kind == "cosine":
        progress = (iteration - warmup) / max(1, max_iters - warmup)
        return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return base  # constant (resexp.schema: step, cosine or constant)
