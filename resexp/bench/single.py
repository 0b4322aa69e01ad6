"""`resexp bench`: training speed of resexp's pipeline against the usual PyTorch CIFAR recipe.

Both run in one process, on one device, on the same architecture, data and batch size:
- resexp: the trainer's own step object (resexp.engine.step.TrainStep), imported, not copied:
  uint8 data resident on the device, crop/flip/mean subtraction as batched tensor ops,
  channels_last, the configured precision (auto: bf16 where the hardware has it), fused
  optimizer, metrics kept on the device, and on CUDA the whole step captured as one CUDA graph;
- reference: the usual DataLoader + PIL recipe (resexp.bench.reference).
Speed does not depend on pixel values: a torchvision dataset that is not on disk is replaced by
random uint8 images of its shape (resexp.data.local_source), said in the output.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig

from resexp import __version__
from resexp.bench.reference import reference_pipeline
from resexp.bench.timing import PAPER_ITERS, Pipeline, images_per_s, resexp_pipeline, round_stats, time_pipelines
from resexp.data import local_source
from resexp.engine.runtime import Runtime
from resexp.engine.step import Step
from resexp.files import markdown_table


def bench_single(cfg: DictConfig, iters: int, warmup: int, repeats: int, reference: bool,
                 precisions: list[str]) -> dict[str, Any]:
    """Time resexp's step in each of `precisions` ("auto" = what training would pick; repeats
    timed once) and the reference: `warmup` untimed steps each, then `repeats` rounds of `iters`
    steps that visit the pipelines in turn. ms/step is the median round."""
    default = Runtime.from_config(cfg.trainer)
    runtimes = {}
    for name in precisions:
        runtime = Runtime.from_config({**cfg.trainer, "precision": name})
        runtimes.setdefault(runtime.precision, runtime)
    device, batch = default.device, int(cfg.trainer.batch_size)
    raw, data_note = local_source(cfg.data)
    builders = [partial(resexp_pipeline, cfg, raw, runtime) for runtime in runtimes.values()]
    if reference:
        builders.append(partial(reference_pipeline, cfg, raw, device, batch))
    pipelines = time_pipelines(builders, device, iters, warmup, repeats)
    for pipeline in pipelines:
        if pipeline.estimate_memory is not None:
            pipeline.memory_estimate = pipeline.estimate_memory()
    rows = tabulate(pipelines, batch, iters, device, default.precision, reference)
    report = {
        "model": cfg.model.name, "batch_size": batch, "iters": iters, "warmup_iters": warmup, "repeats": repeats,
        "device": default.device_name, "device_type": device.type, "torch": torch.__version__, "resexp": __version__,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "host": platform.node(),
        "data": data_note, "date": time.strftime("%Y-%m-%d %H:%M"),
        "process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "rows": rows,
    }
    if reference:
        report["speedup_vs_reference"] = next(row for row in rows if row.get("training_default"))[
            "speedup_vs_reference"]
    return report


def tabulate(pipelines: list[Pipeline], batch: int, iters: int, device: torch.device, default_precision: str,
             reference: bool) -> list[dict[str, Any]]:
    """One report row per timed pipeline; with `reference`, the last is the reference recipe and
    every row gets its speed over it, from the unrounded medians."""
    base = images_per_s(pipelines[-1].rounds_s, iters, batch) if reference else None
    rows = []
    for pipeline in pipelines:
        stats = round_stats(pipeline.rounds_s, iters, batch, pipeline.peak_bytes, device)
        row = {
            "pipeline": pipeline.name, "precision": pipeline.precision, "layout": pipeline.layout,
            # a capture that failed ran eagerly: the step knows
            "execution": pipeline.step.execution if isinstance(pipeline.step, Step) else pipeline.execution,
            "device_type": device.type, **stats,
            "projected_64k_min": round(PAPER_ITERS * stats["ms_per_step"] / 60_000, 2),
            "peak_reserved_gib": round(pipeline.peak_reserved_bytes / 2**30, 3) if device.type == "cuda" else None,
        }
        if pipeline.name.startswith("resexp"):
            row["training_default"] = pipeline.precision == default_precision
        if pipeline.memory_estimate is not None:
            row["step_memory_estimate_gib"] = pipeline.memory_estimate
        if base is not None:
            row["speedup_vs_reference"] = round(images_per_s(pipeline.rounds_s, iters, batch) / base, 2)
        rows.append(row)
    return rows


def ratio_line(report: dict[str, Any]) -> str | None:
    """The headline: the training default's speed against the reference recipe."""
    if "speedup_vs_reference" not in report:
        return None
    row = next(row for row in report["rows"] if row.get("training_default"))
    return (f"resexp ({row['precision']}, {row['execution']}) vs the reference recipe: "
            f"{report['speedup_vs_reference']:.2f}×")


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# `resexp bench`: {report['model']}, batch {report['batch_size']}",
        "",
        f"- device: {report['device']}; torch {report['torch']}, resexp {report['resexp']}, "
        f"{report['cpu_count']} CPUs, {report['torch_threads']} torch threads; {report['date']}",
        f"- data: {report['data']}",
        f"- {report['warmup_iters']} untimed warm-up steps per pipeline, then {report['repeats']} rounds of "
        f"{report['iters']} timed steps visiting the pipelines in turn; ms/step is the median round",
        f"- process peak resident memory: {report['process_peak_rss_gib']} GiB",
        *([f"- **{ratio_line(report)}**"] if ratio_line(report) else []),
        "- step memory (estimate), the same on any device: activations saved for the backward of one eager step "
        "(counted) + weights, gradients and optimizer state (from the parameter sizes) + data (counted) "
        "[+ with trainer.recompute_blocks, what the largest segment keeps while recomputed]; "
        "a lower bound on an uncompiled step's GPU peak",
        "",
    ]
    rows = []
    for row in report["rows"]:
        ratio = f"{row['speedup_vs_reference']:.2f}×" if "speedup_vs_reference" in row else "-"
        memory = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f} GiB"
        reserved = "-" if row.get("peak_reserved_gib") is None else f"{row['peak_reserved_gib']:.2f} GiB"
        estimate = row.get("step_memory_estimate_gib")
        estimate = "-" if estimate is None else (
            f"{estimate['total']:.2f} GiB ({' + '.join(f'{v:.2f}' for k, v in estimate.items() if k != 'total')})")
        rounds = ", ".join(f"{m:.0f}" for m in row["ms_per_step_rounds"])
        rows.append([f"{row['pipeline']}{' (training default)' if row.get('training_default') else ''}",
                     row["precision"], row["layout"], row["execution"], f"{row['ms_per_step']:.1f} ({rounds})",
                     f"{row['images_per_s']:,.0f}", ratio, memory, reserved, estimate,
                     f"{row['projected_64k_min']:.1f} min"])
    lines += markdown_table(["pipeline", "precision", "layout", "execution", "ms/step (rounds)", "images/s",
                             "vs reference", "peak GPU memory", "reserved by the process", "step memory (estimate)",
                             f"projected {PAPER_ITERS // 1000}k iters"], rows, right=range(4, 11))
    return "\n".join([*lines, ""])
