"""Planning a sweep before anything runs, inside resexp's Hydra sweeper
(hydra_plugins/resexp_sweeper): the sweep's overrides parsed once with Hydra's own grammar
(lists a,b, range(), choice(), glob()) and expanded, every job composed by Hydra's config loader,
validated and its run directory checked, in the order it will be launched, with the launcher's
settings; `--dry-run` prints the plan.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_loader import ConfigLoader
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from resexp.config import GROUPS, group_choices, hydra_error, refuse_repeated_keys, run_config, sweep_at_home, unreadable_override
from resexp.errors import ConfigError, ResexpError, one_line
from resexp.model_size import model_size
from resexp.rundir import RunDir, count_runs
from resexp.summary import Summary


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def with_preset(words: list[str]) -> list[str]:
    """A sweep's words as `resexp sweep` takes them: a first word without '=' names a preset
    (figure6 is sweep=figure6); an unknown one is a one-line ConfigError."""
    if not words or "=" in words[0]:
        return list(words)
    if words[0] not in group_choices("sweep"):
        raise ConfigError(f"unknown sweep preset '{words[0]}'; choose from: {', '.join(group_choices('sweep'))}")
    return [f"sweep={words[0]}", *words[1:]]


def hydra_arguments(words: list[str]) -> list[str]:
    """The command line's overrides as Hydra's multirun composes them. Hydra first composes a
    multirun's config without its sweeps, i.e. with the default model: a key of a swept group
    (model.dim=64 with model=vit_pre,vit_post) would be refused there, so every key inside a group
    is given as ++key (set, adding if absent); each job's composition and the schema still refuse
    a key its run does not have. A key given twice is refused: Hydra would keep the last."""
    refuse_repeated_keys(words)
    return [f"++{word}" if word.split(".", 1)[0] in GROUPS and "." in word.split("=", 1)[0] else word
            for word in words]


@dataclass(frozen=True)
class Packing:
    """How many runs share the machine (the sweeper's config, configs/hydra/sweeper/resexp.yaml)."""

    runs_per_gpu: int = 1  # parallel runs per visible GPU
    cpu_runs: int = 1  # parallel runs without a GPU
    mps: bool = True  # several runs per GPU share it through a private CUDA MPS daemon

    def __post_init__(self) -> None:
        for name in ("runs_per_gpu", "cpu_runs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"hydra.sweeper.{name} must be a positive integer; got {value!r}")
        if not isinstance(self.mps, bool):
            raise ConfigError(f"hydra.sweeper.mps must be true or false; got {self.mps!r}")

    def runs_per_job(self, gpus_per_node: int) -> int:
        """Runs one SLURM (or submitit) job trains at once: runs_per_gpu on each of its GPUs, or
        cpu_runs in a job without GPUs (hydra.launcher.gpus_per_node=0)."""
        return gpus_per_node * self.runs_per_gpu if gpus_per_node else self.cpu_runs


@dataclass
class Job:
    """One run of a sweep, as the launcher will get it."""

    overrides: list[str]  # the run's overrides, then the Hydra setting that names its directory
    cfg: DictConfig
    run_dir: Path
    done: bool  # finished (or diverged) before this sweep: train returns at once
    before: tuple[int, int] | None  # summary.json's (inode, mtime) before the sweep: unchanged = not run

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)


@dataclass
class Sweep:
    """A planned sweep: its jobs, longest first, and how they will be launched."""

    jobs: list[Job]
    launcher: str  # hydra/launcher: basic, joblib, submitit_local, submitit_slurm, slurm
    settings: dict[str, Any]  # the launcher's config (hydra.launcher), as it will run
    common: list[str]  # the overrides every run shares (the swept ones name each run's directory)
    packing: Packing
    per_gpu: int  # runs sharing one GPU through CUDA MPS (1: no MPS)
    launcher_overrides: list[str] = field(default_factory=list)  # hydra.launcher.* settings resexp chose
    sweep_dir: Path | None = None  # hydra.sweep.dir, where the runs' directories are
    # The unfinished runs each submitit (SLURM) job trains at once, in launch order; empty: one job per run.
    packs: list[list[Job]] = field(default_factory=list)


def expand(parser: OverridesParser, overrides: list[str]) -> tuple[dict[str, list[str]], set[str]]:
    """Each key's overrides (one for a fixed key, one per value for a swept one), and the swept
    keys. A later override of a key replaces an earlier one (the command line a preset's sweep)."""
    try:
        parsed = parser.parse_overrides(overrides)
    except HydraException as error:
        raise ConfigError(unreadable_override(overrides, sweep=True) or f"{one_line(error)} (overrides look like "
                          "key=value, a sweep like key=a,b or key=range(3), a list like key=[1,2])") from None
    choices: dict[str, list[str]] = {}
    swept: set[str] = set()
    for override in parsed:
        key = override.key_or_group
        element = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{element}={override.get_value_element_as_str()}"]
            swept.discard(key)
            continue
        if not override.is_discrete_sweep():
            raise ConfigError(f"{override.input_line}: a sweep takes a list of values (a,b, range(), choice(), "
                              "glob()), not an interval")
        # ++ (hydra_arguments') only lets Hydra compose the multirun; the job composes the key as
        # it is, and a run's directory name keeps the plain key=value.
        element = key if element.startswith("++") else element
        try:
            choices[key] = [f"{element}={value}" for value in override.sweep_string_iterator()]
        except HydraException as error:
            raise ConfigError(f"{override.input_line}: {one_line(error)}") from None
        swept.add(key)
    return choices, swept


def plan_sweep(config_loader: ConfigLoader, master: DictConfig, overrides: list[str], packing: Packing,
               runs: list[list[str]] | None = None) -> Sweep:
    """Every job of the sweep, composed and validated, with its run directory, longest first,
    before anything is launched or written, and the launcher's settings. A job whose directory
    holds another run refuses the whole sweep: Hydra would rewrite that run's .hydra records.
    `runs`: instead of expanding `overrides`, exactly these runs (each one's Job.overrides), as a
    packed SLURM job trains them (resexp.sweep.pack)."""
    sweep_at_home(master)  # '~' is the home folder for the launcher and its jobs too, never a folder named ~
    common: list[str] = []
    if runs is None:
        choices, swept = expand(OverridesParser.create(config_loader=config_loader), overrides)
        fixed = [key for key in choices if key not in swept]
        # Run directories are named by what varies between runs only: the swept keys.
        excluded = ["sweep", "run.root", "run.sweep", *fixed]
        dirname = f"hydra.job.config.override_dirname.exclude_keys=[{','.join(repr(k) for k in excluded)}]"
        runs = [[*combination, dirname] for combination in itertools.product(*choices.values())]
        common = [choices[key][0].lstrip("+") for key in fixed]

    def compose(job_overrides: list[str]) -> DictConfig:
        try:
            return config_loader.load_sweep_config(master, job_overrides)
        except (HydraException, OmegaConfBaseException) as error:
            raise hydra_error(error, job_overrides,
                              lambda selections: config_loader.load_sweep_config(master, selections)) from None

    jobs, refused = [], []
    try:
        for job_overrides in runs:
            composed = compose(job_overrides)
            HydraConfig.instance().set_config(composed)  # resolves ${hydra:job.override_dirname}
            cfg = run_config(composed)
            run_dir = Path(cfg.run.dir)
            try:
                done = RunDir(run_dir).check(cfg) is not None
            except ResexpError as error:
                refused.append(str(error))
                continue
            jobs.append(Job(list(job_overrides), cfg, run_dir, done, RunDir(run_dir).summary_stamp()))
    finally:
        HydraConfig.instance().set_config(master)
    if refused:
        raise ResexpError(f"{len(refused)} of {len(refused) + len(jobs)} runs of this sweep cannot use their "
                          f"directories, so nothing was launched; the first: {refused[0]}")
    work = work_left(jobs)
    jobs = sorted(jobs, key=lambda job: work[job.run_dir], reverse=True)  # longest first; stable for equal work
    launcher = master.hydra.runtime.choices["hydra/launcher"]
    extra = launcher_overrides(launcher, master, packing, sum(not job.done for job in jobs))
    settings = OmegaConf.to_container(master.hydra.launcher, resolve=True)
    for override in extra:  # the settings chosen here, as the launcher will run
        key, _, value = override.partition("=")
        settings[key.removeprefix("hydra.launcher.")] = yaml.safe_load(value)
    packs: list[list[Job]] = []
    if "submitit_folder" in settings:  # submitit's launchers: SLURM, or local processes
        per_job = packing.runs_per_job(int(settings.get("gpus_per_node") or 0))
        if per_job > 1:
            packs = deal([job for job in jobs if not job.done], per_job, work)
    # Several local processes per GPU share it through CUDA MPS (resexp/sweep/mps.py).
    per_gpu = packing.runs_per_gpu if launcher == "joblib" and packing.mps else 1
    return Sweep(jobs, launcher, settings, common, packing, per_gpu, extra, Path(str(master.hydra.sweep.dir)), packs)


def work_left(jobs: list[Job]) -> dict[Path, int]:
    """Each job's work still to do, by run directory: MACs per image x iterations left (0 when
    done). The launch order is longest first, so that the longest run does not start last and
    leave the other slots idle at the end; packed jobs are dealt by it."""
    macs: dict[str, int] = {}

    def work(job: Job) -> int:
        if job.done:
            return 0
        key = json.dumps(OmegaConf.to_container(job.cfg.model, resolve=True), sort_keys=True)
        if key not in macs:
            macs[key] = model_size(job.cfg.model).macs
        try:
            done_iters = job.run.checkpoint_iteration() or 0
        except ResexpError:  # an unreadable checkpoint: the run itself refuses it, with the reason
            done_iters = 0
        return macs[key] * (int(job.cfg.trainer.max_iters) - done_iters)

    return {job.run_dir: work(job) for job in jobs}


def deal(jobs: list[Job], per_job: int, work: dict[Path, int]) -> list[list[Job]]:
    """The runs (longest first) in ceil(N / per_job) jobs of at most per_job runs, each run to the
    job with the least work so far that has room, so that the jobs end at about the same time;
    the jobs longest first."""
    packs: list[list[Job]] = [[] for _ in range(-(-len(jobs) // per_job))]
    load = [0] * len(packs)
    for job in jobs:
        index = min((i for i, pack in enumerate(packs) if len(pack) < per_job), key=lambda i: (load[i], i))
        packs[index].append(job)
        load[index] += work[job.run_dir]
    order = sorted(range(len(packs)), key=lambda i: (-load[i], i))
    return [packs[i] for i in order]


def launcher_overrides(launcher: str, master: DictConfig, packing: Packing, runs: int) -> list[str]:
    """Settings the launcher plugins leave to chance, made explicit unless the command line set
    them (hydra.launcher.KEY=...); `runs`: how many jobs will be launched."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in master.hydra.overrides.hydra}
    extra = []
    if launcher == "joblib" and "hydra.launcher.n_jobs" not in given:
        # joblib's default (-1: one job per CPU core) oversubscribes cores and GPUs alike; and no
        # more processes than runs: an idle worker has no signal handling of ours, and one killed
        # by a Ctrl-C to the group breaks joblib's pool, which then kills the others mid-save.
        gpus = visible_gpus()
        n_jobs = gpus * packing.runs_per_gpu if gpus else packing.cpu_runs
        extra.append(f"hydra.launcher.n_jobs={max(1, min(n_jobs, runs or n_jobs))}")
    if launcher == "joblib" and "hydra.launcher.batch_size" not in given:
        extra.append("hydra.launcher.batch_size=1")  # one job per dispatch: joblib's auto batching would undo the order
    if launcher == "submitit_local" and "hydra.launcher.gpus_per_node" not in given:
        # submitit_local sets CUDA_VISIBLE_DEVICES from gpus_per_node: give each run one GPU if any.
        extra.append(f"hydra.launcher.gpus_per_node={min(1, visible_gpus())}")
    return extra


def apply_launcher_overrides(master: DictConfig, extra: list[str]) -> None:
    """The launcher settings chosen by launcher_overrides (hydra.launcher.KEY=VALUE), in the
    config the launcher is made from."""
    launcher = master.hydra.launcher
    with read_write(master.hydra), read_write(launcher), open_dict(launcher):  # Hydra's node is read-only
        for override in extra:
            key, _, value = override.partition("=")
            launcher[key.removeprefix("hydra.launcher.")] = yaml.safe_load(value)


def dry_run(plan: Sweep) -> list[str]:
    """What `--dry-run` prints: one line per run (what it would do, the overrides that name it,
    its directory), the overrides all runs share, the launcher with its settings, and a count.
    Nothing is written or launched."""
    actions = [job_action(job) for job in plan.jobs]
    width, name_width = max(map(len, actions)), max(len(job.run_dir.name) for job in plan.jobs)
    lines = [f"{action:<{width}}  {job.run_dir.name:<{name_width}}  {job.run_dir}"
             for job, action in zip(plan.jobs, actions)]
    lines.append(f"every run: {' '.join(plan.common) or '(the defaults)'}")
    lines.append(describe_launcher(plan))
    lines += [f"job {index} of {len(plan.packs)}: {'; '.join(job.run_dir.name for job in pack)}"
              for index, pack in enumerate(plan.packs, 1)]
    counts = Counter(action.split()[0] for action in actions)
    lines.append(f"{count_runs(len(plan.jobs), counts)}; nothing launched (--dry-run)")
    return lines


def job_action(job: Job) -> str:
    """What launching the job would do: start, resume at N, skip (done), or fail (why)."""
    if job.done:
        summary = job.run.read_summary()
        return f"skip ({summary.status} at {summary.iterations})" if summary else "skip (None at None)"
    try:
        resume_at = job.run.checkpoint_iteration()
    except ResexpError as error:
        return f"fail ({one_line(error)})"
    if resume_at is None:
        return "start"
    return f"resume at {resume_at}"


# What a user needs to know of each launcher's settings before launching (hydra.launcher.KEY).
LAUNCHER_KEYS = {
    "joblib": ("n_jobs",),
    "submitit_local": ("gpus_per_node", "cpus_per_task", "timeout_min"),
    "submitit_slurm": ("partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min",
                       "array_parallelism", "max_num_timeout", "account", "qos"),
}


def describe_launcher(plan: Sweep) -> str:
    settings = plan.settings
    kind = "submitit_slurm" if "partition" in settings else plan.launcher
    if kind == "basic":
        text = "launcher basic: one run after another, in this process"
    else:
        shown = [f"{key}={'(default)' if settings[key] is None else settings[key]}"
                 for key in LAUNCHER_KEYS.get(kind, ()) if key in settings]
        text = f"launcher {plan.launcher}: {', '.join(shown)}"
    if plan.packs:
        per_job = max(map(len, plan.packs))
        where = (f"{plan.packing.runs_per_gpu} per GPU" + (" under CUDA MPS" if plan.packing.mps else "")
                 if settings.get("gpus_per_node") else "on its CPUs")
        text += (f"; {sum(map(len, plan.packs))} runs in {len(plan.packs)} jobs, up to {per_job} at once in each "
                 f"({where})")
    if kind == "joblib":  # only here: counting GPUs imports torch (seconds)
        gpus = visible_gpus()
        text += f"; {gpus} GPU(s) visible" if gpus else "; no GPU visible"
        if gpus:
            mps = "shared through CUDA MPS" if plan.per_gpu > 1 else "no MPS"
            text += f", {plan.packing.runs_per_gpu} runs per GPU ({mps})"
    return text


def summary_or_none(run: RunDir) -> Summary | None:
    try:
        return run.read_summary()
    except ResexpError:
        return None
