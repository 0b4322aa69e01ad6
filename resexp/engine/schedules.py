"""Learning-rate schedules, as plain functions of the iteration, and the paper's ResNet-110
error warm-up, which ends on the training error rather than at an iteration."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any


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


class ErrorWarmup:
    """He et al.'s ResNet-110/1202 warm-up (optim.error_warmup): lr `lr` "until the training error
    is below 80% (about 400 iterations)", judged here on the training error over the last `window`
    images (the last ceil(window / batch) batches, each counted before its update), once that many
    have been seen; or at `max_iters` iterations, a guard for a net that never gets there.

    Why a window: one batch of 128 has a standard error of about 3.5 points near 80%, so the warm-up
    ends on noise: a net still at 85% has a batch under 80% with p = 6.4% per step (binomial), one at
    88% with p = 0.49%, 86% over 400 steps. Over 6,400 images (the configs' window, 50 batches of
    128) the standard error is sqrt(0.8 * 0.2 / 6400) = 0.5 points: a net truly at 81.5% ends early
    with p = 0.10% per window, 0.8% over the eight disjoint windows of a 400-iteration warm-up. The
    price is lag: the window's error trails the current one by about half a window, 25 iterations,
    against the paper's 400."""

    def __init__(self, cfg: Mapping, batch_size: int) -> None:
        self.until_error = float(cfg["until_error"])
        self.max_iters = int(cfg["max_iters"])
        self.batch_size = batch_size
        self.wrong: deque[int] = deque(maxlen=math.ceil(int(cfg["window"]) / batch_size))
        self.end: dict[str, Any] | None = None  # summary.json's error_warmup once it has ended

    @property
    def active(self) -> bool:
        return self.end is None

    def observe(self, wrong: int, iteration: int) -> bool:
        """The wrong predictions of the batch of step `iteration` (1-based); True when this ends the warm-up."""
        self.wrong.append(wrong)
        images = len(self.wrong) * self.batch_size
        error = 100.0 * sum(self.wrong) / images
        if len(self.wrong) == self.wrong.maxlen and error < self.until_error:
            ended_by = "error"
        elif iteration >= self.max_iters:
            ended_by = "max_iters"
        else:
            return False
        self.end = {"ended_at": iteration, "ended_by": ended_by, "train_error": round(error, 2),
                    "over_images": images}
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"wrong": list(self.wrong), "end": self.end}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.wrong.clear()
        self.wrong.extend(int(w) for w in state["wrong"])
        self.end = dict(state["end"]) if state["end"] is not None else None
