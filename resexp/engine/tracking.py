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


# Plain lines (logs, pipes): at least one line this often, also between log points that are minutes apart.
HEARTBEAT_S = 30.0


class ProgressReport:
    """A rich bar on a terminal; plain periodic lines in batch jobs and pipes (logs stay readable)."""

    def __init__(self, mode: str, name: str, start: int, total: int) -> None:
        self.mode, self.name, self.total = resolve_mode(mode), name, total
        self.last_time, self.last_iter = time.perf_counter(), start  # the last log point: its speed
        # The last line or bar refresh; None until the first step is done, which may have compiled
        # or captured the step for minutes: the first heartbeat's speed starts after it.
        self.last_shown: float | None = None
        self.shown_iter = start
        self.bar: Progress | None = None
        if self.mode == "bar":
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
        """Report a log point; returns iterations per second since the last one."""
        now = time.perf_counter()
        speed = (iteration - self.last_iter) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_iter = now, iteration
        self.last_shown, self.shown_iter = now, iteration
        if self.bar is not None:
            self.bar.update(self.task, completed=iteration, error=train_error, lr=lr, speed=speed)
        elif self.mode == "lines":
            print(f"[{self.name}] it {iteration}/{self.total}  train err {train_error:.2f}%  lr {lr:.4g}  "
                  f"{speed:.1f} it/s  eta {self._eta(iteration, speed)}", flush=True)
        return speed

    def tick(self, iteration: int) -> None:
        """Called after every step, cheap: between log points the bar's count moves once a second, and
        in lines mode a line (no error: reading it would wait for the device) comes every HEARTBEAT_S
        of steps; building, evaluating and saving print their own lines or none."""
        now = time.perf_counter()
        if self.last_shown is None:
            self.last_shown, self.shown_iter = now, iteration
            return
        due = HEARTBEAT_S if self.mode == "lines" else 1.0
        if self.mode == "none" or now - self.last_shown < due:
            return
        speed = (iteration - self.shown_iter) / max(now - self.last_shown, 1e-9)
        self.last_shown, self.shown_iter = now, iteration
        if self.bar is not None:
            self.bar.update(self.task, completed=iteration)
        else:
            print(f"[{self.name}] it {iteration}/{self.total}  {speed:.2f} it/s  eta {self._eta(iteration, speed)}",
                  flush=True)

    def _eta(self, iteration: int, speed: float) -> str:
        return f"{(self.total - iteration) / max(speed, 1e-9) / 60:.1f} min"

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        elif self.mode == "lines":
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def resolve_mode(mode: str) -> str:
    """trainer.progress as shown: auto is a bar on a terminal, plain lines otherwise."""
    if mode == "auto":
        return "bar" if sys.stdout.isatty() else "lines"
    return mode


def announce(mode: str, text: str) -> None:
    """A run's first line: what, where, on which device, before the data and model are built."""
    if resolve_mode(mode) != "none":
        print(text, flush=True)
