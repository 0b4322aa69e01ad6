"""Finished (or unfinished) runs on disk: their config, summary.json and TensorBoard scalars.

Notebook use:
    runs = find_runs("runs/fig6")             # each run once (a copy of one is a DuplicateRun)
    groups = group_runs(runs)                 # {"plain-20": [Run, Run], "ResNet-56": [...]}
    steps, values = runs[0].series["test/error"]
    runs, unreadable = scan_runs("runs/fig6")  # and the run directories that cannot be read, with why
"""

from __future__ import annotations

import json
import logging
import struct
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import google_crc32c
from google.protobuf.message import DecodeError
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from tensorboard.backend.event_processing import io_wrapper
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resexp.errors import ResexpError, one_line
from resexp.rundir import (CONFIG, SUMMARY, RunDir, config_value, counted, find_run_dirs, flatten_keys,
                           is_reported, run_identity)
from resexp.summary import Summary

Series = dict[str, tuple[list[int], list[float]]]

# What the reports read of every run's config (its summary's keys are resexp.summary's schema).
# Each with what it must be: the reports compute with them.
def _count(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


REQUIRED_CONFIG = {
    "seed": ("an integer >= 0", _count(0, 2**63 - 1)),
    "model.name": ("a name", lambda v: isinstance(v, str) and v != ""),
    "model.depth": ("an integer from 1 to 100000", _count(1, 100_000)),
    "data.name": ("a name", lambda v: isinstance(v, str) and v != ""),
    "optim.name": ("a name", lambda v: isinstance(v, str) and v != ""),
    "trainer.max_iters": ("a positive integer", _count(1, 2**63 - 1)),
    "trainer.batch_size": ("a positive integer", _count(1, 2**63 - 1)),
}


class LeftOut(ResexpError):
    """A run directory a report leaves out, with why (one phrase, e.g. "summary.json: ...")."""

    what = "left out"  # what the run is, as the lists of left-out runs say it

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{self.what} run {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class UnreadableRun(LeftOut):
    """A run directory whose config.yaml, summary.json or TensorBoard events cannot be read, or
    break their schema (resexp.summary, resexp.rundir.read_config)."""

    what = "unreadable"


class DuplicateRun(LeftOut):
    """A second run directory of a run already read (the same resexp.rundir.run_identity and
    max_iters): a copy or a backup, which must not count as another seed."""

    what = "duplicate"


class Run(RunDir):
    """A run directory as the reports read it: its config (plain values: a DictConfig is made
    only where `config` is asked for) and summary, loaded; `series` reads the TensorBoard events
    on first use (find_runs has), then caches them; UnreadableRun if they cannot be read."""

    def __init__(self, path: str | Path, config: DictConfig | dict[str, Any], summary: Summary) -> None:
        super().__init__(path)
        self.config_values = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
        self.summary = summary

    def value(self, key: str) -> Any:
        """A dotted key of the run's config ("model.depth"); None where the config lacks it (an older run)."""
        return config_value(self.config_values, key)

    @cached_property
    def series(self) -> Series:
        return read_series(self.path)

    @property
    def status(self) -> str:
        return self.summary.status

    @property
    def seed(self) -> int:
        return int(self.config_values["seed"])

    @property
    def depth(self) -> int:
        return int(self.config_values["model"]["depth"])

    @property
    def residual(self) -> bool:
        # Archs without the key (VGG) have no shortcuts: they belong with the plain nets.
        return bool(self.config_values["model"].get("residual", False))

    @property
    def eval_split(self) -> str:
        return self.summary.eval_split

    @cached_property
    def identity(self) -> dict[str, Any]:
        """The experiment: the run's identity (resexp.rundir.run_identity) less the seed, plus
        how long it trained. Runs equal here are seeds of one experiment."""
        same_run = {k: v for k, v in run_identity(self.config_values).items() if k != "seed"}
        return {**same_run, "max_iters": int(self.config_values["trainer"]["max_iters"])}


def scan_runs(sweep_dir: str | Path) -> tuple[list[Run], list[LeftOut]]:
    """The run directories under sweep_dir (see find_runs): those that read, each run once, and
    those left out (unreadable, or a duplicate), with why. An error with a one-line message when
    there is nothing to report on."""
    if not Path(sweep_dir).is_dir():
        raise ResexpError(f"{sweep_dir} is not a directory")
    runs, unreadable = _read_runs(sweep_dir)
    if not runs and not unreadable:
        raise ResexpError(f"no run directories (config.yaml with summary.json) under {sweep_dir}")
    if not runs:
        raise ResexpError(f"all {len(unreadable)} run directories under {sweep_dir} are unreadable, "
                          f"e.g. {unreadable[0].path}: {unreadable[0].reason}")
    return runs, unreadable


def find_runs(sweep_dir: str | Path) -> list[Run]:
    """Every run directory under sweep_dir (at any depth, sweep_dir itself included) that reads, by path.

    A run directory holds config.yaml and summary.json; directories with only a config.yaml
    (Hydra's .hydra/, runs that failed before starting) are skipped. Its TensorBoard events are
    read here, so that no report stops part-way on a corrupt file, and kept in Run.series. A run
    whose config, summary or events cannot be read (or break their schema), and a second folder of
    a run already read, are a warning each (warnings.warn).
    """
    runs, unreadable = _read_runs(sweep_dir)
    _warn(unreadable)
    return runs


def require_runs(sweep_dir: str | Path) -> list[Run]:
    """find_runs, but an error with a one-line message when there is nothing to report on."""
    runs, unreadable = scan_runs(sweep_dir)
    _warn(unreadable)
    return runs


def unreadable_lines(unreadable: Sequence[LeftOut]) -> list[str]:
    """What a table says at its end of the runs it left out (Markdown, after a blank line); [] if none."""
    if not unreadable:
        return []
    return ["", "Runs left out (not in the table):", *(f"- {u.path} ({u.what}: {u.reason})" for u in unreadable)]


def say_left_out(left_out: Sequence[LeftOut]) -> None:
    """A warning line on stderr per run left out, as `resexp table`, `figure` and `report` say them."""
    for run in left_out:
        print(f"resexp: warning: {run}", file=sys.stderr)  # plain print: a path is not rich markup


def print_unreadable(unreadable: Sequence[LeftOut], console: Console) -> None:
    """unreadable_lines on the terminal: a path is neither wrapped nor read as markup."""
    for line in unreadable_lines(unreadable):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _read_runs(sweep_dir: str | Path) -> tuple[list[Run], list[LeftOut]]:
    """The runs that read, each run once; the others, with why: unreadable (by path), then the
    duplicates. Of two folders of one run, a finished one is kept, else the first by path."""
    found, blocked = find_run_dirs(sweep_dir, is_reported)
    runs, left_out = [], [UnreadableRun(path, why) for path, why in blocked]
    for run_dir in found:
        try:
            run = _load_run(run_dir)
            run.series  # read now: a corrupt event file raises UnreadableRun here
        except UnreadableRun as e:
            left_out.append(e)
        else:
            runs.append(run)
    kept: dict[str, Run] = {}
    duplicates = []
    for run in sorted(runs, key=lambda r: (r.status != "finished", r.path)):
        first = kept.setdefault(json.dumps({**run.identity, "seed": run.seed}, sort_keys=True, default=str), run)
        if first is not run:
            duplicates.append(DuplicateRun(run.path, f"the same run as {first.path} (config and seed), counted once"))
    return sorted(kept.values(), key=lambda r: r.path), sorted(left_out, key=lambda u: u.path) + duplicates


def _warn(unreadable: list[LeftOut]) -> None:
    for run in unreadable:
        warnings.warn(str(run), stacklevel=3)  # pointing at the caller of find_runs / require_runs


def _load_run(found: RunDir) -> Run:
    """The Run in run_dir, or UnreadableRun if its config or summary cannot be read, breaks its
    schema or lacks what the reports read."""
    try:
        config = found.config_values
    except ResexpError as e:
        raise UnreadableRun(found.path, _reason(e, found.config_path, CONFIG)) from None
    for key, (allowed, valid) in REQUIRED_CONFIG.items():
        value = config_value(config, key)
        if value is None:
            raise UnreadableRun(found.path, f"config.yaml has no {key}")
        if not valid(value):
            raise UnreadableRun(found.path, f"config.yaml: {key} must be {allowed}; got {str(value)[:80]!r}")
    try:
        summary = found.read_summary()
    except ResexpError as e:
        raise UnreadableRun(found.path, _reason(e, found.summary_path, SUMMARY)) from None
    if summary is None:  # removed since it was found
        raise UnreadableRun(found.path, "summary.json: no such file")
    run = Run(found.path, config, summary)
    try:
        run.identity  # what groups the runs and tells duplicates: a config.yaml must give it
    except (KeyError, TypeError, ValueError, AttributeError, OmegaConfBaseException) as e:
        raise UnreadableRun(found.path, f"config.yaml does not describe a run ({type(e).__name__}: {e})"[:300]) from None
    return run


def _reason(error: ResexpError, path: Path, name: str) -> str:
    """A reader's error as the phrase of an unreadable run: the file by its name, no advice for train."""
    return one_line(error).replace(str(path), name).split("; restore it")[0].split("; move it away")[0]


def read_series(run_dir: str | Path) -> Series:
    """Every scalar the run logged: {tag: (steps, values)}, steps ascending, all points kept.

    size_guidance 0 keeps every point; EventAccumulator's default keeps a random sample of
    1000 per tag. Its purge logic drops points a killed run logged after its last checkpoint
    (and says so in a warning per resume, which is TensorBoard's, not the user's: not shown).
    Raises UnreadableRun for an event file that is truncated, corrupt or does not parse.
    """
    tb_dir = RunDir(run_dir).events_path
    if not tb_dir.is_dir():  # e.g. a sweep copied without its event files: nothing to plot
        return {}
    try:
        paths = sorted(tb_dir.iterdir())
    except OSError as e:
        raise UnreadableRun(run_dir, f"tb/: {e.strerror}") from None
    for path in paths:
        if io_wrapper.IsSummaryEventsFile(str(path)):
            check_records(Path(run_dir), path)
    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    tensorboard_log = logging.getLogger("tensorboard")
    level = tensorboard_log.level
    tensorboard_log.setLevel(logging.ERROR)
    try:
        accumulator.Reload()
    except DecodeError:  # a record whose checksum is right but whose bytes are no Event
        raise UnreadableRun(run_dir, "tb/ holds a record that is no TensorBoard event") from None
    finally:
        tensorboard_log.setLevel(level)
    series: Series = {}
    for tag in accumulator.Tags()["scalars"]:
        # One value per step; if a step was written twice the later write wins.
        by_step = {e.step: e.value for e in sorted(accumulator.Scalars(tag), key=lambda e: e.wall_time)}
        steps = sorted(by_step)
        series[tag] = (steps, [by_step[s] for s in steps])
    return series


MAX_RECORD = 16 * 2**20  # bytes of one event record: resexp logs scalars and short texts (a few hundred bytes)
MAX_EVENTS = 256 * 2**20  # bytes of one event file: 64k iterations of every tag are a few MB


def masked_crc32c(data: bytes) -> int:
    """A TFRecord's checksum: CRC-32C (in C, google-crc32c: a sweep's reports check every record of
    thousands of event files), rotated right by 15 bits plus a constant, as TFRecord masks it."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def check_records(run_dir: Path, path: Path) -> None:
    """UnreadableRun if an event file is larger than MAX_EVENTS, truncated, holds a record larger
    than MAX_RECORD or fails a CRC check.

    EventAccumulator stops reading a file at its first bad record and says so only in a debug
    log, keeping the records before it: a short or empty curve without a word. And it believes
    a record's length field, however large. So the TFRecord framing (length, its CRC, the data,
    its CRC) is checked here first.
    """
    name = path.relative_to(run_dir)
    try:
        if path.stat().st_size > MAX_EVENTS:
            raise UnreadableRun(run_dir, f"{name} is larger than {MAX_EVENTS // 2**20} MiB")
        with open(path, "rb") as file:
            while header := file.read(12):
                if len(header) < 12:
                    raise UnreadableRun(run_dir, f"{name} is truncated or corrupt")
                length, header_crc = struct.unpack("<QI", header)
                if masked_crc32c(header[:8]) != header_crc:
                    raise UnreadableRun(run_dir, f"{name} is truncated or corrupt")
                if length > MAX_RECORD:
                    raise UnreadableRun(run_dir, f"{name} has a record of {length} bytes (at most "
                                                 f"{MAX_RECORD // 2**20} MiB)")
                data, data_crc = file.read(length), file.read(4)
                if len(data) < length or len(data_crc) < 4 or masked_crc32c(data) != struct.unpack("<I", data_crc)[0]:
                    raise UnreadableRun(run_dir, f"{name} is truncated or corrupt")
    except OSError as e:
        raise UnreadableRun(run_dir, f"{name}: {e.strerror}") from None


def status_counts(runs: Iterable[Run]) -> str:
    """How many runs have each status, by status: "1 diverged, 2 finished"."""
    return counted(dict(sorted(Counter(r.status for r in runs).items())))


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by experiment (config equal up to the seed), by seed, keyed by a unique label.

    The label is the model's name ("plain-20"); where several experiments share it (an lr
    sweep, two datasets) the config values that tell them apart are appended.
    """
    return group_by_setting(sorted(runs, key=lambda r: r.seed), lambda r: r.identity)


def group_by_setting(runs: Iterable[Run], setting: Callable[[Run], dict[str, Any]]) -> dict[str, list[Run]]:
    """Runs grouped by setting(run) (runs with equal settings form one group), groups and their
    runs in the order of `runs`, keyed by a unique label.

    The label is the model's name (RunDir.label); where several groups share it, the values of
    the (flattened) setting that tell them apart are appended: "vit_post (model.residual=False)".
    group_runs groups by the whole experiment; the norms report by the experiment less depth and warmup.
    """
    groups: dict[str, tuple[dict[str, Any], list[Run]]] = {}
    for run in runs:
        values = setting(run)
        key = json.dumps(values, sort_keys=True, default=str)
        groups.setdefault(key, (flatten_keys(values), []))[1].append(run)
    by_label: dict[str, list[tuple[dict[str, Any], list[Run]]]] = {}
    for flat, members in groups.values():
        by_label.setdefault(members[0].label, []).append((flat, members))
    labelled = {}
    for label, same_name in by_label.items():
        keys = set().union(*(flat for flat, _ in same_name))
        differing = sorted(k for k in keys if len({repr(flat.get(k)) for flat, _ in same_name}) > 1)
        for flat, members in same_name:
            suffix = ", ".join(f"{k}={flat.get(k)}" for k in differing)
            labelled[f"{label} ({suffix})" if suffix else label] = members
    return labelled
