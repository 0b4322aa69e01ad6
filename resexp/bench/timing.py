"""What the step benches share: a pipeline (one way to train, as a step function), the trainer's
own step as one, and timing several in interleaved rounds, so that a machine getting slower or
faster mid-run touches them all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig

from resexp.bench.memory import memory_estimate
from resexp.data import RawData, build_data
from resexp.engine.runtime import Runtime
from resexp.engine.step import TrainStep

PAPER_ITERS = 64_000


@dataclass
class Pipeline:
    """One way to train: a step function and what to call it in the report."""

    name: str
    precision: str
    layout: str
    execution: str  # eager, torch.compile, whole-step CUDA graph, ...
    step: Callable[[], None]  # one training step
    resident_bytes: int = 0  # CUDA memory held by its data, model and optimizer
    rounds_s: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    # what the process's caching allocator held at its peak (a captured graph's private pool
    # included, which `peak_bytes` cannot see); process-wide, so earlier pipelines' memory too
    peak_reserved_bytes: int = 0
    # GiB a training step keeps: memory_estimate(), called by the bench after the timed rounds (its
    # eager forward on the default stream must not run before the step is captured)
    estimate_memory: Callable[[], dict[str, float]] | None = None
    memory_estimate: dict[str, float] | None = None


def resexp_pipeline(cfg: DictConfig, raw: RawData, runtime: Runtime) -> Pipeline:
    """The trainer's step object, built as train() builds it (build_data, TrainStep.build) from
    the source `raw` the bench loaded once, at the recipe's first lr."""
    data = build_data(cfg.data, runtime.device, int(cfg.trainer.batch_size), int(cfg.seed), runtime.memory_format,
                      raw)
    step = TrainStep.build(cfg, data, runtime)
    step.set_lr(float(cfg.optim.lr))
    return Pipeline("resexp (the trainer's step)", runtime.precision, runtime.layout, runtime.execution, step,
                    estimate_memory=partial(memory_estimate, step.model, step.optimizer, data, runtime.autocast()))


def time_pipelines(builders: list[Callable[[], Pipeline]], device: torch.device, iters: int, warmup: int,
                   repeats: int) -> list[Pipeline]:
    """Build each pipeline (noting the device memory it keeps) and warm it up; then `repeats`
    rounds of `iters` timed steps that visit the pipelines in turn."""
    pipelines = []
    for build in builders:
        before = _allocated(device)
        pipeline = build()
        for _ in range(warmup):
            pipeline.step()
        # after the warm-up: gradients, optimizer state and a captured graph's memory pool exist
        pipeline.resident_bytes = _allocated(device) - before
        pipelines.append(pipeline)
    for _ in range(repeats):
        for pipeline in pipelines:
            _time_round(pipeline, iters, device)
    return pipelines


def _time_round(pipeline: Pipeline, iters: int, device: torch.device) -> None:
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _allocated(device)
    start = time.perf_counter()
    for _ in range(iters):
        pipeline.step()
    sync(device)
    pipeline.rounds_s.append(time.perf_counter() - start)
    if device.type == "cuda":  # what this pipeline needs alone: its resident memory plus its peak
        transient = torch.cuda.max_memory_allocated(device) - before
        pipeline.peak_bytes = max(pipeline.peak_bytes, pipeline.resident_bytes + transient)
        pipeline.peak_reserved_bytes = max(pipeline.peak_reserved_bytes, torch.cuda.max_memory_reserved(device))


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(rounds_s: list[float], iters: int, images_per_step: int) -> float:
    """Unrounded, from the median round: ratios between pipelines are taken from this, not from
    the report's rounded figures (2.03 images/s shows as 2.0 on a slow machine)."""
    return images_per_step * iters / statistics.median(rounds_s)


def round_stats(rounds_s: list[float], iters: int, images_per_step: int, peak_bytes: int,
                device: torch.device) -> dict[str, Any]:
    """ms/step (median round, and every round), images/s and peak GPU memory of timed rounds, as
    the report shows them."""
    ms = [1000 * s / iters for s in rounds_s]
    return {
        "ms_per_step": round(statistics.median(ms), 2), "ms_per_step_rounds": [round(m, 2) for m in ms],
        "images_per_s": round(images_per_s(rounds_s, iters, images_per_step), 1),
        "peak_memory_gib": round(peak_bytes / 2**30, 3) if device.type == "cuda" else None,
    }
