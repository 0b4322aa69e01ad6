"""Finished (or unfinished) runs on disk: their config, summary.json and TensorBoard scalars.

Notebook use:
    runs = find_runs("runs/fig6")
    groups = group_runs(runs)                 # {"plain-20": [Run, Run], "ResNet-56": [...]}
    steps, values = runs[0].series["test/error"]
    runs, unreadable = scan_runs("runs/fig6")  # and the run directories that cannot be read, with why
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.message import DecodeError
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from tensorboard.backend.event_processing import event_file_loader, io_wrapper
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat import tf

from resexp.config import flatten_keys, run_identity
from resexp.errors import ResexpError
from resexp.rundir import RunDir, find_run_dirs, is_reported

Series = dict[str, tuple[list[int], list[float]]]

# What the reports read of every run's config, and of a finished run's summary (train.py writes
# these at its last evaluation; {split} is the summary's eval_split).
REQUIRED_CONFIG_KEYS = ("seed", "model.name", "model.depth", "data.name", "trainer.max_iters")
FINISHED_SUMMARY_KEYS = ("train_error", "{split}_error", "best_{split}_error")


class UnreadableRun(ResexpError):
    """A run directory whose config.yaml, summary.json or TensorBoard events cannot be read."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"unreadable run {path}: {reason}")
        self.path = Path(path)
        self.reason = reason  # one phrase, e.g. "summary.json is not valid JSON"


class Run(RunDir):
    """A run directory as the reports read it: its config (a plain dict is converted) and
    summary, loaded; `series` reads the TensorBoard events on first use (find_runs has), then
    caches them; UnreadableRun if they cannot be read."""

    def __init__(self, path: str | Path, config: DictConfig | dict[str, Any], summary: dict[str, Any]) -> None:
        super().__init__(path)
        self.config = config if isinstance(config, DictConfig) else OmegaConf.create(config)
        self.summary = summary

    @cached_property
    def series(self) -> Series:
        return read_series(self.path)

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    @property
    def depth(self) -> int:
        return int(self.config.model.depth)

    @property
    def residual(self) -> bool:
        # Archs without the key (VGG) have no shortcuts: they belong with the plain nets.
        return bool(self.config.model.get("residual", False))

    @property
    def eval_split(self) -> str:
        return self.summary.get("eval_split", "test")

    @cached_property
    def identity(self) -> dict[str, Any]:
        """The experiment: the run's identity (resexp.config.run_identity) less the seed, plus
        how long it trained. Runs equal here are seeds of one experiment."""
        same_run = {k: v for k, v in run_identity(self.config).items() if k != "seed"}
        return {**same_run, "max_iters": int(self.config.trainer.max_iters)}


def scan_runs(sweep_dir: str | Path) -> tuple[list[Run], list[UnreadableRun]]:
    """The run directories under sweep_dir (see find_runs): those that read and those that do
    not, with why. An error with a one-line message when there is nothing to report on."""
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
    whose config, summary or events cannot be read is a warning (warnings.warn).
    """
    runs, unreadable = _read_runs(sweep_dir)
    _warn(unreadable)
    return runs


def require_runs(sweep_dir: str | Path) -> list[Run]:
    """find_runs, but an error with a one-line message when there is nothing to report on."""
    runs, unreadable = scan_runs(sweep_dir)
    _warn(unreadable)
    return runs


def unreadable_lines(unreadable: Sequence[UnreadableRun]) -> list[str]:
    """What a table says at its end of the runs it could not read (Markdown, after a blank line);
    [] if none."""
    if not unreadable:
        return []
    return ["", "Unreadable runs (not in the table):", *(f"- {u.path} ({u.reason})" for u in unreadable)]


def print_unreadable(unreadable: Sequence[UnreadableRun], console: Console) -> None:
    """unreadable_lines on the terminal: a path is neither wrapped nor read as markup."""
    for line in unreadable_lines(unreadable):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _read_runs(sweep_dir: str | Path) -> tuple[list[Run], list[UnreadableRun]]:
    runs, unreadable = [], []
    for found in find_run_dirs(sweep_dir, is_reported):
        try:
            run = _load_run(found)
            run.series  # read now: a corrupt event file raises UnreadableRun here
        except UnreadableRun as e:
            unreadable.append(e)
        else:
            runs.append(run)
    return runs, unreadable


def _warn(unreadable: list[UnreadableRun]) -> None:
    for run in unreadable:
        warnings.warn(str(run), stacklevel=3)  # pointing at the caller of find_runs / require_runs


def _load_run(found: RunDir) -> Run:
    """The Run in run_dir, or UnreadableRun if its config or summary cannot be read or lacks what
    the reports read (a truncated file may still parse)."""
    run_dir = found.path
    try:
        config = OmegaConf.load(found.config_path)
    except OSError as e:
        raise UnreadableRun(run_dir, f"config.yaml: {e.strerror}") from None
    except (UnicodeDecodeError, yaml.YAMLError):
        raise UnreadableRun(run_dir, "config.yaml is not valid YAML") from None
    if not isinstance(config, DictConfig):
        raise UnreadableRun(run_dir, "config.yaml is not a mapping")
    for key in REQUIRED_CONFIG_KEYS:
        if OmegaConf.select(config, key, default=None) is None:
            raise UnreadableRun(run_dir, f"config.yaml has no {key}")
    try:
        summary = json.loads(found.summary_path.read_bytes())
    except OSError as e:
        raise UnreadableRun(run_dir, f"summary.json: {e.strerror}") from None
    except ValueError:  # JSONDecodeError, or bytes that are no text
        raise UnreadableRun(run_dir, "summary.json is not valid JSON") from None
    if not isinstance(summary, dict):
        raise UnreadableRun(run_dir, "summary.json is not a JSON object")
    run = Run(run_dir, config, summary)
    if run.status == "finished":
        for key in (k.format(split=run.eval_split) for k in FINISHED_SUMMARY_KEYS):
            if key not in summary:
                raise UnreadableRun(run_dir, f"summary.json says finished but has no {key}")
    return run


def read_series(run_dir: str | Path) -> Series:
    """Every scalar the run logged: {tag: (steps, values)}, steps ascending, all points kept.

    size_guidance 0 keeps every point; EventAccumulator's default keeps a random sample of
    1000 per tag. Its purge logic drops points a killed run logged after its last checkpoint.
    Raises UnreadableRun for an event file that is truncated, corrupt or does not parse.
    """
    tb_dir = RunDir(run_dir).events_path
    if not tb_dir.is_dir():  # e.g. a sweep copied without its event files: nothing to plot
        return {}
    for path in sorted(tb_dir.iterdir()):
        if io_wrapper.IsSummaryEventsFile(str(path)):
            _check_records(Path(run_dir), path)
    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    try:
        accumulator.Reload()
    except DecodeError:  # a record whose checksum is right but whose bytes are no Event
        raise UnreadableRun(run_dir, "tb/ holds a record that is no TensorBoard event") from None
    series: Series = {}
    for tag in accumulator.Tags()["scalars"]:
        # One value per step; if a step was written twice the later write wins.
        by_step = {e.step: e.value for e in sorted(accumulator.Scalars(tag), key=lambda e: e.wall_time)}
        steps = sorted(by_step)
        series[tag] = (steps, [by_step[s] for s in steps])
    return series


def _check_records(run_dir: Path, path: Path) -> None:
    """UnreadableRun if an event file is truncated or fails a CRC check.

    EventAccumulator stops reading a file at its first bad record and says so only in a debug
    log, keeping the records before it: a short or empty curve without a word. Its record
    reader (TensorFlow's, or tensorboard's stub without TensorFlow) raises DataLossError there.
    """
    name = path.relative_to(run_dir)
    try:
        for _ in event_file_loader._make_tf_record_iterator(str(path)):
            pass
    except tf.errors.DataLossError:
        raise UnreadableRun(run_dir, f"{name} is truncated or corrupt") from None
    except OSError as e:
        raise UnreadableRun(run_dir, f"{name}: {e.strerror}") from None


def status_counts(runs: Iterable[Run]) -> str:
    """How many runs have each status, by status: "1 diverged, 2 finished"."""
    return ", ".join(f"{n} {status}" for status, n in sorted(Counter(r.status for r in runs).items()))


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
