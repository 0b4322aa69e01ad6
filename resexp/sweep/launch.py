"""Launching a planned sweep: the jobs go to Hydra's launcher plugin (basic: one after another
in this process; joblib: local processes; submitit: SLURM or local), longest first, and each
runs `run_job`. Finished runs are not launched; unfinished ones resume from their checkpoints.

Locally, a signal stops the whole sweep (resexp/sweep/control.py): no queued run starts, the
running ones checkpoint and stop, the CUDA MPS daemon the sweep started is stopped, and the
sweep exits with 128 + the signal's number. The same command resumes the unfinished runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from submitit.core.utils import JobPaths

from resexp.config import at_home, config_dir, hydra_error
from resexp.errors import ResexpError, explain, one_line
from resexp.rundir import DONE, RunDir, count_runs
from resexp.summary import Summary
from resexp.sweep.control import ENV, SweepControl, SweepStopHandler
from resexp.sweep.mps import cuda_mps
from resexp.sweep.pack import ENV as PACK_ENV
from resexp.sweep.pack import pack_job_overrides, run_pack
from resexp.sweep.plan import Job, Sweep, hydra_arguments, summary_or_none, visible_gpus

LOCAL_LAUNCHERS = ("basic", "joblib")  # their runs can be told to stop through a folder on this host
# What the sweep that multirun runs gave (its plan for mode=plan, else the outcome counts), put
# here by resexp's sweeper: hydra.main returns nothing of a multirun.
OUTCOME: list[Any] = []


def multirun(words: list[str], mode: str = "launch") -> Any:
    """`resexp sweep WORDS` and `resexp train -m WORDS`, one path: Hydra's documented entry,
    hydra.main with -m and the overrides, so that Hydra itself instantiates resexp's sweeper
    (configs/hydra/sweeper/resexp.yaml), the launcher and their context. mode: launch, dry_run
    (print the plan) or plan (return it, for resexp bench --sweep). Returns what the sweeper gave:
    the outcome counts, or the plan."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra_plugins.resexp_sweeper.resexp_sweeper import ResexpSweeper

    # Hydra finds plugins by walking hydra_plugins' folders, which an editable install's import
    # hook is not: registered by hand, as Plugins.register allows, it is found however installed.
    Plugins.instance().register(ResexpSweeper)
    arguments = hydra_arguments(words)
    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [saved_argv[0], "--multirun", *arguments, f"hydra.sweeper.mode={mode}"]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises an error instead of printing it and exiting 1
    OUTCOME.clear()
    try:
        try:
            hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(run_job)()
        finally:
            sys.argv = saved_argv
            if saved_full_error is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = saved_full_error
            GlobalHydra.instance().clear()  # compose() and the next sweep in this process initialise their own
    except (HydraException, OmegaConfBaseException) as error:  # composing the multirun's own config
        raise hydra_error(error, arguments, compose_selections, sweep=True) from None
    return OUTCOME.pop() if OUTCOME else None


def prepare_sweep(words: list[str]) -> Sweep:
    """The sweep's plan, as `resexp sweep WORDS --dry-run` prints it; nothing is written."""
    return multirun(words, "plan")


def compose_selections(selections: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return hydra_compose(config_name="train", overrides=selections)


def run_sweep(plan: Sweep, make_launcher: Callable[[], Launcher]) -> dict[str, int]:
    """Launch a planned sweep's unfinished jobs (the launcher made by `make_launcher`, once the
    plan's settings are in its config), then count the outcomes: a one-line ResexpError when any
    run failed, SystemExit(128 + N) when signal N stopped it. Returns {status: number of runs}."""
    pending = [job for job in plan.jobs if not job.done]
    if not pending:  # nothing to train: Hydra need not rewrite their records
        return count_outcomes(plan.jobs)
    Path(plan.jobs[0].run_dir.parent).mkdir(parents=True, exist_ok=True)
    if plan.launcher not in LOCAL_LAUNCHERS:  # SLURM jobs handle their own signals; Ctrl-C here only stops waiting
        with cuda_mps(plan.per_gpu, visible_gpus()):
            launch(make_launcher(), plan, pending)
        return count_outcomes(plan.jobs)
    control = SweepControl.create()
    os.environ[ENV] = control.env_value()  # inherited by the workers
    try:
        with SweepStopHandler(control), cuda_mps(plan.per_gpu, visible_gpus()):
            try:
                launch(make_launcher(), plan, pending)
            except Exception as error:
                if control.stop_request() is None:
                    raise
                # runs killed after the grace time break the launcher: expected then, but said
                print(f"resexp: sweep: the launcher ended with {type(error).__name__} while stopping",
                      file=sys.stderr)
            finally:  # joblib keeps its workers for reuse: end them (and their CUDA contexts) before MPS
                if plan.launcher == "joblib":
                    shutdown_joblib_workers()
        stop = control.stop_request()
    finally:
        os.environ.pop(ENV, None)
        control.remove()
    counts = count_outcomes(plan.jobs, stopped=stop is not None)
    if stop is not None:
        unfinished = sum(n for status, n in counts.items() if status in ("stopped", "not started"))
        print(f"sweep {plan.jobs[0].run_dir.parent}: stopped by {stop['signal']}; the same command resumes its "
              f"{unfinished} unfinished run(s)", file=sys.stderr)
        raise SystemExit(128 + int(stop["number"]))
    return counts


def shutdown_joblib_workers() -> None:
    """End the workers joblib keeps for reuse (loky's one reusable pool, which joblib's loky
    backend runs on): they carry this sweep's control folder and MPS settings, which the next
    sweep in this process must not inherit."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor(reuse=True).shutdown(wait=True)  # reuse=True: the pool as it is


def launch(launcher: Launcher, plan: Sweep, jobs: list[Job]) -> None:
    """Hand the jobs to the sweep's launcher plugin, in the plan's order: one launcher job per
    run, or per pack of runs where the plan packs them (resexp.sweep.pack)."""
    if plan.packs:
        groups = plan.packs
        overrides = [pack_job_overrides(plan.sweep_dir, [job.overrides for job in pack], asdict(plan.packing))
                     for pack in groups]
    else:
        groups = [[job] for job in jobs]
        overrides = [job.overrides for job in jobs]
    overrides = [[*words, *plan.launcher_overrides] for words in overrides]
    if "partition" not in plan.settings:  # not SLURM
        say_failed_returns(launcher.launch(overrides, initial_job_idx=0), groups)
        return
    # submitit waits for each SLURM job's result through sacct: a job that ended without one
    # (cancelled, failed) on a cluster without accounting would be waited for forever.
    started, failure = time.time(), []
    waiting = threading.Thread(target=launch_catching, args=(launcher, overrides, failure, groups), daemon=True)
    waiting.start()
    watch_slurm_jobs(waiting, plan.settings["submitit_folder"], groups, started)
    for error in failure:  # submitit gave up on a job (cancelled, failed): the runs are counted next
        print(f"resexp: error: the SLURM launcher: {type(error).__name__}: {one_line(error)}", file=sys.stderr)


def launch_catching(launcher: Launcher, overrides: list[list[str]], failure: list[Exception],
                    groups: list[list[Job]]) -> None:
    try:
        say_failed_returns(launcher.launch(overrides, initial_job_idx=0), groups)
    except Exception as error:
        failure.append(error)


def say_failed_returns(returns: list[JobReturn], groups: list[list[Job]]) -> None:
    """Hydra catches what a job raised outside run_job's own handling (an import failing on a
    node, say) into its JobReturn, whose return_value raises it: say it, one line per run."""
    for group, returned in zip(groups, returns):
        if returned.status != JobStatus.FAILED:
            continue
        try:
            returned.return_value
        except Exception as error:
            for job in group:
                print(f"resexp: error: {job.run_dir}: {type(error).__name__}: {one_line(error)}", file=sys.stderr)


SLURM_POLL_S = 10.0
SLURM_ABSENT_POLLS = 3  # a requeued job is briefly absent from squeue; one that ended stays absent


def watch_slurm_jobs(waiting: threading.Thread, folder_pattern: str, groups: list[list[Job]], started: float) -> None:
    """Wait while the launcher waits, but stop once every job of this submission has a result or
    has left the queue without one, and name the runs of each of those, with its folder.
    `folder_pattern`: the launcher's submitit_folder (.../%j: one folder per array task, named by
    its job id); `groups`: the runs of each array task, in submission order."""
    absent: dict[str, int] = {}
    while True:
        waiting.join(SLURM_POLL_S)
        tasks = slurm_tasks(folder_pattern, started)
        if len(tasks) < len(groups):  # not all submitted yet (or the submission failed)
            if waiting.is_alive():
                continue
            break
        queued = squeue({name.split("_")[0] for name in tasks})
        if queued is None:  # squeue itself failed: nothing learnt this time
            if waiting.is_alive():
                continue
            break
        for name, paths in tasks.items():
            gone = name not in queued and not paths.result_pickle.exists()
            absent[name] = absent.get(name, 0) + 1 if gone else 0
        if all(absent[name] >= SLURM_ABSENT_POLLS or paths.result_pickle.exists() for name, paths in tasks.items()):
            break
    for name, paths in sorted(slurm_tasks(folder_pattern, started).items()):
        if paths.result_pickle.exists():
            continue
        for job in groups[int(name.split("_")[1])]:
            print(f"resexp: error: {job.run_dir}: SLURM job {name} left the queue without a result (cancelled, "
                  "pre-empted without requeue, or failed; a cluster without job accounting cannot say which): "
                  f"see {paths.folder}", file=sys.stderr)


def slurm_tasks(folder_pattern: str, started: float) -> dict[str, JobPaths]:
    """This submission's array tasks ("ARRAY_TASK"), each with submitit's paths of its files. A
    lone job, which submitit submits as a plain job (folder "JOB"), is left to submitit's own
    wait: watched too, a requeued one was once taken for gone (absent from squeue for three
    polls under CI's load), so one cancelled before it starts is still waited for (issue 30)."""
    root = JobPaths.get_first_id_independent_folder(folder_pattern)
    names = [p.name for p in root.glob("*_*") if p.is_dir() and p.stat().st_mtime >= started - 1]
    return {name: JobPaths(folder_pattern, job_id=name) for name in names}


def squeue(array_ids: set[str]) -> set[str] | None:
    """The array tasks SLURM still knows (pending, running, requeued), as "ARRAY_TASK"; None if
    squeue failed for another reason than having forgotten every one of them. submitit's own
    job state comes from sacct, which a cluster without job accounting cannot answer: squeue,
    SLURM's public queue listing, can."""
    done = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(sorted(array_ids)), "-o", "%i"],
                          capture_output=True, text=True)
    if done.returncode == 0:
        return set(done.stdout.split())
    return set() if "Invalid job id" in done.stderr else None


def run_job(cfg: DictConfig) -> str:
    """One run of a sweep, in the run directory Hydra assigned to this job, or a packed job's runs
    (resexp.sweep.pack). Returns its status."""
    if os.environ.get(PACK_ENV):
        return run_pack(HydraConfig.get())
    control = SweepControl.from_env()
    if control is not None:
        control.enter_worker()  # first: a stop from here on counts this run, and signals stop the sweep
        if control.stop_reason() is not None:
            control.leave_worker()
            return "not started"  # queued when the sweep was stopped
    try:
        status = _train_job(cfg, control)
    except KeyboardInterrupt as stop:  # a second Ctrl-C: the run said what it kept
        print(f"resexp: {explain(stop)[1]}", file=sys.stderr)
        status = "stopped"
    except Exception as error:  # one bad run must not stop the rest: it is counted at the end
        if os.environ.get("RESEXP_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        print(f"resexp: error: {cfg.run.dir}: {explain(error)[1]}", file=sys.stderr)
        status = "failed"
    finally:
        if control is not None:
            control.leave_worker()
    if control is not None and control.orphaned():
        os._exit(128 + signal.SIGTERM)  # nobody collects its result, and it must not take the next run
    return status


def _train_job(cfg: DictConfig, control: SweepControl | None) -> str:
    from resexp.engine.train import train

    hydra_cfg = HydraConfig.get()
    parallel = OmegaConf.select(hydra_cfg.launcher, "n_jobs", default=1)
    with open_dict(at_home(cfg)):
        cfg.run.dir = hydra_cfg.runtime.output_dir
        gpus = visible_gpus()
        if gpus > 1 and cfg.trainer.device == "auto":  # spread the runs over the GPUs
            # A local sweep's workers share one: the GPU with the fewest live runs. Without one
            # (submitit), each job has its own GPUs; Hydra's job number spreads them.
            gpu = control.take_gpu(gpus) if control is not None else hydra_cfg.job.num % gpus
            cfg.trainer.device = f"cuda:{gpu}"
        if parallel > 1 and cfg.trainer.progress == "auto":  # bars of parallel runs would overwrite each other
            cfg.trainer.progress = "lines"
    if parallel > 1:  # share the CPU cores instead of fighting over them (a GPU run's host work needs few)
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // parallel))  # the cores this job may use
    summary = train(cfg, stop_source=control)
    if summary.status in DONE:
        write_hparams(cfg, hydra_cfg, summary)
    return summary.status


def write_hparams(cfg: DictConfig, hydra_cfg: DictConfig, summary: Summary) -> None:
    """The run's swept keys and final errors as TensorBoard's HParams summary, in tb/hparams/
    (beside the run's own events, which the reports read), so that `tensorboard --logdir
    runs/sweeps/NAME` shows the sweep as one table. The swept keys are the job's overrides that
    name its directory (Hydra's override_dirname leaves the others out)."""
    from torch.utils.tensorboard import SummaryWriter

    excluded = set(hydra_cfg.job.config.override_dirname.exclude_keys)
    hparams: dict[str, Any] = {}
    for override in hydra_cfg.overrides.task:  # written by resexp's sweeper as key=value
        key, _, text = override.partition("=")
        key = key.lstrip("+~")
        if key in excluded:
            continue
        value = hydra_cfg.runtime.choices.get(key, OmegaConf.select(cfg, key, default=text))
        hparams[key] = value if isinstance(value, (bool, int, float, str)) else text
    errors = {"train_error": summary.train_error, f"{summary.eval_split}_error": summary.error_on(summary.eval_split)}
    metrics = {f"hparam/{name}": float(value) for name, value in errors.items() if value is not None}
    with SummaryWriter(str(RunDir(Path(cfg.run.dir)).events_path)) as writer:
        writer.add_hparams(hparams, metrics, run_name="hparams")


OUTCOMES = ("finished", "diverged", "stopped", "not started", "failed", "skipped")


def count_outcomes(jobs: list[Job], stopped: bool = False) -> dict[str, int]:
    """Each run's status from the summary.json its job wrote, printed as the sweep's one summary
    line. A job that wrote none (it failed before training: a refusal, a corrupt checkpoint), or
    left "running" (killed), failed; after a stop, it did not start, or was stopped."""
    outcomes: dict[str, list[RunDir]] = {}
    for job in jobs:
        written = job.run.summary_stamp() != job.before
        summary = summary_or_none(job.run) if written else None
        status = "skipped" if job.done else summary.status if summary else "not started" if stopped else "failed"
        if status == "running":
            status = "stopped" if stopped else "failed"
        outcomes.setdefault(status, []).append(job.run)
    counts = {status: len(outcomes[status]) for status in OUTCOMES if outcomes.get(status)}
    where = jobs[0].run_dir.parent if jobs else ""
    shown = {f"{status}{' (already done)' if status == 'skipped' else ''}": n for status, n in counts.items()}
    print(f"sweep {where}: {count_runs(len(jobs), shown)}")
    failed = outcomes.get("failed", [])
    if failed and not stopped:
        never = [run for run in failed if not run.summary_path.is_file()]
        raise ResexpError(f"{len(failed)} of {len(jobs)} runs failed: {_names(failed)} ("
                          + (f"{_names(never)} never started, as said above" if never else
                             "each one's error is above") + "); the same command resumes the sweep")
    halted = outcomes.get("stopped", [])
    if halted and not stopped:  # stopped by a signal of their own: a SLURM job cancelled or pre-empted
        why = sorted({getattr(summary_or_none(run), "stopped_by", None) or "?" for run in halted})
        raise ResexpError(f"{len(halted)} of {len(jobs)} runs were stopped ({', '.join(why)}: a SLURM job gets "
                          f"SIGTERM when cancelled or pre-empted): {_names(halted)}; the same command resumes them")
    return counts


def _names(runs: list[RunDir]) -> str:
    return ", ".join(run.name for run in runs[:3]) + (", ..." if len(runs) > 3 else "")

