"""`resexp bench --sweep`: a whole sweep's speed, measured on the sweep's own processes.

`resexp sweep` itself (its launcher, its processes, their sharing of a GPU through CUDA MPS)
runs for a window of --seconds in a temporary run.root, in a process group of its own. Then the
group gets SIGTERM, as `timeout` sends it: each running run saves a checkpoint and stops, and
the sweep exits. Whatever of the group is still alive after the sweep's own grace time is
killed, so nothing the bench started outlives it; the MPS daemon the sweep would start is
started here instead (the sweep then uses it) and stopped here, whatever becomes of the sweep.

Every run's summary.json then tells how far it got and how fast it went (iters_per_s, over its
last trainer.log_every iterations). From these: each run's iterations/s and layer-iterations/s
(iterations/s × the model's depth: the work that runs sharing a device split between them),
their sum over the runs training when the window closed, and the whole sweep's wall time,
projected by replaying the launcher's list scheduling over the work left (`project`,
`list_schedule`).
"""

from __future__ import annotations

import heapq
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from resexp import __version__
from resexp.errors import ConfigError, ResexpError
from resexp.files import markdown_table
from resexp.rundir import DONE
from resexp.sweep.control import GRACE_S
from resexp.sweep.launch import LOCAL_LAUNCHERS, prepare_sweep
from resexp.sweep.mps import cuda_mps, mps_running
from resexp.sweep.plan import Sweep, visible_gpus, with_preset

# After SIGTERM: the sweep's own grace for its runs to checkpoint (it kills the late ones), then
# time to count its runs and stop; what is left of its process group after this is killed
STOP_GRACE_S = GRACE_S + 30
KILL_WAIT_S = 10  # for killed processes to be gone
AT_THE_CLOSE = ("stopped", "running")  # training when the window closed ("running": killed before it could say)


@dataclass
class Target:
    """The sweep to time: what the bench was given, as `resexp sweep` takes it, planned in a
    temporary run.root (jobs in launch order, launcher settings)."""

    overrides: list[str]
    root: Path
    plan: Sweep

    @property
    def args(self) -> list[str]:
        return [*self.overrides, f"run.root={self.root}"]


def plan_target(words: list[str], root: Path) -> Target:
    """The bench's overrides as `resexp sweep` takes them (a preset first: figure6 is
    sweep=figure6), planned in run.root=`root`; refused unless its launcher runs here."""
    words = with_preset(words)
    if any(word.lstrip("+").startswith("run.root=") for word in words):
        raise ConfigError("bench --sweep trains in a temporary run.root of its own; leave run.root= out")
    plan = prepare_sweep([*words, f"run.root={root}"])
    if plan.launcher not in LOCAL_LAUNCHERS:
        raise ConfigError(f"bench --sweep runs the sweep on this machine: hydra/launcher="
                          f"{' or '.join(LOCAL_LAUNCHERS)}, not {plan.launcher}")
    return Target(words, root, plan)


def sweep_stem(out_dir: Path, plan: Sweep) -> Path:
    """sweep_<run.sweep>_<cpu|cuda>_<N>runs[_compiled]: where the report goes, known before the sweep runs."""
    first = plan.jobs[0].cfg
    compiled = "_compiled" if first.trainer.compile else ""
    return out_dir / f"sweep_{first.run.sweep}_{device_kind(first)}_{len(plan.jobs)}runs{compiled}"


def device_kind(cfg: DictConfig) -> str:
    """cpu or cuda: where the runs train, told without making a CUDA context in this process
    (one would sit on the GPU beside the MPS daemon's clients)."""
    return "cpu" if str(cfg.trainer.device) == "cpu" or not visible_gpus() else "cuda"


def runs_at_once(plan: Sweep) -> int:
    """The launcher's slots: joblib's n_jobs (negative counts back from the CPU count, as joblib
    does); the basic launcher runs one at a time."""
    n_jobs = int(plan.settings.get("n_jobs") or 1)
    return n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)


@dataclass
class Window:
    """The sweep's time under the bench."""

    launched: float  # time.time() at the launch
    seconds: float  # from the launch to SIGTERM, or to the sweep's exit had it ended first
    ending: str  # how the sweep ended, in words


def run_window(args: list[str], seconds: float) -> Window:
    """`resexp sweep ARGS` in a process group of its own (its output passes through) for
    `seconds`, then stopped: no process of it is left when this returns or raises."""
    previous = {number: signal.signal(number, _exit_on) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        launched = time.time()
        process = subprocess.Popen([sys.executable, "-m", "resexp.cli", "sweep", *args], start_new_session=True)
        try:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=seconds)
            window = time.time() - launched
            ending = (stop_group(process) if group_members(process.pid)
                      else f"ended by itself, exit {process.returncode}")
        except BaseException:  # Ctrl-C, SIGTERM, an error here: nothing of the sweep may outlive the bench
            kill_group(process)
            raise
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return Window(launched, window, ending)


def _exit_on(number: int, frame) -> None:
    """SIGTERM or SIGHUP to the bench (`timeout` ending it, a closed terminal) unwinds it as Ctrl-C
    does, through the code that stops the sweep and its MPS daemon, instead of ending it there."""
    raise SystemExit(128 + number)


def stop_group(process: subprocess.Popen) -> str:
    """SIGTERM to the sweep's process group, as `timeout` sends it; SIGKILL to whatever of it is
    still alive STOP_GRACE_S later. How the sweep ended, in words."""
    signalled = time.monotonic()
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    while time.monotonic() - signalled < STOP_GRACE_S:
        process.poll()  # reaps the sweep's own process once it exits
        if not group_members(process.pid):
            return f"SIGTERM, exit {process.wait()} {time.monotonic() - signalled:.0f} s later"
        time.sleep(0.5)
    left = group_members(process.pid)
    kill_group(process)
    return (f"SIGTERM; {len(left)} process(es) still alive {STOP_GRACE_S:.0f} s later were killed (SIGKILL); "
            f"the sweep's exit {process.returncode}")


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to the sweep's whole process group; returns once none of it is alive."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + KILL_WAIT_S
    while group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def group_members(pgid: int) -> list[int]:
    """The live processes of process group `pgid`; zombies (dead, waiting for a parent to reap
    them, which a container's init may never do) do not count."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: whether any process of the group exists, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for stat in proc.glob("[0-9]*/stat"):
        try:  # "pid (name) state ppid pgrp ...": the name may hold spaces and parentheses
            state, _, group = stat.read_text().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):  # gone meanwhile
            continue
        if int(group) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


@dataclass
class RunSpeed:
    """One job of the sweep, as the window left it."""

    run: str  # its run directory's name
    model: str
    depth: int  # the model's nominal depth: 20 for resnet20
    max_iters: int
    status: str = "not started"  # summary.json's status, or "started after the window"
    iterations: int = 0  # trained in the window
    iters_per_s: float | None = None  # its speed in the window (None: it never reported one)
    started_s: float | None = None  # when it began training (data and model built), after the launch
    peak_gpu_memory_gib: float | None = None

    @property
    def layer_iters_per_s(self) -> float | None:
        return None if self.iters_per_s is None else self.iters_per_s * self.depth

    @property
    def left(self) -> int:
        """Iterations still to train."""
        return 0 if self.status in DONE else self.max_iters - self.iterations


def read_runs(plan: Sweep, window: Window) -> tuple[list[RunSpeed], str | None]:
    """Every job as its summary.json tells it after the window, in launch order, and the device
    the runs trained on. A run that began after the window (a launcher that went on after
    SIGTERM) counts as not started."""
    runs, device = [], None
    for job in plan.jobs:
        model = job.cfg.model
        run = RunSpeed(job.run_dir.name, str(model.name), int(model.depth), int(job.cfg.trainer.max_iters))
        summary = job.run.read_summary()
        if summary is not None:
            if summary.status == "failed":
                raise ResexpError(f"run {run.run} of the benched sweep failed: {summary.error}")
            segment = summary.segments[0]
            started = max(0.0, datetime.fromisoformat(segment.started).timestamp() - window.launched)
            if started > window.seconds:
                run.status = "started after the window"
            else:
                run.status, run.iterations, run.started_s = summary.status, int(summary.iterations), started
                # a run stopped before its first log point: its whole loop's mean speed
                loop_speed = run.iterations / summary.wall_time_s if summary.wall_time_s else None
                run.iters_per_s = summary.iters_per_s or loop_speed or None
                run.peak_gpu_memory_gib = summary.peak_gpu_memory_gib
                device = device or segment.device
        runs.append(run)
    return runs, device


def layer_speed_per_run(runs: list[RunSpeed]) -> float:
    """The mean layer-iterations/s of a run measured in the window."""
    measured = [run.layer_iters_per_s for run in runs if run.layer_iters_per_s]
    if not measured:
        raise ResexpError("no run of the sweep reported its speed within the window (a run reports every "
                          "trainer.log_every iterations); give the bench more --seconds")
    return statistics.mean(measured)


def project(runs: list[RunSpeed], startup_s: float) -> list[float]:
    """Each job's seconds still to go: its iterations left at its measured speed; a job not
    measured in the window at a measured run's mean layer-iterations/s over its own depth; a job
    that had not started pays the first runs' start-up too."""
    per_run = layer_speed_per_run(runs)
    return [run.left / (run.iters_per_s or per_run / run.depth) + (startup_s if run.started_s is None else 0.0)
            for run in runs]


def list_schedule(durations: list[float], slots: int) -> float:
    """When the last job ends if each, in order, starts on the first of `slots` to come free:
    how joblib hands a sweep's jobs to its workers."""
    free = [0.0] * slots  # a heap of the times the slots come free
    for duration in durations:
        heapq.heapreplace(free, free[0] + duration)
    return max(free)


def bench_sweep(target: Target, seconds: float) -> dict[str, Any]:
    """Run the sweep for a window of `seconds`; its runs' speeds and its projected wall time."""
    plan, slots = target.plan, runs_at_once(target.plan)
    print(f"bench: resexp sweep {' '.join(target.args)}: {len(plan.jobs)} runs, {slots} at once, "
          f"stopped with SIGTERM after {seconds:g} s", flush=True)
    already = mps_running()
    # stopped here, whatever becomes of the sweep; where it fails, the sweep inside does not try again
    with cuda_mps(plan.per_gpu, visible_gpus()) as started:
        window = run_window(target.args, seconds)
    runs, device = read_runs(plan, window)
    startup = min((run.started_s for run in runs if run.started_s is not None), default=0.0)
    left_s = project(runs, startup)
    rest = list_schedule(left_s, slots)
    return sweep_report(target, runs, left_s, rest, window, startup, device, started or already)


def sweep_report(target: Target, runs: list[RunSpeed], left_s: list[float], rest: float, window: Window,
                 startup: float, device: str | None, under_mps: bool) -> dict[str, Any]:
    """The bench's report; `under_mps`: the runs shared each GPU through a CUDA MPS daemon."""
    first = target.plan.jobs[0].cfg
    closing = [run for run in runs if run.status in AT_THE_CLOSE]
    peaks = [run.peak_gpu_memory_gib for run in closing]
    return {
        "sweep": str(first.run.sweep), "command": " ".join(["resexp sweep", *target.overrides]),
        "runs": len(runs), "launcher": target.plan.launcher, "runs_at_once": runs_at_once(target.plan),
        "mps_runs_per_gpu": target.plan.per_gpu, "under_mps": under_mps, "device": device,
        "device_type": device_kind(first),
        "torch": torch.__version__, "resexp": __version__, "cpu_count": os.cpu_count(), "host": platform.node(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "window_s": round(window.seconds, 1), "ended": window.ending, "startup_s": round(startup, 1),
        "runs_at_close": len(closing),
        "layer_iters_per_s_at_close": round(sum(run.layer_iters_per_s or 0 for run in closing)) if closing else None,
        "layer_iters_per_s_per_run": round(layer_speed_per_run(runs)),
        "peak_gpu_memory_gib_at_close": round(sum(peaks), 2) if closing and None not in peaks else None,
        "layer_iterations": sum(run.max_iters * run.depth for run in runs),
        "layer_iterations_done": sum(run.iterations * run.depth for run in runs),
        "projected_rest_s": round(rest, 1), "projected_total_s": round(window.seconds + rest, 1),
        "per_run": [{**asdict(run), "started_s": None if run.started_s is None else round(run.started_s, 1),
                     "layer_iters_per_s": None if run.layer_iters_per_s is None else round(run.layer_iters_per_s),
                     "left_s": round(seconds, 1)} for run, seconds in zip(runs, left_s)],
    }


def headline(report: dict[str, Any]) -> str:
    return (f"projected wall time of the whole sweep: {report['projected_total_s'] / 60:.1f} min "
            f"({report['window_s'] / 60:.1f} min measured, then {report['projected_rest_s'] / 60:.1f} min for the "
            f"rest, {report['runs_at_once']} at once)")


def markdown(report: dict[str, Any]) -> str:
    at_close = report["layer_iters_per_s_at_close"]
    memory = report["peak_gpu_memory_gib_at_close"]
    mps = report["mps_runs_per_gpu"]
    lines = [
        f"# `resexp bench --sweep`: {report['sweep']}, {report['runs']} runs, {report['runs_at_once']} at once",
        "",
        f"- sweep: `{report['command']}` in a temporary run.root; launcher {report['launcher']}"
        + ((f", {mps} runs per GPU under CUDA MPS" if report["under_mps"] else
            f", {mps} runs per GPU by time slicing (no CUDA MPS daemon ran)") if mps > 1 else ""),
        f"- device: {report['device']}; torch {report['torch']}, resexp {report['resexp']}, "
        f"{report['cpu_count']} CPUs, host {report['host']}; {report['date']}",
        f"- window: {report['window_s']:.0f} s from the launch; {report['ended']}",
        f"- start-up: the first run began training {report['startup_s']:.0f} s after the launch (data and model "
        "built; a graph capture or compilation comes after)",
        "- speed: " + (f"{at_close:,} layer-iterations/s (iterations/s × depth) summed over the "
                       f"{report['runs_at_close']} runs training when the window closed" if at_close is not None
                       else "the sweep ended within the window")
        + f"; {report['layer_iters_per_s_per_run']:,} per measured run on average"
        + (f"; peak GPU memory {memory:.2f} GiB summed over those runs" if memory is not None else ""),
        f"- work: {report['layer_iterations_done'] / 1e6:.2f}M of the sweep's {report['layer_iterations'] / 1e6:.2f}M "
        "layer-iterations done in the window",
        f"- **{headline(report)}**: the launcher's slots take the jobs in launch order, each as the first slot "
        "comes free; a job goes on at its measured it/s, or, not measured in the window, at the mean "
        "layer-iterations/s of a measured run over its depth, plus the start-up if it had not started. A run keeps "
        "the speed it had while sharing the device, so where runs share a GPU the end, with fewer of them left, "
        "is projected slower than it will be",
        "",
    ]
    rows = [[run["run"], run["model"], run["depth"], run["status"], f"{run['iterations']:,} / {run['max_iters']:,}",
             _shown(run["iters_per_s"], "{:.1f}"), _shown(run["layer_iters_per_s"], "{:,}"),
             _shown(run["started_s"], "{:.0f} s"), _shown(run["peak_gpu_memory_gib"], "{:.2f} GiB"),
             f"{run['left_s'] / 60:.1f} min"] for run in report["per_run"]]
    lines += markdown_table(["run", "model", "depth", "status", "iterations", "it/s", "layer-it/s", "started after",
                             "peak GPU memory", "time left (projected)"], rows, right=(2, *range(4, 10)))
    return "\n".join([*lines, ""])


def _shown(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)
