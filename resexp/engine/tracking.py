"""What a run reports: TensorBoard scalars, progress on the terminal, summary.json."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.tensorboard import SummaryWriter

from resexp.errors import ResexpError


def tensorboard_writer(run_dir: Path, checkpoint_iteration: int | None) -> SummaryWriter:
    # purge_step drops events an interrupted run wrote after its last checkpoint (all of them when
    # it left none), so the curves continue from where training resumes instead of doubling back.
    # Events at the checkpoint's own iteration were written before it was saved and stay.
    tb = run_dir / "tb"
    if checkpoint_iteration is not None:
        purge = checkpoint_iteration + 1
    else:
        purge = 0 if any(tb.glob("events.out.tfevents.*")) else None
    return SummaryWriter(str(tb), purge_step=purge)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: readers see the old file or the new one, never half of one."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`, unique to this process and call, renamed onto `path` when
    the block succeeds and removed when it fails (a full disk leaves no half-written file)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from the rest of a cluster group
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, None if absent; a corrupt one is a one-line ResexpError."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ResexpError(f"{path} is corrupt ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          "move it away (it is rewritten from the checkpoint)") from None
    if not isinstance(data, dict):
        raise ResexpError(f"{path} is corrupt (not a JSON object); move it away (it is rewritten from the checkpoint)")
    return data


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
