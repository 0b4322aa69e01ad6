"""Planning a sweep before anything runs: every job composed (Hydra's own override grammar and
sweep expansion), validated and its run directory checked, in the order it will be launched,
with the launcher's settings; `resexp sweep --dry-run` prints the plan.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from resexp.config import GROUPS, compose_job, config_dir, group_choices, refuse_repeated_keys, unreadable_override
from resexp.rundir import RunDir, count_runs
from resexp.errors import ConfigError, ResexpError, one_line
from resexp.model_size import model_size


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def parse_overrides(overrides: list[str]) -> list[Override]:
    """Hydra's own override grammar: it knows a sweep (a,b; range(); choice()) from a list."""
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise ConfigError(unreadable_override(overrides, sweep=True) or f"{one_line(error)} (overrides look like "
                          "key=value, a sweep like key=a,b or key=range(3), a list like key=[1,2])") from None


def _swept_keys(overrides: list[str]) -> set[str]:
    return {o.key_or_group for o in parse_overrides(overrides) if o.is_sweep_override()}


def with_preset(words: list[str]) -> list[str]:
    """A sweep's words as `resexp sweep` takes them: a first word without '=' names a preset
    (figure6 is sweep=figure6); an unknown one is a one-line ConfigError."""
    if not words or "=" in words[0]:
        return list(words)
    if words[0] not in group_choices("sweep"):
        raise ConfigError(f"unknown sweep preset '{words[0]}'; choose from: {', '.join(group_choices('sweep'))}")
    return [f"sweep={words[0]}", *words[1:]]


def _preset_config(overrides: list[str]) -> DictConfig | None:
    """The preset file a sweep names (sweep=NAME), as written."""
    preset = next((o.split("=", 1)[1] for o in overrides if o.startswith("sweep=")), None)
    return None if preset is None else OmegaConf.load(config_dir() / "sweep" / f"{preset}.yaml")


def _preset_sweeps(preset: DictConfig | None) -> list[str]:
    """The sweeps a preset declares in hydra.sweeper.params, as overrides."""
    params = None if preset is None else OmegaConf.select(preset, "hydra.sweeper.params")
    return [f"{key}={value}" for key, value in (params or {}).items()]


def _preset_launcher(preset: DictConfig | None) -> str | None:
    """The launcher a preset picks in its defaults list (override /hydra/launcher: NAME)."""
    for entry in (preset or {}).get("defaults", []):
        if isinstance(entry, DictConfig) and "override /hydra/launcher" in entry:
            return entry["override /hydra/launcher"]
    return None


@dataclass
class Job:
    """One run of a sweep, as Hydra's basic sweeper will launch it."""

    overrides: list[str]
    cfg: DictConfig
    run_dir: Path
    done: bool  # finished (or diverged) before this sweep: train returns at once
    before: tuple[int, int] | None  # summary.json's (inode, mtime) before the sweep: unchanged = not run

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)


def plan_sweep(overrides: list[str], preset_sweeps: list[str]) -> tuple[list[Job], dict[str, Any]]:
    """Every job of the sweep, composed and validated, with its run directory, before anything
    is launched or written, and the launcher's settings (hydra.launcher, resolved). Expands the sweeps as Hydra's BasicSweeper does (preset params
    first, the command line's value of a key replacing the preset's). A job whose directory
    holds another run refuses the whole sweep: Hydra would rewrite that run's .hydra records."""
    refuse_repeated_keys(overrides)  # only the command line's: it may replace a preset's sweep once
    choices: dict[str, list[str]] = {}
    for override in parse_overrides([*preset_sweeps, *overrides]):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
            continue
        try:
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        except HydraException:
            raise ConfigError(f"{override.input_line}: resexp sweeps take lists (a,b), range() and choice(); "
                              "name glob() choices one by one") from None
    jobs, refused = [], []
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        for combination in itertools.product(*choices.values()):
            cfg, settings = compose_job(list(combination))
            run_dir = Path(cfg.run.dir)
            try:
                done = RunDir(run_dir).check(cfg) is not None
            except ResexpError as error:
                refused.append(str(error))
                continue
            jobs.append(Job(list(combination), cfg, run_dir, done, RunDir(run_dir).summary_stamp()))
    if refused:
        raise ResexpError(f"{len(refused)} of {len(refused) + len(jobs)} runs of this sweep cannot use their "
                          f"directories, so nothing was launched; the first: {refused[0]}")
    return jobs, settings


def chosen_launcher(overrides: list[str], preset_launcher: str | None = None) -> str:
    """The launcher a sweep runs with: the command line's, else the preset's, else basic."""
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra/launcher=")),
                preset_launcher or "basic")


def dirname_override(overrides: list[str]) -> str:
    """Run directories are named by what varies between runs only: the swept keys."""
    swept = _swept_keys(overrides)
    fixed = [k for o in parse_overrides(overrides) if o.key_or_group not in swept
             for k in dict.fromkeys((o.key_or_group, o.get_key_element()))]
    excluded = ["sweep", "run.root", "run.sweep", *fixed]
    return f"hydra.job.config.override_dirname.exclude_keys=[{','.join(repr(k) for k in excluded)}]"


def launcher_overrides(overrides: list[str], cfg: DictConfig, preset_launcher: str | None = None,
                       runs: int | None = None) -> list[str]:
    """Settings the launcher plugins leave to chance, made explicit unless the user set them;
    `runs`: how many jobs will be launched."""
    given = {o.split("=", 1)[0] for o in overrides}
    launcher = chosen_launcher(overrides, preset_launcher)
    extra = [dirname_override(overrides)]
    if launcher == "joblib" and "hydra.launcher.n_jobs" not in given:
        # joblib's default (-1: one job per CPU core) oversubscribes cores and GPUs alike; and no
        # more processes than runs: an idle worker has no signal handling of ours, and one killed
        # by a Ctrl-C to the group breaks joblib's pool, which then kills the others mid-save.
        gpus = visible_gpus()
        n_jobs = gpus * cfg.launcher.runs_per_gpu if gpus else cfg.launcher.cpu_runs
        extra.append(f"hydra.launcher.n_jobs={max(1, min(n_jobs, runs or n_jobs))}")
    if launcher == "joblib" and "hydra.launcher.batch_size" not in given:
        extra.append("hydra.launcher.batch_size=1")  # one job per dispatch: joblib's auto batching would undo the order
    if launcher == "submitit_local" and "hydra.launcher.gpus_per_node" not in given:
        # submitit_local sets CUDA_VISIBLE_DEVICES from gpus_per_node: give each run one GPU if any.
        extra.append(f"hydra.launcher.gpus_per_node={min(1, visible_gpus())}")
    return extra


def longest_first(jobs: list[Job]) -> list[Job]:
    """The launch order: the most work still to do (MACs per image x iterations left) first, so
    that the longest run does not start last and leave the other slots idle at the end."""
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

    return sorted(jobs, key=work, reverse=True)  # stable: equal work keeps Hydra's order


@dataclass
class Sweep:
    """A planned sweep: its jobs, and how Hydra will be called to launch them."""

    jobs: list[Job]
    argv: list[str]  # the multirun's command line: the user's overrides and the launcher settings
    launcher: str  # basic, joblib, submitit_local, submitit_slurm, slurm
    settings: dict[str, Any]  # the launcher's config (hydra.launcher), as it will run
    common: list[str]  # the overrides every run shares (the swept ones name each run's directory)
    per_gpu: int  # runs sharing one GPU through CUDA MPS (1: no MPS)


def prepare_sweep(overrides: list[str]) -> Sweep:
    """Plan the sweep (every job composed, validated and its directory checked) and its launch;
    nothing is written."""
    preset_config = _preset_config(overrides)
    preset = _preset_sweeps(preset_config)
    # Hydra first composes a multirun's config without its sweeps, i.e. with the default model:
    # a key of a swept group (model.dim=64 with model=vit_pre,vit_post) would be refused there.
    # Checked below against every swept choice, it is passed as ++key (set, adding if absent).
    # A key the preset sweeps stays as written: Hydra lets it replace the preset's sweep.
    preset_keys = {o.split("=", 1)[0] for o in preset}
    swept = _swept_keys(overrides)
    groups = (preset_keys | swept) & set(GROUPS)
    overrides = [f"++{o}" if o.split(".", 1)[0] in groups and o.split("=", 1)[0] not in swept | preset_keys
                 else o for o in overrides]
    jobs, settings = plan_sweep([*overrides, dirname_override(overrides)], preset)
    jobs = longest_first(jobs)
    first = jobs[0].cfg  # launcher.* is the same in every job
    preset_launcher = _preset_launcher(preset_config)
    extra = launcher_overrides(overrides, first, preset_launcher, sum(not job.done for job in jobs))
    for override in extra:  # the settings launcher_overrides adds, as Hydra will apply them
        key, _, value = override.partition("=")
        if key.startswith("hydra.launcher."):
            settings[key.removeprefix("hydra.launcher.")] = yaml.safe_load(value)
    launcher = chosen_launcher(overrides, preset_launcher)
    # Several local processes per GPU share it through CUDA MPS (resexp/sweep/mps.py).
    per_gpu = int(first.launcher.runs_per_gpu) if launcher == "joblib" and first.launcher.mps else 1
    varying = _swept_keys([*preset, *overrides])
    common = [o.lstrip("+") for o in jobs[0].overrides if o.split("=", 1)[0].lstrip("+") not in varying
              and not o.startswith("hydra.")]
    return Sweep(jobs, [*overrides, *extra], launcher, settings, common, per_gpu)


def dry_run(overrides: list[str]) -> list[str]:
    """What `resexp sweep ... --dry-run` prints: one line per run (what it would do, the
    overrides that name it, its directory), the overrides all runs share, the launcher with its
    settings, and a count. Nothing is written or launched."""
    plan = prepare_sweep(overrides)
    actions = [job_action(job) for job in plan.jobs]
    width, name_width = max(map(len, actions)), max(len(job.run_dir.name) for job in plan.jobs)
    lines = [f"{action:<{width}}  {job.run_dir.name:<{name_width}}  {job.run_dir}"
             for job, action in zip(plan.jobs, actions)]
    common = [o for o in plan.common if not o.startswith("hydra/launcher=")]  # the launcher has its line
    lines.append(f"every run: {' '.join(common) or '(the defaults)'}")
    lines.append(describe_launcher(plan))
    counts = Counter(action.split()[0] for action in actions)
    lines.append(f"{count_runs(len(plan.jobs), counts)}; nothing launched (--dry-run)")
    return lines


def job_action(job: Job) -> str:
    """What launching the job would do: start, resume at N, skip (done), or fail (why)."""
    if job.done:
        summary = job.run.read_summary() or {}
        return f"skip ({summary.get('status')} at {summary.get('iterations')})"
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
    if kind == "joblib":  # only here: counting GPUs imports torch (seconds)
        gpus = visible_gpus()
        text += f"; {gpus} GPU(s) visible" if gpus else "; no GPU visible"
        if gpus:
            mps = "shared through CUDA MPS" if plan.per_gpu > 1 else "no MPS"
            text += f", {plan.jobs[0].cfg.launcher.runs_per_gpu} runs per GPU ({mps})"
    return text


def summary_or_none(run: RunDir) -> dict | None:
    try:
        return run.read_summary()
    except ResexpError:
        return None
