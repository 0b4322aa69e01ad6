"""summary.json's schema: the one description of a run's summary, which the engine writes
through (resexp.engine.record.RunRecord, via RunDir.write_summary) and every reader checks
before use (RunDir.read_summary). A file that breaks it is one ResexpError line naming the key.

Errors are percentages in [0, 100], counts are non-negative integers, times carry a time zone;
losses may be non-finite (a diverged run's NaN loss is what it logged). Keys of other resexp
versions are kept (extra="allow"): an older or newer summary still reads, its known keys checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, Optional

from pydantic import ConfigDict

from resexp.errors import ResexpError
from resexp.sections import NonNegativeInt, PositiveInt, Section, parse, rule

def _aware_time(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


MAX_REASON = 300  # characters of a violation's message: a hostile value is not repeated whole

Percent = Annotated[Optional[float], rule("a percentage in [0, 100]", lambda v: math.isfinite(v) and 0 <= v <= 100)]
Loss = Annotated[Optional[float], rule("a number (NaN or infinite for a diverged run)")]
Amount = Annotated[Optional[float], rule("a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)]
Time = Annotated[str, rule("an ISO time with a time zone, e.g. 2026-01-01T12:00:00+00:00", _aware_time)]
Text = Annotated[Optional[str], rule("a string or null")]
Count = Optional[NonNegativeInt]


class Segment(Section):
    """One process's part of the run: the iterations it trained and how."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=True)

    start: NonNegativeInt
    end: NonNegativeInt
    max_iters: Optional[PositiveInt] = None
    device: Text = None
    precision: Text = None
    execution: Text = None
    torch: Text = None
    resexp: Text = None
    host: Text = None
    started: Optional[Time] = None


class WarmupEnd(Section):
    """Where the error warm-up ended (resexp.engine.schedules.ErrorWarmup.end)."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=True)

    ended_at: NonNegativeInt
    ended_by: Literal["error", "max_iters"]
    train_error: Percent
    over_images: NonNegativeInt


class Summary(Section):
    """summary.json: the status, what ran, how far, its latest metrics."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=True)

    status: Literal["running", "finished", "diverged", "stopped", "failed"]
    model: Text = None
    data: Text = None
    seed: Count = None
    params: Count = None
    macs: Count = None
    device: Text = None
    precision: Text = None
    precision_reason: Text = None
    execution: Text = None
    torch: Text = None
    resexp: Text = None
    host: Text = None
    eval_split: Literal["test", "val"] = "test"
    max_iters: Optional[PositiveInt] = None
    iterations: Count = None
    checkpoint_iteration: Count = None
    segments: Annotated[list[Segment], rule("a list of segments: mappings with start and end iterations")] = []
    updated: Optional[Time] = None
    train_error: Percent = None
    train_loss: Loss = None
    test_error: Percent = None
    test_loss: Loss = None
    best_test_error: Percent = None
    val_error: Percent = None
    val_loss: Loss = None
    best_val_error: Percent = None
    iters_per_s: Amount = None
    wall_time_s: Amount = None
    peak_gpu_memory_gib: Amount = None
    stopped_by: Text = None
    error: Text = None
    diverged_reason: Text = None
    diverged_at: Count = None
    error_warmup: Optional[WarmupEnd] = None

    def relations(self) -> list[str]:
        if self.status != "finished":
            return []
        split = self.eval_split
        needed = ("train_error", f"{split}_error", f"best_{split}_error")  # what the reports read of a finished run
        missing = [key for key in needed if getattr(self, key) is None]
        return [f"a finished run's summary needs {', '.join(missing)}"] if missing else []

    def error_on(self, split: str) -> float | None:
        """The latest error (%) on an evaluation split, "test" or "val"."""
        return getattr(self, f"{split}_error")

    def best_error_on(self, split: str) -> float | None:
        return getattr(self, f"best_{split}_error")

    def evaluated(self, split: str, error: float, loss: float, best_error: float) -> None:
        setattr(self, f"{split}_error", error)
        setattr(self, f"{split}_loss", loss)
        setattr(self, f"best_{split}_error", best_error)

    def update(self, **fields: Any) -> None:
        """Set fields by name (the schema's, or another version's kept as extra keys)."""
        for name, value in fields.items():
            setattr(self, name, value)

    def to_json(self) -> dict[str, Any]:
        """summary.json's content: the keys set (by the writer, or present in the file read), in the
        schema's order, then any other version's keys; NaN stays NaN (a diverged run's loss)."""
        return self.model_dump(exclude_unset=True)


def parse_summary(summary: Mapping[str, Any], where: str) -> Summary:
    """The Summary of summary.json's content; one ResexpError line, "WHERE: KEY must be ...", if it
    breaks the schema."""
    try:
        return parse(summary, Summary)
    except ResexpError as e:
        reason = str(e) if len(str(e)) <= MAX_REASON else str(e)[:MAX_REASON] + "..."  # a huge value, cut
        raise ResexpError(f"{where}: {reason}") from None
    except RecursionError:  # nesting too deep for the validator: no summary train.py writes
        raise ResexpError(f"{where}: nested too deeply") from None
