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
from pathlib import Path
from typing import Any

from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks  # what Hydra's own multirun hands its launcher
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict

from resexp.config import at_home, compose_with_hydra, config_dir, home_overrides
from resexp.errors import ResexpError, explain, one_line
from resexp.sweep.control import ENV, SweepControl, SweepStopHandler
from resexp.sweep.mps import cuda_mps
from resexp.rundir import RunDir, count_runs
from resexp.sweep.plan import Job, Sweep, parse_overrides, prepare_sweep, summary_or_none, visible_gpus

LOCAL_LAUNCHERS = ("basic", "joblib")  # their runs can be told to stop through a folder on this host


def run_sweep(overrides: list[str]) -> dict[str, int]:
    """Plan the sweep (prepare_sweep), launch its unfinished jobs, then count the outcomes: a
    one-line ResexpError when any run failed, SystemExit(128 + N) when signal N stopped it.
    Returns {status: number of runs}."""
    plan = prepare_sweep(overrides)
    pending = [job for job in plan.jobs if not job.done]
    if not pending:  # nothing to train: Hydra need not rewrite their records
        return count_outcomes(plan.jobs)
    if plan.launcher not in LOCAL_LAUNCHERS:  # SLURM jobs handle their own signals; Ctrl-C here only stops waiting
        with cuda_mps(plan.per_gpu, visible_gpus()):
            launch(plan, pending)
        return count_outcomes(plan.jobs)
    control = SweepControl.create()
    os.environ[ENV] = control.env_value()  # inherited by the workers
    try:
        with SweepStopHandler(control), cuda_mps(plan.per_gpu, visible_gpus()):
            try:
                launch(plan, pending)
            except Exception as error:
                if control.stop_request() is None:
                    raise
                # runs killed after the grace time break the launcher: expected then, but said
                print(f"resexp: sweep: the launcher ended with {type(error).__name__} while stopping",
                      file=sys.stderr)
            finally:  # joblib keeps its workers for reuse: end them (and their CUDA contexts) before MPS
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
    """End the workers joblib keeps for reuse: they carry this sweep's control folder and MPS
    settings, which the next sweep in this process must not inherit."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor  # loky's one reusable pool; None when joblib never ran
    if executor is not None:
        executor.shutdown(wait=True)


def launch(plan: Sweep, jobs: list[Job]) -> None:
    """Hand the jobs to the sweep's launcher plugin, as Hydra's multirun would, but in our order."""
    fixed = [o.input_line for o in parse_overrides(plan.argv) if not o.is_sweep_override()]
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose_with_hydra(fixed)  # the launcher's settings and Hydra's, from the fixed overrides
        home = home_overrides(cfg)
        if home:  # '~' is the home folder for the launcher's jobs too, never a folder named ~
            fixed += home
            cfg = compose_with_hydra(fixed)
        HydraConfig.instance().set_config(cfg)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(cfg))
        launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=run_job, config=cfg)
        Path(cfg.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        # Each job's own overrides; Hydra prepends the hydra ones (launcher, directory names) to each.
        overrides = [[o for o in job.overrides if not o.lstrip("+").startswith(("hydra.", "hydra/"))] for job in jobs]
        if "partition" not in plan.settings:  # not SLURM
            say_failed_returns(launcher.launch(overrides, initial_job_idx=0), jobs)
            return
        # submitit waits for each SLURM job's result through sacct: a job that ended without one
        # (cancelled, failed) on a cluster without accounting would be waited for forever.
        started, failure = time.time(), []
        waiting = threading.Thread(target=_launch_catching, args=(launcher, overrides, failure, jobs), daemon=True)
        waiting.start()
        watch_slurm_jobs(waiting, Path(cfg.hydra.sweep.dir) / ".submitit", jobs, started)
        for error in failure:  # submitit gave up on a job (cancelled, failed): the runs are counted next
            print(f"resexp: error: the SLURM launcher: {type(error).__name__}: {one_line(error)}", file=sys.stderr)


def _launch_catching(launcher: Any, overrides: list[list[str]], failure: list[Exception], jobs: list[Job]) -> None:
    try:
        say_failed_returns(launcher.launch(overrides, initial_job_idx=0), jobs)
    except Exception as error:
        failure.append(error)


def say_failed_returns(returns: list[JobReturn], jobs: list[Job]) -> None:
    """Hydra catches what a job raised outside run_job's own handling (an import failing on a
    node, say) into its JobReturn: say it, one line per job."""
    for job, returned in zip(jobs, returns):
        if returned.status == JobStatus.FAILED:
            error = returned._return_value  # the exception itself: .return_value would raise it
            print(f"resexp: error: {job.run_dir}: {type(error).__name__}: {one_line(error)}", file=sys.stderr)


SLURM_POLL_S = 10.0
SLURM_ABSENT_POLLS = 3  # a requeued job is briefly absent from squeue; one that ended stays absent


def watch_slurm_jobs(waiting: threading.Thread, folder: Path, jobs: list[Job], started: float) -> None:
    """Wait while the launcher waits, but stop once every job of this submission has a result or
    has left the queue without one, and name each of those, with its log."""
    absent: dict[str, int] = {}
    while True:
        waiting.join(SLURM_POLL_S)
        tasks = _slurm_tasks(folder, started)
        if len(tasks) < len(jobs):  # not all submitted yet (or the submission failed)
            if waiting.is_alive():
                continue
            break
        queued = _squeue({name.split("_")[0] for name in tasks})
        if queued is None:  # squeue itself failed: nothing learnt this time
            if waiting.is_alive():
                continue
            break
        for name, path in tasks.items():
            gone = name not in queued and not _has_result(path)
            absent[name] = absent.get(name, 0) + 1 if gone else 0
        if all(absent[name] >= SLURM_ABSENT_POLLS or _has_result(path) for name, path in tasks.items()):
            break
    for name, path in sorted(_slurm_tasks(folder, started).items()):
        if not _has_result(path):
            print(f"resexp: error: {jobs[int(name.split('_')[1])].run_dir}: SLURM job {name} left the queue without "
                  "a result (cancelled, pre-empted without requeue, or failed; a cluster without job accounting "
                  f"cannot say which): see {path}", file=sys.stderr)


def _has_result(task_folder: Path) -> bool:
    """submitit writes ARRAY_TASK_<rank>_result.pkl when the job's function returned or raised."""
    return any(task_folder.glob("*_result.pkl"))


def _slurm_tasks(folder: Path, started: float) -> dict[str, Path]:
    """This submission's array tasks ("ARRAY_TASK") and their submitit folders."""
    return {p.name: p for p in folder.glob("*_*") if p.is_dir() and p.stat().st_mtime >= started - 1}


def _squeue(array_ids: set[str]) -> set[str] | None:
    """The array tasks SLURM still knows (pending, running, requeued), as "ARRAY_TASK"; None if
    squeue failed for another reason than having forgotten every one of them."""
    done = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(sorted(array_ids)), "-o", "%i"],
                          capture_output=True, text=True)
    if done.returncode == 0:
        return set(done.stdout.split())
    return set() if "Invalid job id" in done.stderr else None


def run_job(cfg: DictConfig) -> str:
    """One run of a sweep, in the run directory Hydra assigned to this job. Returns its status."""
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
            cfg.trainer.device = f"cuda:{hydra_cfg.job.num % gpus}"
        if parallel > 1 and cfg.trainer.progress == "auto":  # bars of parallel runs would overwrite each other
            cfg.trainer.progress = "lines"
    if parallel > 1:  # share the CPU cores instead of fighting over them (a GPU run's host work needs few)
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel))
    return train(cfg, stop_source=control)["status"]


OUTCOMES = ("finished", "diverged", "stopped", "not started", "failed", "skipped")


def count_outcomes(jobs: list[Job], stopped: bool = False) -> dict[str, int]:
    """Each run's status from the summary.json its job wrote, printed as the sweep's one summary
    line. A job that wrote none (it failed before training: a refusal, a corrupt checkpoint), or
    left "running" (killed), failed; after a stop, it did not start, or was stopped."""
    outcomes: dict[str, list[RunDir]] = {}
    for job in jobs:
        written = job.run.summary_stamp() != job.before
        summary = summary_or_none(job.run) if written else None
        status = "skipped" if job.done else (summary or {}).get("status", "not started" if stopped else "failed")
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
        why = sorted({(summary_or_none(run) or {}).get("stopped_by", "?") for run in halted})
        raise ResexpError(f"{len(halted)} of {len(jobs)} runs were stopped ({', '.join(why)}: a SLURM job gets "
                          f"SIGTERM when cancelled or pre-empted): {_names(halted)}; the same command resumes them")
    return counts


def _names(runs: list[RunDir]) -> str:
    return ", ".join(run.name for run in runs[:3]) + (", ..." if len(runs) > 3 else "")

