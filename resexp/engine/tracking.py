"""What a run shows while it trains: TensorBoard scalars and progress on the terminal."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.tensorboard import SummaryWriter


def tensorboard_writer(events: Path, checkpoint_iteration: int | None) -> SummaryWriter:
    # purge_step drops events an interrupted run wrote after its last checkpoint (all of them when
    # it left none), so the curves continue from where training resumes instead of doubling back.
    # Events at the checkpoint's own iteration were written before it was saved and stay.
    if checkpoint_iteration is not None:
        purge = checkpoint_iteration + 1
    else:
        purge = 0 if any(events.glob("events.out.tfevents.*")) else None
    return SummaryWriter(str(events), purge_step=purge)


class ProgressReport:
    """A rich bar on a terminal; plain periodic lines in batch jobs (logs stay readable)."""

    def __init__(self, mode: str, name: str, start: int, total: int) -> None:
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "lines"
        self.mode, self.name, self.total = mode, name, total
        self.last_time, self.last_iter = time.perf_counter(), start
        self.bar: Progress | None = None
        if mode == "bar":
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} it"),
                TextColumn("train err {task.fields[error]:5.2f}%  lr {task.fields[lr]:.4g}"),
                TextColumn("{task.fields[speed]:.1f} it/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task(name, total=total, completed=start, error=100.0, lr=0.0, speed=0.0)
            self.bar.start()

    def update(self, iteration: int, train_error: float, lr: float) -> float:
        """Report progress; returns iterations per second since the last update."""
        now = time.perf_counter()
        speed = (iteration - self.last_iter) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_iter = now, iteration
        if self.bar is not None:
            self.bar.update(self.task, completed=iteration, error=train_error, lr=lr, speed=speed)
        elif self.mode == "lines":
            eta = (self.total - iteration) / max(speed, 1e-9)
            print(
                f"[{self.name}] it {iteration}/{self.total}  train err {train_error:.2f}%  "
                f"lr {lr:.4g}  {speed:.1f} it/s  eta {eta / 60:.1f} min",
                flush=True,
            )
        return speed

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)
        elif self.mode == "lines":
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
