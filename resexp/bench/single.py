"""`resexp bench`: training speed of resexp's pipeline against the usual PyTorch CIFAR recipe.

Both run in one process, on one device, on the same architecture and batch size:
- resexp: the trainer's own step object (resexp.engine.step.TrainStep), imported, not copied:
  uint8 data resident on the device, crop/flip/mean subtraction as batched tensor ops,
  channels_last, the configured precision (auto: bf16 where the hardware has it), fused
  optimizer, metrics kept on the device, and on CUDA the whole step captured as one CUDA graph;
- reference: torchvision CIFAR10 + DataLoader (workers = CPU count, pinned memory on CUDA)
  + PIL RandomCrop(32, padding=4) / RandomHorizontalFlip / ToTensor / Normalize, fp32 NCHW,
  torch.optim.SGD, and the per-step `loss.item()` / accuracy read most training scripts do.
Speed does not depend on pixel values: without CIFAR-10 on disk both use random uint8 images of
its shape (50k train), said in the output.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchvision import transforms
from torchvision.datasets import CIFAR10

from resexp import __version__
from resexp.data import RawData, device_data
from resexp.data.sources import data_root, load_cifar
from resexp.data.staging import dataset_files, file_problems
from resexp.engine.runtime import Runtime, resolve_device
from resexp.engine.step import Step, TrainStep
from resexp.engine.tracking import write_json
from resexp.errors import ConfigError
from resexp.models import build_model

PAPER_ITERS = 64_000
CIFAR10_SHAPE = (50_000, 3, 32, 32)
# torchvision's usual CIFAR-10 normalisation in the reference recipe
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass
class Pipeline:
    """One way to train: a step function and what to call it in the report."""

    name: str
    precision: str
    layout: str
    execution: str  # eager, torch.compile, whole-step CUDA graph, ...
    step: Callable[[], None]  # one training step
    resident_bytes: int = 0  # CUDA memory held by its data, model and optimizer
    rounds_s: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    # what the process's caching allocator held at its peak (a captured graph's private pool
    # included, which `peak_bytes` cannot see); process-wide, so earlier pipelines' memory too
    peak_reserved_bytes: int = 0
    # GiB a training step keeps: memory_estimate(), called by `bench` after the timed rounds (its
    # eager forward on the default stream must not run before the step is captured)
    estimate_memory: Callable[[], dict[str, float]] | None = None
    memory_estimate: dict[str, float] | None = None


def bench(cfg: DictConfig, iters: int, warmup: int, repeats: int, reference: bool,
          precisions: list[str]) -> dict[str, Any]:
    """Time resexp's step in each of `precisions` ("auto" = what training would pick; repeats
    timed once) and the reference: `warmup` untimed steps each, then `repeats` rounds of `iters`
    steps that visit the pipelines in turn, so that a machine getting slower or faster mid-run
    touches them all alike. ms/step is the median round."""
    default = Runtime.from_config(cfg.trainer)
    runtimes = {}
    for name in precisions:
        runtime = Runtime.from_config({**cfg.trainer, "precision": name})
        runtimes.setdefault(runtime.precision, runtime)
    device, batch = default.device, int(cfg.trainer.batch_size)
    raw, data_note = bench_data(cfg)
    builders = [partial(resexp_pipeline, cfg, raw, runtime) for runtime in runtimes.values()]
    if reference:
        builders.append(partial(_reference_pipeline, cfg, raw, device, batch))
    pipelines = time_pipelines(builders, device, iters, warmup, repeats)
    for pipeline in pipelines:
        if pipeline.estimate_memory is not None:
            pipeline.memory_estimate = pipeline.estimate_memory()
    rows = [_row(p, batch, iters, device, default.precision) for p in pipelines]
    report = {
        "model": cfg.model.name, "batch_size": batch, "iters": iters, "warmup_iters": warmup, "repeats": repeats,
        "device": default.device_name, "device_type": device.type, "torch": torch.__version__, "resexp": __version__,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "host": platform.node(),
        "data": data_note, "date": time.strftime("%Y-%m-%d %H:%M"),
        "process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "rows": rows,
    }
    if reference:
        base = rows[-1]["images_per_s"]
        for row in rows:
            row["speedup_vs_reference"] = round(row["images_per_s"] / base, 2)
        report["speedup_vs_reference"] = next(row for row in rows if row.get("training_default"))[
            "speedup_vs_reference"]
    return report


def ratio_line(report: dict[str, Any]) -> str | None:
    """The headline: the training default's speed against the reference recipe."""
    if "speedup_vs_reference" not in report:
        return None
    row = next(row for row in report["rows"] if row.get("training_default"))
    return (f"resexp ({row['precision']}, {row['execution']}) vs the reference recipe: "
            f"{report['speedup_vs_reference']:.2f}×")


def time_pipelines(builders: list[Callable[[], Pipeline]], device: torch.device, iters: int, warmup: int,
                   repeats: int) -> list[Pipeline]:
    """Build each pipeline (noting the device memory it keeps) and warm it up; then `repeats`
    rounds of `iters` timed steps that visit the pipelines in turn."""
    pipelines = []
    for build in builders:
        before = _allocated(device)
        pipeline = build()
        for _ in range(warmup):
            pipeline.step()
        # after the warm-up: gradients, optimizer state and a captured graph's memory pool exist
        pipeline.resident_bytes = _allocated(device) - before
        pipelines.append(pipeline)
    for _ in range(repeats):
        for pipeline in pipelines:
            _time_round(pipeline, iters, device)
    return pipelines


def report_stem(out_dir: Path, cfg: DictConfig, runs: int = 1) -> Path:
    """<model>_<device>_b<batch>[_runs<K>][_compiled][_graph-<choice>][_recompute<N>]: where the
    report of this bench goes, known before it runs (so an older report is not silently replaced)."""
    t = cfg.trainer
    parts = [f"{cfg.model.name}_{resolve_device(str(t.device)).type}_b{t.batch_size}",
             f"runs{runs}" if runs > 1 else "", "compiled" if t.compile else "",
             f"graph-{t.graph}" if t.graph != "auto" else "", f"recompute{t.recompute_blocks}" if t.recompute_blocks else ""]
    return out_dir / "_".join(p for p in parts if p)


def check_not_written(stem: Path, force: bool) -> None:
    """A new report never replaces an older one without --force."""
    existing = [p for p in (stem.with_suffix(".json"), stem.with_suffix(".md")) if p.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} already exists; pass --force to replace it, or -o for another folder")


def write_report(stem: Path, report: dict[str, Any], text: str) -> list[Path]:
    """stem.json (the report) and stem.md (its table)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), report)
    stem.with_suffix(".md").write_text(text)
    return [stem.with_suffix(".json"), stem.with_suffix(".md")]


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
        "| pipeline | precision | layout | execution | ms/step (rounds) | images/s | vs reference | "
        "peak GPU memory | reserved by the process | step memory (estimate) | "
        f"projected {PAPER_ITERS // 1000}k iters |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        ratio = f"{row['speedup_vs_reference']:.2f}×" if "speedup_vs_reference" in row else "-"
        memory = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f} GiB"
        reserved = "-" if row.get("peak_reserved_gib") is None else f"{row['peak_reserved_gib']:.2f} GiB"
        estimate = row.get("step_memory_estimate_gib")
        estimate = "-" if estimate is None else (
            f"{estimate['total']:.2f} GiB ({' + '.join(f'{v:.2f}' for k, v in estimate.items() if k != 'total')})")
        rounds = ", ".join(f"{m:.0f}" for m in row["ms_per_step_rounds"])
        lines.append(
            f"| {row['pipeline']}{' (training default)' if row.get('training_default') else ''} | "
            f"{row['precision']} | {row['layout']} | {row['execution']} | {row['ms_per_step']:.1f} "
            f"({rounds}) | {row['images_per_s']:,.0f} | {ratio} | {memory} | {reserved} | {estimate} | "
            f"{row['projected_64k_min']:.1f} min |"
        )
    return "\n".join([*lines, ""])


def bench_data(cfg: DictConfig) -> tuple[RawData, str]:
    """CIFAR-10 when it is on disk (never downloaded for a benchmark), else uint8 noise of its shape."""
    cifar10, root = dataset_files("cifar10"), data_root(cfg.data)
    if cfg.data.name == "cifar10" and not file_problems(cifar10, root):
        return load_cifar(cifar10, root), f"CIFAR-10 from {root}"
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, CIFAR10_SHAPE, dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (CIFAR10_SHAPE[0],), generator=generator)
    test = images[:10_000].clone()
    raw = RawData(images, labels, test, labels[:10_000].clone(), 10, 3, "cifar10-shaped noise")
    return raw, "random uint8 images of CIFAR-10's shape (50,000 × 3×32×32; CIFAR-10 not found on disk)"


def resexp_pipeline(cfg: DictConfig, raw: RawData, runtime: Runtime) -> Pipeline:
    """The trainer's step object, built as train() builds it, at the recipe's first lr."""
    data = device_data(raw, 0, True, runtime.device, int(cfg.trainer.batch_size), int(cfg.seed),
                       runtime.memory_format)
    step = TrainStep.build(cfg, data, runtime)
    step.set_lr(float(cfg.optim.lr))
    return Pipeline("resexp (the trainer's step)", runtime.precision, runtime.layout, runtime.execution, step,
                    estimate_memory=partial(memory_estimate, step.model, step.optimizer, data, runtime.autocast()))


def memory_estimate(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data, autocast) -> dict[str, float]:
    """GiB an eager training step keeps on its device, the same on CPU and GPU: the activations
    saved for the backward of one batch and the data splits, counted tensor by tensor, and the
    weights with their gradients and optimizer state, from the parameter sizes. A lower bound on
    an uncompiled step's GPU peak: the allocator's caching and cuDNN workspaces come on top; a
    compiled step may save less."""
    weights = [p for p in model.parameters() if p.requires_grad]
    weight_bytes = sum(p.numel() * p.element_size() for p in weights)
    # state tensors per weight: SGD keeps a momentum buffer, Adam(W) two moments
    states = {"SGD": 1 if optimizer.defaults.get("momentum") else 0, "AdamW": 2}.get(type(optimizer).__name__, 2)
    batcher = data.train
    data_bytes = sum(t.numel() * t.element_size() for t in (batcher.images, batcher.padded, batcher.labels,
                                                            data.eval_images, data.eval_labels))
    images, _ = batcher.next()
    parts = {
        "activations": saved_activation_bytes(model, images, autocast),
        "weights_grads_optimizer": weight_bytes * (2 + states),
        "data": data_bytes,
    }
    if getattr(model, "recompute_segment", 0):
        parts["recomputed_segment"] = recomputed_segment_bytes(model, images, autocast)
    gib = {name: round(n / 2**30, 3) for name, n in parts.items()}
    return {**gib, "total": round(sum(parts.values()) / 2**30, 3)}


def recomputed_segment_bytes(model: torch.nn.Module, images: torch.Tensor, autocast) -> int:
    """With trainer.recompute_blocks: what the largest segment keeps while the backward
    recomputes it, on top of the segment inputs kept from the forward."""
    inputs: list[torch.Tensor] = []
    hooks = [stage.register_forward_pre_hook(lambda _, args: inputs.append(args[0].detach()))
             for stage in model.stages]
    try:
        with torch.no_grad(), autocast:
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return max(saved_activation_bytes(stage[:model.recompute_segment], x.requires_grad_(), autocast)
               for stage, x in zip(model.stages, inputs))


def saved_activation_bytes(model: torch.nn.Module, images: torch.Tensor, autocast) -> int:
    """Bytes autograd keeps from one forward for the backward, the parameters themselves not
    counted; tensors sharing storage (an in-place ReLU's input and output) count once."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    # storages, not tensors, are kept (so none is freed and its address reused while counting):
    # autograd keeps these hooks with the graph, and a tensor held here would hold its own graph
    # (a cycle no one frees), whose AccumulateGrad nodes, made on this stream, broke a later
    # CUDA-graph capture of the training step (seen on an H100)
    saved: dict[int, torch.UntypedStorage] = {}

    def pack(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage

    with torch.autograd.graph.saved_tensors_hooks(pack, _no_backward), autocast:
        model(images)
    return sum(storage.nbytes() for storage in saved.values())


def _no_backward(_) -> torch.Tensor:
    raise RuntimeError("saved_activation_bytes counts a forward's saved tensors; its graph has no backward")


def _reference_pipeline(cfg, raw, device, batch) -> Pipeline:
    """The usual recipe, as in most public CIFAR ResNet reproductions."""
    dataset = _ArrayCIFAR10(raw, transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
    ]))
    workers = os.cpu_count() or 1
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=True,
    )
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, raw.channels, raw.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    batches = iter(loader)
    seen = {"loss": 0.0, "correct": 0}

    def step() -> None:
        nonlocal batches
        try:
            images, labels = next(batches)
        except StopIteration:  # a new epoch: reshuffle, as `for epoch ...: for batch in loader` does
            batches = iter(loader)
            images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen["loss"] += loss.item()
        seen["correct"] += (logits.argmax(1) == labels).sum().item()

    return Pipeline(f"reference (DataLoader, {workers} workers, PIL transforms)", "fp32", "NCHW", "eager", step)


class _ArrayCIFAR10(CIFAR10):
    """torchvision's CIFAR10 over arrays already in memory: its own __getitem__ (PIL image,
    transforms) on the same HWC uint8 layout it reads from the batch files."""

    def __init__(self, raw: RawData, transform: Callable) -> None:
        self.data = np.ascontiguousarray(raw.train_images.permute(0, 2, 3, 1).numpy())
        self.targets = raw.train_labels.tolist()
        self.transform, self.target_transform = transform, None


def _time_round(pipeline: Pipeline, iters: int, device: torch.device) -> None:
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _allocated(device)
    start = time.perf_counter()
    for _ in range(iters):
        pipeline.step()
    sync(device)
    pipeline.rounds_s.append(time.perf_counter() - start)
    if device.type == "cuda":  # what this pipeline needs alone: its resident memory plus its peak
        transient = torch.cuda.max_memory_allocated(device) - before
        pipeline.peak_bytes = max(pipeline.peak_bytes, pipeline.resident_bytes + transient)
        pipeline.peak_reserved_bytes = max(pipeline.peak_reserved_bytes, torch.cuda.max_memory_reserved(device))


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_stats(rounds_s: list[float], iters: int, images_per_step: int, peak_bytes: int,
                device: torch.device) -> dict[str, Any]:
    """ms/step (median round, and every round), images/s and peak GPU memory of timed rounds."""
    ms = [1000 * s / iters for s in rounds_s]
    median = statistics.median(ms)
    return {
        "ms_per_step": round(median, 2), "ms_per_step_rounds": [round(m, 2) for m in ms],
        "images_per_s": round(1000 * images_per_step / median, 1),
        "peak_memory_gib": round(peak_bytes / 2**30, 3) if device.type == "cuda" else None,
    }


def _row(pipeline: Pipeline, batch: int, iters: int, device: torch.device, default_precision: str) -> dict[str, Any]:
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
    return row
