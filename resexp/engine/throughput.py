"""`resexp bench --runs K`: the fastest way to put K runs of a sweep on one device.

Small CIFAR nets leave a large GPU idle. Three ways to train K runs of one architecture, each
run's maths unchanged, timed on the same device:
- one after another: the trainer's step alone (the baseline; K runs take K times as long);
- processes: K processes stepping at once, as a joblib sweep runs them (launcher.runs_per_gpu=K
  on one GPU; launcher.cpu_runs=K on CPU, each with cpu_count/K threads);
- lock-step: K models in one process, their parameters and BN buffers stacked (torch.func),
  one vmapped forward/backward per step, so each conv becomes one grouped conv over the K
  models; every model has its own seed, data order and augmentation.
The figure of merit is aggregate training images/s against one after another.
"""

from __future__ import annotations

import copy
import os
import queue
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.func import functional_call, stack_module_state, vmap

from resexp import __version__
from resexp.data import device_data
from resexp.data.sources import RawData
from resexp.engine.bench import (
    PAPER_ITERS, Pipeline, bench_data, resexp_pipeline, round_stats, sync, time_pipelines, write_files,
)
from resexp.engine.schedules import learning_rate
from resexp.engine.train import (
    _autocast, _device_name, _set_determinism, build_optimizer, compile_model, explain_compile_errors,
    resolve_device, resolve_precision,
)
from resexp.errors import ConfigError, ResexpError
from resexp.models import build_model

WORKER_TIMEOUT_S = 1800  # a process that neither reports nor fails within this is reported stuck


def sweep_throughput(cfg: DictConfig, runs: int, iters: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Aggregate images/s of `runs` runs trained as processes and in lock-step, against one run
    alone. Processes go first, while this process holds nothing on the device; then the single
    run and the lock-step group alternate rounds, as in `resexp bench`."""
    if runs < 2:
        raise ConfigError(f"--runs {runs}: sweep throughput needs at least 2 runs")
    device = resolve_device(cfg.trainer.device)
    precision, _ = resolve_precision(cfg.trainer.precision, device)
    check_lockstep(cfg, precision)
    batch = int(cfg.trainer.batch_size)
    threads = max(1, (os.cpu_count() or 1) // runs) if device.type == "cpu" else None
    process_rounds, process_peak = _time_processes(cfg, runs, iters, warmup, repeats, threads)

    _set_determinism(bool(cfg.trainer.deterministic))
    raw, data_note = bench_data(cfg)
    single, lockstep = time_pipelines([partial(resexp_pipeline, cfg, raw, device, batch, precision),
                                       partial(lockstep_pipeline, cfg, raw, device, batch, precision, runs)],
                                      device, iters, warmup, repeats)

    def row(way: str, group: int, rounds_s: list[float], peak_bytes: int, compiled: str | None) -> dict[str, Any]:
        stats = round_stats(rounds_s, iters, batch * group, peak_bytes, device)  # a step of every run in the group
        return {
            "way": way, "runs_at_once": group, "compiled": compiled, **stats,
            # the paper's 64k iterations for all K runs
            "projected_64k_all_runs_min": round(PAPER_ITERS * stats["ms_per_step"] * runs / group / 60_000, 2),
        }

    processes = f"{runs} processes" + (f", {threads} thread{'s' * (threads > 1)} each" if threads else "")
    rows = [
        row("one after another", 1, single.rounds_s, single.peak_bytes, single.compiled),
        row(processes, runs, process_rounds, process_peak, single.compiled),
        row(f"{runs} models in lock-step, one process", runs, lockstep.rounds_s, lockstep.peak_bytes,
            lockstep.compiled),
    ]
    for r in rows:
        r["speedup_vs_one_after_another"] = round(r["images_per_s"] / rows[0]["images_per_s"], 2)
    fastest = max(rows, key=lambda r: r["images_per_s"])
    return {
        "model": cfg.model.name, "batch_size": batch, "runs": runs, "precision": precision, "iters": iters,
        "warmup_iters": warmup, "repeats": repeats, "device": _device_name(device), "device_type": device.type,
        "torch": torch.__version__, "resexp": __version__, "cpu_count": os.cpu_count(),
        "data": data_note, "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows, "fastest": fastest["way"],
    }


def check_lockstep(cfg: DictConfig, precision: str) -> None:
    if cfg.optim.name != "sgd":  # AdamW's decay rule reads each parameter's rank, which stacking changes
        raise ConfigError(f"lock-step is measured with optim=sgd (the paper's recipe), not optim={cfg.optim.name}")
    if precision == "fp16":  # one shared loss scale would skip a step for all runs at once
        raise ConfigError("lock-step runs in fp32 or bf16; set trainer.precision=fp32 or bf16")


class Lockstep:
    """`runs` models of cfg.model (seeds seed, seed+1, ...) trained as one: the trainer's recipe
    per model, each model's loss its own batch mean, so each gets the gradient it would alone."""

    def __init__(self, cfg: DictConfig, raw: RawData, device: torch.device, batch: int, precision: str,
                 runs: int) -> None:
        check_lockstep(cfg, precision)
        self.memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
        seed = int(cfg.seed)
        self.batchers = [device_data(raw, 0, True, device, batch, seed + k, self.memory_format).train
                         for k in range(runs)]
        models = []
        for k in range(runs):
            torch.manual_seed(seed + k)
            models.append(build_model(cfg.model, raw.channels, raw.num_classes)
                          .to(device, memory_format=self.memory_format))
        self.params, self.buffers = stack_module_state(models)  # leading dim = run; BN stats per run
        skeleton = copy.deepcopy(models[0]).to("meta")

        def one_model(p: dict, b: dict, images: torch.Tensor) -> torch.Tensor:
            return functional_call(skeleton, (p, b), (images,))

        # vmap has no batching rule for the in-place op inside adaptive_avg_pool2d; the fallback
        # loops over the K models for that one small op only, and its warning would repeat.
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
        self.forward, self.compiled = compile_model(vmap(one_model), bool(cfg.trainer.compile),
                                                    bool(cfg.trainer.cuda_graphs), device)
        self.optimizer = build_optimizer(cfg.optim, self.params.values(), device)
        self.autocast = _autocast(device, precision)
        self.errors = torch.zeros(runs, device=device)  # read every log_every steps, not here
        self.optim, self.max_iters, self.runs, self.batch = cfg.optim, int(cfg.trainer.max_iters), runs, batch

    def step(self, iteration: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.optim, iteration, self.max_iters)
        images, labels = zip(*(b.next() for b in self.batchers))
        images, labels = torch.stack(images), torch.stack(labels)  # (runs, batch, ...)
        with self.autocast:
            logits = self.forward(self.params, self.buffers, images)
            losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        self.optimizer.zero_grad(set_to_none=True)
        losses.view(self.runs, self.batch).mean(1).sum().backward()  # disjoint parameters per run
        self.optimizer.step()
        self.errors.add_((logits.argmax(-1) != labels).sum(1))


def lockstep_pipeline(cfg: DictConfig, raw: RawData, device: torch.device, batch: int, precision: str,
                      runs: int) -> Pipeline:
    group = Lockstep(cfg, raw, device, batch, precision, runs)
    layout = "channels_last" if group.memory_format == torch.channels_last else "NCHW"
    return Pipeline(f"{runs} models in lock-step", precision, layout, group.compiled, group.step)


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
    device = resolve_device(cfg.trainer.device)
    _set_determinism(bool(cfg.trainer.deterministic))
    precision, _ = resolve_precision(cfg.trainer.precision, device)
    cfg.seed = int(cfg.seed) + offset
    raw, _ = bench_data(cfg)
    pipeline = resexp_pipeline(cfg, raw, device, int(cfg.trainer.batch_size), precision)
    for i in range(warmup):
        pipeline.step(i)
    for r in range(repeats):
        sync(device)
        barrier.wait(timeout=WORKER_TIMEOUT_S)
        start = time.perf_counter()
        for i in range(warmup + r * iters, warmup + (r + 1) * iters):
            pipeline.step(i)
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        results.put(("round", offset, r, time.perf_counter() - start, peak))


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """<model>_<device>_b<batch>_runs<K>[_compiled].json and .md under out_dir."""
    compiled = "_compiled" if any(row["compiled"] for row in report["rows"]) else ""
    name = f"{report['model']}_{report['device_type']}_b{report['batch_size']}_runs{report['runs']}{compiled}"
    return write_files(out_dir / name, report, markdown(report))


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
        "| way | runs at once | compiled | ms/step (rounds) | images/s, all runs | vs one after another | "
        f"peak GPU memory, runs at once | {report['runs']} runs × 64k iters |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        memory = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f} GiB"
        rounds = ", ".join(f"{m:.0f}" for m in row["ms_per_step_rounds"])
        lines.append(
            f"| {row['way']} | {row['runs_at_once']} | {row['compiled'] or 'no'} | {row['ms_per_step']:.1f} "
            f"({rounds}) | {row['images_per_s']:,.0f} | {row['speedup_vs_one_after_another']:.2f}× | {memory} | "
            f"{row['projected_64k_all_runs_min']:.1f} min |"
        )
    return "\n".join([*lines, ""])
