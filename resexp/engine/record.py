"""A training run's summary.json: the loop reports what happens (a log point, an evaluation, a
checkpoint, the end) and RunRecord keeps the file true to it, rewriting it at each of them so
that `resexp status` can follow a run from its summary alone."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from typing import Any

import torch
from omegaconf import DictConfig

from resexp import __version__
from resexp.data import Data
from resexp.engine.runtime import Runtime
from resexp.errors import ResexpError, one_line
from resexp.rundir import RunDir
from resexp.summary import Segment, Summary, WarmupEnd


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """summary.json of one run: status, metrics, and one segment per process that trained it
    (what may differ between them: device, precision, execution, versions, host)."""

    def __init__(self, run: RunDir, summary: Summary, device: torch.device) -> None:
        self.run, self.summary, self.device = run, summary, device
        self.segment: Segment = summary.segments[-1]

    @classmethod
    def start(cls, run: RunDir, cfg: DictConfig, runtime: Runtime, data: Data, params: int, macs: int,
              iteration: int) -> RunRecord:
        """A process starts (or resumes) the run at `iteration`: earlier segments that went past
        it (a killed process's, beyond its last checkpoint) are dropped."""
        earlier = run.read_summary()
        segments = [s for s in (earlier.segments if earlier else []) if s.start < iteration]
        segment = Segment(start=iteration, end=iteration, max_iters=int(cfg.trainer.max_iters),
                          device=runtime.device_name, precision=runtime.precision, execution=runtime.execution,
                          torch=torch.__version__, resexp=__version__, host=platform.node(), started=now())
        record = cls(run, Summary(
            status="running", model=cfg.model.name, data=data.name, seed=int(cfg.seed),
            params=params, macs=macs, device=runtime.device_name, precision=runtime.precision,
            precision_reason=runtime.precision_reason, execution=runtime.execution,
            torch=torch.__version__, resexp=__version__, eval_split=data.eval_split,
            max_iters=int(cfg.trainer.max_iters), iterations=iteration, segments=[*segments, segment],
            checkpoint_iteration=iteration if run.checkpoint_path.is_file() else None, updated=now(),
        ), runtime.device)
        record.save()
        return record

    def save(self) -> None:
        self.run.write_summary(self.summary)

    def logged(self, iteration: int, train_error: float, train_loss: float, iters_per_s: float) -> None:
        self.summary.update(train_error=train_error, train_loss=train_loss, iterations=iteration,
                            iters_per_s=round(iters_per_s, 2), updated=now())
        self.segment.end = iteration
        if self.device.type == "cuda":  # reserved, not allocated: a captured graph's pool shows only there
            self.summary.peak_gpu_memory_gib = round(torch.cuda.max_memory_reserved(self.device) / 2**30, 2)

    def evaluated(self, split: str, error: float, loss: float, best_error: float) -> None:
        self.summary.evaluated(split, error, loss, best_error)

    def warmup_ended(self, end: dict[str, Any]) -> None:
        """The error warm-up ended (resexp.engine.schedules.ErrorWarmup.end): where, by what, at what error."""
        self.summary.error_warmup = WarmupEnd(**end)
        self.save()

    def checkpointed(self, iteration: int) -> None:
        self.summary.checkpoint_iteration = iteration  # where the same command resumes
        self.save()

    def ended(self, status: str, iteration: int, execution: str, **fields: Any) -> Summary:
        """The run stopped (checkpointed), diverged or finished; returns the final summary."""
        self.summary.execution = self.segment.execution = execution  # less a capture that fell back to eager
        self.segment.end = iteration
        self.summary.update(status=status, **fields, updated=now())
        self.save()
        return self.summary

    @contextmanager
    def failed_on_error(self) -> Iterator[None]:
        """An exception marks the run failed, with the reason; a second signal (KeyboardInterrupt)
        marks it stopped and says exactly what is on disk. The last checkpoint stays. If even the
        summary cannot be written (a full disk), the original error wins."""
        try:
            yield
        except KeyboardInterrupt:
            self.summary.update(status="stopped", stopped_by="SIGINT")
            with suppress(OSError):
                self.save()
            kept = self.summary.checkpoint_iteration
            raise KeyboardInterrupt(
                f"{self.run.path}: interrupted at iteration {self.summary.iterations} before its checkpoint; "
                + (f"the last checkpoint is at iteration {kept}: the same command resumes from there" if kept else
                   "no checkpoint was saved: the same command starts the run again")) from None
        except BaseException as e:  # a ResexpError's line says it all; anything else is named
            error = one_line(e) if isinstance(e, ResexpError) else f"{type(e).__name__}: {one_line(e)}"
            self.summary.update(status="failed", error=error)
            with suppress(OSError):
                self.save()
            raise
