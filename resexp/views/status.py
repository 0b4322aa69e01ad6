"""Where each run of a sweep is, from its summary.json alone: train rewrites it at every log
point, so a login node can follow jobs that run on other machines (`resexp status`)."""

from __future__ import annotations

import os
import platform
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from resexp.errors import ResexpError, one_line
from resexp.rundir import SUMMARY, RunDir, count_runs, find_run_dirs, has_summary
from resexp.summary import Summary
from resexp.terminal import duration, fitted_table


@dataclass
class RunStatus:
    """One row of `resexp status`."""

    path: Path
    status: str  # running, finished, diverged, stopped, failed; "dead" for a running run whose process is gone
    iteration: int | None
    max_iters: int | None
    iters_per_s: float | None
    eta_s: float | None  # running runs only
    train_error: float | None
    eval_error: float | None
    eval_split: str
    device: str
    updated: datetime | None
    note: str  # why it stopped, failed or died; "" otherwise


def run_statuses(directory: str | Path, now: datetime | None = None) -> list[RunStatus]:
    """A row per run directory (one with summary.json) at or under `directory`, by path."""
    root = Path(directory)
    runs, blocked = find_run_dirs(root, has_summary)
    if not runs and not blocked:
        raise ResexpError(f"no runs under {root} (no summary.json): not started yet, or not a run or sweep directory")
    now = now or datetime.now(timezone.utc)
    rows = [_status(run, now) for run in runs] + [_unreadable(path, why) for path, why in blocked]
    return sorted(rows, key=lambda row: row.path)


def _unreadable(path: Path, why: str) -> RunStatus:
    return RunStatus(path, "unreadable", None, None, None, None, None, None, "test", "", None, why)


def _status(run: RunDir, now: datetime) -> RunStatus:
    run_dir = run.path
    try:
        summary = run.read_summary()
    except ResexpError as e:  # corrupt, or off resexp.summary's schema: said, and the other runs shown
        return _unreadable(run_dir, one_line(e).replace(f"{run.summary_path}", SUMMARY))
    if summary is None:  # removed since it was found
        return RunStatus(run_dir, "unknown", None, None, None, None, None, None, "test", "", None, "")
    split, status, note = summary.eval_split, summary.status, ""
    updated = _parse_time(summary.updated)
    iteration, max_iters, speed = summary.iterations, summary.max_iters, summary.iters_per_s
    eta = None
    if status == "running":
        gone = _dead_process(run, summary)
        if gone:
            status, note = "dead", gone
        elif speed and iteration is not None and max_iters is not None and updated is not None:
            eta = max(0.0, (max_iters - iteration) / speed - (now - updated).total_seconds())
    elif status == "stopped":
        note = f"by {summary.stopped_by}; the same command resumes it"
    elif status == "failed":
        note = summary.error or ""
    elif status == "diverged":
        note = summary.diverged_reason or ""
    return RunStatus(run_dir, status, iteration, max_iters, speed, eta, summary.train_error,
                     summary.error_on(split), split, summary.device or "", updated, note)


def _dead_process(run: RunDir, summary: Summary) -> str:
    """Why a run that says "running" is not, when that can be told from here: it ran on this
    host and the process in its lock file is gone (killed, out of memory). "" otherwise."""
    if not summary.segments or summary.segments[-1].host != platform.node():
        return ""  # another machine's process: only its last update time tells
    try:
        pid = int(run.lock_path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} is gone (killed?); the same command resumes from the last checkpoint"
    except PermissionError:  # alive, another user's
        pass
    return ""


def _parse_time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


COLUMNS = ("run", "status", "iteration", "it/s", "ETA", "train err", "eval err", "device", "updated")


def status_rows(statuses: list[RunStatus], root: Path, now: datetime) -> list[tuple[str, ...]]:
    """The table's cells as text, run names relative to root."""
    rows = []
    for s in statuses:
        name = str(s.path.relative_to(root)) if s.path != root else s.path.name
        done = "?" if s.iteration is None else str(s.iteration)
        eval_error = "-" if s.eval_error is None else f"{s.eval_error:.2f}% {s.eval_split}"
        rows.append((
            name, s.status, f"{done}/{s.max_iters if s.max_iters is not None else '?'}",
            "-" if s.iters_per_s is None else f"{s.iters_per_s:.1f}",
            "-" if s.eta_s is None else duration(s.eta_s),
            "-" if s.train_error is None else f"{s.train_error:.2f}%", eval_error, s.device,
            "-" if s.updated is None else f"{duration((now - s.updated).total_seconds())} ago",
        ))
    return rows


def status_table(statuses: list[RunStatus], root: Path, now: datetime, width: int) -> Table:
    """The rich table of a terminal, with the notes (why failed, dead, stopped) below it."""
    colours = {"finished": "green", "running": "cyan", "failed": "red", "dead": "red", "diverged": "magenta",
               "stopped": "yellow", "unreadable": "red"}
    rows = [(row[0], f"[{colours[s.status]}]{row[1]}[/]" if s.status in colours else row[1], *row[2:])
            for s, row in zip(statuses, status_rows(statuses, root, now))]
    return fitted_table(COLUMNS, rows, str(root), width, shared=("device",))


def status_text(statuses: list[RunStatus], root: Path, now: datetime) -> str:
    """Plain aligned columns, for pipes and log files, and the notes and counts below."""
    rows = [COLUMNS, *status_rows(statuses, root, now)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([*lines, *status_notes(statuses, root), _counts(statuses)])


def status_notes(statuses: list[RunStatus], root: Path) -> list[str]:
    return [f"{s.path.relative_to(root) if s.path != root else s.path.name}: {s.status}: {s.note}"
            for s in statuses if s.note]


def _counts(statuses: list[RunStatus]) -> str:
    return count_runs(len(statuses), Counter(s.status for s in statuses))


def show_status(directory: str | Path, watch: bool = False, interval: float = 5.0) -> None:
    """`resexp status`: the table once, or with watch every `interval` seconds until Ctrl-C. A rich
    table on a terminal (redrawn in place), plain columns otherwise (a log file gets each refresh)."""
    console, root = Console(), Path(directory)

    def render() -> RenderableType:
        now = datetime.now(timezone.utc)
        statuses = run_statuses(root, now)
        if not console.is_terminal:
            return status_text(statuses, root, now)
        notes = [Text(line, style="dim") for line in status_notes(statuses, root)]
        return Group(status_table(statuses, root, now, console.width), *notes, Text(_counts(statuses)))

    view = render()  # a wrong directory fails here, before any refreshing
    if not watch:
        if console.is_terminal:
            console.print(view, highlight=False, soft_wrap=True)
        else:
            print(view)
        return
    try:
        if console.is_terminal:
            with Live(view, console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(render(), refresh=True)
        while True:  # a log file gets the table again at each refresh
            print(view, end="\n\n", flush=True)
            time.sleep(interval)
            view = render()
    except KeyboardInterrupt:  # the way to end --watch, not an error
        return
