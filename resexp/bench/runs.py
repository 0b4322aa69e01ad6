"""`resexp bench --runs K`: the fastest way to put K runs of a sweep on one device.

Small CIFAR nets leave a large GPU idle. Three ways to train K runs of one architecture, each
run's maths unchanged, timed on the same device:
- one after another: the trainer's step alone (the baseline; K runs take K times as long);
- processes: K processes stepping at once, as a joblib sweep runs them (hydra.sweeper.runs_per_gpu=K
  on one GPU; hydra.sweeper.cpu_runs=K on CPU, each with cpu_count/K threads); on a GPU also with
  CUDA MPS, as the sweep starts it (resexp.sweep.mps), when the MPS control binary is there;
- lock-step: K models in one process (resexp.bench.lockstep.LockstepStep), one vmapped
  forward/backward per step, so each conv becomes one grouped conv over the K models;
- fused (CIFAR nets): the K seeds as one network built of grouped convs and K×C-channel BatchNorms
  (resexp.bench.fused.FusedStep), each member with its own data and learning rate.
All of them drive step objects with the interface of resexp.engine.step; nothing of the training
step is copied. The figure of merit is aggregate training images/s against one after another.
"""

from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf

from resexp import __version__
from resexp.bench.fused import FusedStep
from resexp.bench.lockstep import LockstepStep, check_lockstep
from resexp.bench.timing import (
    PAPER_ITERS, Pipeline, images_per_s, resexp_pipeline, round_stats, sync, time_pipelines,
)
from resexp.data import RawData, local_source
from resexp.engine.runtime import Runtime, explain_compile_errors
from resexp.errors import ConfigError, ResexpError
from resexp.files import markdown_table
from resexp.sweep.mps import cuda_mps, mps_running

WORKER_TIMEOUT_S = 1800  # a process that neither reports nor fails within this is reported stuck


@dataclass
class Way:
    """One way of training the K runs, as timed: `runs_at_once` runs step together in each round."""

    name: str
    runs_at_once: int
    rounds_s: list[float]  # a round: `iters` steps of every run at once
    peak_bytes: int
    execution: str


def bench_runs(cfg: DictConfig, runs: int, iters: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Aggregate images/s of `runs` runs trained as processes and in lock-step, against one run
    alone. Processes go first, while this process holds nothing on the device; then the single
    run and the lock-step group alternate rounds, as in `resexp bench`."""
    if runs < 2:
        raise ConfigError(f"--runs {runs}: sweep throughput needs at least 2 runs")
    runtime = Runtime.from_config(cfg.trainer)
    device, precision = runtime.device, runtime.precision
    check_lockstep(cfg, runtime)
    batch = int(cfg.trainer.batch_size)
    threads = max(1, (os.cpu_count() or 1) // runs) if device.type == "cpu" else None
    already_mps = device.type == "cuda" and mps_running()  # then the processes row runs under it
    process_rounds, process_peak = _time_processes(cfg, runs, iters, warmup, repeats, threads)
    with cuda_mps(runs, int(device.type == "cuda")) as started:
        mps_timing = _time_processes(cfg, runs, iters, warmup, repeats, threads) if started else None

    raw, data_note = local_source(cfg.data)
    fusable = cfg.model.arch == "cifar_resnet"  # resexp.models.fused
    single, lockstep, *fused = time_pipelines([partial(resexp_pipeline, cfg, raw, runtime),
                                               partial(lockstep_pipeline, cfg, raw, runtime, runs),
                                               *([partial(fused_pipeline, cfg, raw, runtime, runs)] if fusable else [])],
                                              device, iters, warmup, repeats)
    processes = f"{runs} processes" + (f", {threads} thread{'s' * (threads > 1)} each" if threads else "") + (
        " (under the CUDA MPS already running)" if already_mps else "")
    execution = single.step.execution
    ways = [
        Way("one after another", 1, single.rounds_s, single.peak_bytes, execution),
        Way(processes, runs, process_rounds, process_peak, execution),
        *([Way(f"{runs} processes with CUDA MPS", runs, *mps_timing, execution)] if mps_timing else []),
        Way(f"{runs} models in lock-step, one process", runs, lockstep.rounds_s, lockstep.peak_bytes,
            lockstep.step.execution),
        *(Way(f"{runs} models fused into one, one process", runs, f.rounds_s, f.peak_bytes, f.step.execution)
          for f in fused),
    ]
    rows, fastest = tabulate(ways, runs, iters, batch, device)
    return {
        "model": cfg.model.name, "batch_size": batch, "runs": runs, "precision": precision, "iters": iters,
        "warmup_iters": warmup, "repeats": repeats, "device": runtime.device_name, "device_type": device.type,
        "torch": torch.__version__, "resexp": __version__, "cpu_count": os.cpu_count(),
        "data": data_note, "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows, "fastest": fastest,
    }


def tabulate(ways: list[Way], runs: int, iters: int, batch: int, device: torch.device
             ) -> tuple[list[dict[str, Any]], str]:
    """One report row per way, the first (one after another) the baseline of the others, and the
    fastest way's name; ratios and the fastest from the unrounded medians."""
    speeds = [images_per_s(way.rounds_s, iters, batch * way.runs_at_once) for way in ways]
    rows = []
    for way, speed in zip(ways, speeds):
        stats = round_stats(way.rounds_s, iters, batch * way.runs_at_once, way.peak_bytes, device)
        rows.append({
            "way": way.name, "runs_at_once": way.runs_at_once, "execution": way.execution, **stats,
            # the paper's 64k iterations for all K runs
            "projected_64k_all_runs_min": round(PAPER_ITERS * stats["ms_per_step"] * runs / way.runs_at_once / 60_000,
                                                2),
            "speedup_vs_one_after_another": round(speed / speeds[0], 2),
        })
    return rows, ways[speeds.index(max(speeds))].name


def lockstep_pipeline(cfg: DictConfig, raw: RawData, runtime: Runtime, runs: int) -> Pipeline:
    step = LockstepStep(cfg, raw, runtime, runs)
    step.set_lr(float(cfg.optim.lr))
    return Pipeline(f"{runs} models in lock-step", runtime.precision, runtime.layout, runtime.execution, step)


def fused_pipeline(cfg: DictConfig, raw: RawData, runtime: Runtime, runs: int) -> Pipeline:
    step = FusedStep(cfg, raw, runtime, runs)
    step.set_lr(float(cfg.optim.lr))
    return Pipeline(f"{runs} models fused into one", runtime.precision, runtime.layout, runtime.execution, step)


def _time_processes(cfg: DictConfig, runs: int, iters: int, warmup: int, repeats: int,
                    threads: int | None) -> tuple[list[float], int]:
    """Seconds per round for `runs` processes started together at a barrier (a round ends when
    the last one finishes), and the sum of their peak GPU memory (CUDA contexts not counted)."""
    context = mp.get_context("spawn")  # CUDA cannot be used in forked children
    barrier, results = context.Barrier(runs), context.Queue()
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    workers = [context.Process(target=_process_worker, daemon=True,
                               args=(cfg_dict, k, threads, iters, warmup, repeats, barrier, results))
               for k in range(runs)]
    for worker in workers:
        worker.start()
    rounds: dict[int, list[float]] = {r: [] for r in range(repeats)}
    peaks = [0] * runs
    try:
        for _ in range(runs * repeats):
            message = results.get(timeout=WORKER_TIMEOUT_S)
            if message[0] == "error":
                raise ResexpError(f"a benchmark process failed: {message[1]}")
            _, k, r, seconds, peak_bytes = message
            rounds[r].append(seconds)
            peaks[k] = max(peaks[k], peak_bytes)
    except queue.Empty:
        raise ResexpError(f"a benchmark process gave no result within {WORKER_TIMEOUT_S} s") from None
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    return [max(seconds) for seconds in rounds.values()], sum(peaks)


def _process_worker(cfg_dict: dict, offset: int, threads: int | None, iters: int, warmup: int, repeats: int,
                    barrier, results) -> None:
    """One run of the group: the trainer's step, timed between barriers."""
    try:
        with explain_compile_errors():  # compiling happens in the first steps
            _time_worker(cfg_dict, offset, threads, iters, warmup, repeats, barrier, results)
    except Exception as e:  # the parent reports it; the others must not wait for this one
        barrier.abort()
        first_line = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        results.put(("error", f"{type(e).__name__}: {first_line}"))


def _time_worker(cfg_dict: dict, offset: int, threads: int | None, iters: int, warmup: int, repeats: int,
                 barrier, results) -> None:
    if threads:
        torch.set_num_threads(threads)
    cfg = OmegaConf.create(cfg_dict)
    runtime = Runtime.from_config(cfg.trainer)
    device = runtime.device
    cfg.seed = int(cfg.seed) + offset
    raw, _ = local_source(cfg.data)
    pipeline = resexp_pipeline(cfg, raw, runtime)
    for _ in range(warmup):
        pipeline.step()
    for r in range(repeats):
        sync(device)
        barrier.wait(timeout=WORKER_TIMEOUT_S)
        start = time.perf_counter()
        for _ in range(iters):
            pipeline.step()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        results.put(("round", offset, r, time.perf_counter() - start, peak))


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# `resexp bench --runs {report['runs']}`: {report['runs']} runs of {report['model']}, "
        f"batch {report['batch_size']}, {report['precision']}",
        "",
        f"- device: {report['device']}; torch {report['torch']}, resexp {report['resexp']}, "
        f"{report['cpu_count']} CPUs; {report['date']}",
        f"- data: {report['data']}",
        f"- {report['warmup_iters']} untimed warm-up steps, then {report['repeats']} rounds of {report['iters']} "
        "timed steps; ms/step is the median round's time for one step of every run at once",
        f"- fastest: **{report['fastest']}**",
        "",
    ]
    rows = []
    for row in report["rows"]:
        memory = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f} GiB"
        rounds = ", ".join(f"{m:.0f}" for m in row["ms_per_step_rounds"])
        rows.append([row["way"], row["runs_at_once"], row["execution"], f"{row['ms_per_step']:.1f} ({rounds})",
                     f"{row['images_per_s']:,.0f}", f"{row['speedup_vs_one_after_another']:.2f}×", memory,
                     f"{row['projected_64k_all_runs_min']:.1f} min"])
    lines += markdown_table(["way", "runs at once", "execution", "ms/step (rounds)", "images/s, all runs",
                             "vs one after another", "peak GPU memory, runs at once",
                             f"{report['runs']} runs × 64k iters"], rows, right=(1, 3, 4, 5, 6, 7))
    return "\n".join([*lines, ""])
