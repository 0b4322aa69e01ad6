"""A run directory: the one place that knows its files (config, summary, checkpoint, events,
lock), what the run is called, and how runs are found under a folder. Training, sweeps,
reports, status and the analyses all reach a run's files through RunDir.

Its guard lives here too: one process at a time (an OS lock), only the same run continues it
(run_identity, below), and a finished run is never degraded.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import yaml
from omegaconf import DictConfig, OmegaConf

from resexp.errors import ResexpError, one_line
from resexp.files import atomic_path, load_data_only, read_json, read_limited, write_json
from resexp.schema import section_defaults
from resexp.summary import Summary, parse_summary

CONFIG = "config.yaml"  # the run's resolved config, written when it starts
SUMMARY = "summary.json"  # status, metrics and segments, rewritten at every log point
CHECKPOINT = Path("checkpoints/last.pt")  # the run's one checkpoint
EVENTS = "tb"  # TensorBoard event files
LOCK = ".lock"  # flocked by the process that trains the run; holds its pid
MAX_CONFIG = 2**20  # a run's config.yaml is a few kB
DONE = ("finished", "diverged")
MOVE_IT_AWAY = "move it away to train this run from the start, or choose another run.name"
CONFIG_SECTIONS = {"model", "data", "optim", "seed", "trainer"}
# Beside a sweep's runs: where the analysis commands write by default (SWEEP_DIR/analysis), and the
# stem of `resexp responses`' Figure 7 there (.png, .pdf), which `resexp report` copies.
ANALYSIS_FOLDER = "analysis"
RESPONSES_STEM = "responses"


class ConfigLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser where PyYAML has it
    """YAML as OmegaConf reads it, at libyaml's speed (a sweep's reports read thousands of config.yaml
    files): floats without a dot (1e-4) are floats, as YAML 1.2 and OmegaConf have them."""


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                   re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def count_runs(total: int, counts: Mapping[str, int]) -> str:
    """The one line that sums up runs: "3 runs: 2 finished, 1 stopped" ("1 run: ..."), counts in their order."""
    return f"{total} run{'' if total == 1 else 's'}: " + counted(counts)


def counted(counts: Mapping[str, int]) -> str:
    """Counts as words, in their order: "2 finished, 1 stopped" (count_runs' line, a table's status cell)."""
    return ", ".join(f"{n} {what}" for what, n in counts.items())


def model_label(model: Any) -> str:
    """The paper's names: "plain-20", "ResNet-56"; other archs by their config name."""
    if model.get("arch") == "cifar_resnet":
        return f"{'ResNet' if model.get('residual', False) else 'plain'}-{model.get('depth')}"
    return str(model.get("name"))


class RunDir:
    """One run directory, by path; its config and summary are read on first use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    # -- the files --

    @cached_property
    def config(self) -> DictConfig:
        return OmegaConf.create(self.config_values)

    @cached_property
    def config_values(self) -> dict[str, Any]:
        """config.yaml as plain values (read_config_values): what readers of many runs use."""
        return read_config_values(self.config_path)

    @property
    def label(self) -> str:
        return model_label(self.config.model)

    def read_summary(self) -> Summary | None:
        """summary.json as it is now (None if absent), checked against resexp.summary's schema;
        corrupt or off the schema: a one-line ResexpError."""
        data = read_json(self.summary_path)
        return None if data is None else parse_summary(data, str(self.summary_path))

    def write_summary(self, summary: Summary) -> None:
        data = summary.to_json()
        parse_summary(data, str(self.summary_path))  # the engine writes through the readers' schema
        write_json(self.summary_path, data)

    def write_config(self, cfg: DictConfig) -> None:
        with atomic_path(self.config_path) as tmp:
            OmegaConf.save(cfg, tmp, resolve=True)

    def summary_stamp(self) -> tuple[int, int] | None:
        """summary.json is replaced (a new inode) whenever it is written: (inode, mtime), or None."""
        try:
            stat = self.summary_path.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def checkpoint_iteration(self) -> int | None:
        """The iteration the run's checkpoint holds (where the same command resumes), None without
        one; a checkpoint that cannot be read is a one-line ResexpError, as it is for train."""
        if not self.checkpoint_path.is_file():
            return None
        state = load_checkpoint(self.checkpoint_path, "cpu")
        if not isinstance(state, dict) or "iteration" not in state:
            raise ResexpError(f"{self.checkpoint_path} is not a resexp checkpoint (no iteration)")
        return int(state["iteration"])

    def remove_stale_temporaries(self) -> list[Path]:
        """The temporary files (resexp.files.atomic_path) of the checkpoint, summary and config that
        a killed process left half-written; called with the lock held, so none is being written.
        Returns those removed."""
        stale = [p for target in (self.checkpoint_path, self.summary_path, self.config_path)
                 for p in target.parent.glob(f".{target.name}.*.tmp")]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    # -- the guard --

    def lock(self) -> RunDirLock:
        return RunDirLock(self.path)

    def check(self, cfg: DictConfig) -> Summary | None:
        """Whether cfg may train here. Returns the run's summary when it is done and there is
        nothing to train; raises (one line, nothing written) for another run's directory, or for
        fewer iterations than a finished run already has."""
        if self.path.exists() and not self.path.is_dir():
            raise ResexpError(f"run directory {self.path} exists and is not a directory; choose another run.dir")
        if not self.config_path.is_file():
            return None
        if not cfg.run.resume:
            raise ResexpError(f"{self.path} already holds a run and run.resume=false; choose another run.name or "
                              "run.dir")
        changes = identity_changes(run_identity(read_config_values(self.config_path)), run_identity(cfg))
        if changes:
            raise ResexpError(f"{self.path} holds another run: {'; '.join(changes[:3])}; choose another run.name or "
                              "run.dir")
        summary = self.read_summary()
        if summary is None or summary.status not in DONE:
            return None
        done, wanted = summary.iterations or 0, int(cfg.trainer.max_iters)
        if wanted < done:
            raise ResexpError(f"{self.path} has already trained {done} iterations ({summary.status}); "
                              f"trainer.max_iters={wanted} asks for fewer, so nothing was changed "
                              "(a shorter run needs its own run.name)")
        if summary.status == "diverged" or wanted == done:
            return summary
        return None  # a finished run asked for more iterations: it continues from its checkpoint


def has_summary(run: RunDir) -> bool:
    return run.summary_path.is_file()


def is_trained(run: RunDir) -> bool:
    """A config beside a checkpoint: something to analyse."""
    return run.config_path.is_file() and run.checkpoint_path.is_file()


def is_reported(run: RunDir) -> bool:
    """A config and a summary: something to report (Hydra's .hydra/ and runs refused before
    they started have only a config, or nothing)."""
    return run.config_path.is_file() and run.summary_path.is_file()


def find_run_dirs(root: str | Path, having: Callable[[RunDir], bool] = is_reported
                  ) -> tuple[list[RunDir], list[tuple[Path, str]]]:
    """The run directories at or under root (root itself included) for which having(run), by
    path; and the folders that could not be looked into (a permission), with why: a run there
    is not silently one fewer. Symbolic links to folders are followed, each folder once."""
    root = Path(root)
    if not root.is_dir():
        raise ResexpError(f"{root} is not a directory")
    candidates, blocked, seen = set(), [], set()

    def unlisted(error: OSError) -> None:
        blocked.append((Path(error.filename), f"cannot list it ({error.strerror})"))

    for folder, subfolders, files in os.walk(root, onerror=unlisted, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            subfolders.clear()
            continue
        seen.add(real)
        if CONFIG in files or SUMMARY in files:
            candidates.add(Path(folder))
    runs = []
    for run in map(RunDir, sorted(candidates)):
        try:
            if having(run):
                runs.append(run)
        except OSError as e:  # a folder that lists but whose files cannot be looked at
            blocked.append((run.path, f"cannot read it ({e.strerror})"))
    return runs, sorted(blocked)


def load_checkpoint(path: Path, device: Any) -> dict[str, Any]:
    """A checkpoint's contents, on `device`; a truncated or foreign file is a one-line ResexpError."""
    try:
        return load_data_only(path, device)
    except Exception as e:  # unpickling a damaged or foreign file can raise almost anything
        reason = one_line(e).split(". ")[0]
        raise ResexpError(f"cannot read checkpoint {path} (truncated, or not a resexp checkpoint: "
                          f"{reason}); {MOVE_IT_AWAY}") from None


def read_config(path: Path) -> DictConfig:
    """A run's config.yaml as OmegaConf reads it (see read_config_values)."""
    return OmegaConf.create(read_config_values(path))


MAX_CONFIG_DEPTH = 16  # sections nest 3 deep in what resexp writes


def read_config_values(path: Path) -> dict[str, Any]:
    """A run's config.yaml as plain values, as OmegaConf.save wrote it: at most MAX_CONFIG bytes, no
    YAML aliases (resexp writes none, and a "billion laughs" of them would expand without bound),
    only what OmegaConf holds (mappings with names, lists, strings, numbers, booleans, null) and no
    interpolations (saved resolved). A sweep's reports read thousands, and building a DictConfig of
    each was most of `resexp table`'s time (results/bench/README.md). Corrupt or not a run's: a
    one-line ResexpError."""
    text = read_limited(path, MAX_CONFIG)
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=ConfigLoader)):
            raise ResexpError(f"{path} has YAML aliases (*name), which resexp never writes; restore it or choose "
                              "another run.name")
        values = yaml.load(text, Loader=ConfigLoader)
    except ResexpError:
        raise
    except Exception as e:  # YAML errors, a nesting too deep for the parser: the file is not a config
        raise ResexpError(f"{path} is corrupt ({type(e).__name__}); restore it or choose another run.name") from None
    if isinstance(values, dict):
        where = unwritten_value(values)
        if where is not None:
            raise ResexpError(f"{path} is corrupt ({where}, which resexp never writes); restore it or choose "
                              "another run.name")
    missing = sorted(CONFIG_SECTIONS - set(values)) if isinstance(values, dict) else ["mapping"]
    if missing:
        raise ResexpError(f"{path} is not a resexp run config (no {', '.join(missing)}); restore it or choose "
                          "another run.name")
    return values


def config_value(values: dict[str, Any], key: str) -> Any:
    """A dotted key ("model.depth") of a config's plain values; None where they lack it (an older run)."""
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def unwritten_value(values: dict[str, Any]) -> str | None:
    """Where a config's values leave what OmegaConf.save writes of a resolved config, in words; None if nowhere."""
    pending: list[tuple[str, Any, int]] = [("", values, 0)]
    while pending:
        where, value, depth = pending.pop()
        if depth > MAX_CONFIG_DEPTH:
            return f"sections nested more than {MAX_CONFIG_DEPTH} deep at {where}"
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"a key {str(key)[:40]!r} that is no name at {where or 'the top'}"
                pending.append((f"{where}.{key}" if where else key, item, depth + 1))
        elif isinstance(value, list):
            pending.extend((f"{where}[{i}]", item, depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str):
            if "${" in value:
                return f"an interpolation at {where}"
        elif value is not None and not isinstance(value, (bool, int, float)):
            return f"a {type(value).__name__} value at {where}"
    return None


class RunDirLock:
    """An exclusive flock on RUN/.lock while a process trains in RUN. The kernel releases it
    when the holder exits, however it exits (kill -9 included), so the lock of a dead run is
    simply taken over; the file keeps the holder's pid for the refusal message. A run that
    ends in an error (a refusal) removes the file if it created it: it leaves no trace."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.file: IO[str] | None = None
        self.created = False  # by this process: there was no lock file before

    def __enter__(self) -> RunDirLock:
        created = not self.path.exists()
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise ResexpError(f"{self.path.parent} is in use by another resexp process (pid {holder}); "
                              "wait for it to end or stop it, then run the same command to resume") from None
        if not self._is_current(file):  # removed by its holder between our open and flock: lock the new one
            file.close()
            return self.__enter__()
        file.seek(0), file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file, self.created = file, created
        return self

    def _is_current(self, file: IO[str]) -> bool:
        try:
            return os.path.samestat(os.fstat(file.fileno()), os.stat(self.path))
        except FileNotFoundError:
            return False

    def __exit__(self, error_type: type[BaseException] | None, *exc_info: Any) -> None:
        if self.file is None:
            return
        if error_type is not None and self.created:
            # Removed while still held: whoever opened it meanwhile finds it gone once it gets the flock.
            self.path.unlink(missing_ok=True)
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


# Keys of a data section that say where the files are, not what they hold.
DATA_LOCATION_KEYS = ("root", "download")


def run_identity(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """What makes two configs the same run, so that one may resume the other's checkpoint:
    model, data (not where it lives), optimizer and schedule, seed and batch size.

    How a run executes (device, precision, graph capture, logging) and how long it trains
    (max_iters: a run may be extended) are not part of it; train records them per segment in
    summary.json. Reports group runs by this identity less the seed, plus max_iters."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return with_schema_defaults({
        "model": plain["model"],
        "data": {k: v for k, v in plain["data"].items() if k not in DATA_LOCATION_KEYS},
        "optim": plain["optim"],
        "seed": plain["seed"],
        "batch_size": plain["trainer"]["batch_size"],
    })


# The identity's sections whose schema may gain a key with a default.
DEFAULTED_SECTIONS = ("model", "data", "optim")


def with_schema_defaults(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity with the schema's default (resexp.schema) filled in for every key its model,
    data and optim sections lack. A key added to the schema later with a default (model.zero_pad)
    is absent from the config.yaml and checkpoints of the runs written before it; filled in, it
    equals the default, so those runs still resume and group with new runs that keep the default.
    run_identity and identity_changes apply it, so identities read back from a checkpoint get it too."""
    filled = dict(identity)
    for group in DEFAULTED_SECTIONS:
        section = identity.get(group)
        if isinstance(section, dict):
            filled[group] = {**section_defaults(group, section), **section}
    return filled


def identity_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two identities, as 'key (a here, b there)'."""
    flat_before, flat_after = (flatten_keys(with_schema_defaults(identity)) for identity in (before, after))
    return [f"{key} ({_show(flat_before.get(key, _ABSENT))} there, {_show(flat_after.get(key, _ABSENT))} here)"
            for key in sorted(flat_before.keys() | flat_after.keys()) if flat_before.get(key) != flat_after.get(key)]


def flatten_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_ABSENT = object()


def _show(value: Any) -> str:
    return "absent" if value is _ABSENT else json.dumps(value)
