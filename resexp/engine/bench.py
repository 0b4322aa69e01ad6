"""`resexp bench`: training speed of resexp's pipeline against the usual PyTorch CIFAR recipe.

Both run in one process, on one device, on the same architecture and batch size:
- resexp: uint8 data resident on the device, crop/flip/mean subtraction as batched tensor ops,
  channels_last, the configured precision (auto: bf16 where the hardware has it), fused
  optimizer on CUDA, metrics kept on the device (exactly the trainer's step);
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchvision import transforms
from torchvision.datasets import CIFAR10

from resexp import __version__
from resexp.data import device_data
from resexp.data.sources import RawData, data_root, load_cifar, verify_cifar
from resexp.engine.schedules import learning_rate
from resexp.engine.train import (
    _autocast, _device_name, _set_determinism, build_optimizer, compile_model, forward_backward, optimizer_step, resolve_device,
    resolve_precision,
)
from resexp.engine.tracking import write_json
from resexp.models import build_model

PAPER_ITERS = 64_000
CIFAR10_SHAPE = (50_000, 3, 32, 32)
# torchvision's usual CIFAR-10 normalisation in the reference recipe
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def bench(cfg: DictConfig, iters: int, warmup: int, reference: bool, compare_fp32: bool) -> dict[str, Any]:
    """Time `iters` training steps (after `warmup` untimed ones) of each pipeline; returns the report."""
    device = resolve_device(cfg.trainer.device)
    _set_determinism(bool(cfg.trainer.deterministic))
    batch = int(cfg.trainer.batch_size)
    raw, data_note = _bench_data(cfg)
    rows = [_time_resexp(cfg, raw, device, batch, iters, warmup, cfg.trainer.precision)]
    if compare_fp32 and rows[0]["precision"] != "fp32":
        rows.append(_time_resexp(cfg, raw, device, batch, iters, warmup, "fp32"))
    if reference:
        rows.append(_time_reference(cfg, raw, device, batch, iters, warmup))
        base = rows[-1]["images_per_s"]
        for row in rows:
            row["speedup_vs_reference"] = round(row["images_per_s"] / base, 2)
    return {
        "model": cfg.model.name, "batch_size": batch, "iters": iters, "warmup_iters": warmup,
        "device": _device_name(device), "torch": torch.__version__, "resexp": __version__,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "host": platform.node(),
        "data": data_note, "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows,
    }


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """<model>_<device>_b<batch>.json and .md under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if report["rows"][0]["device_type"] == "cuda" else "cpu"
    stem = out_dir / f"{report['model']}_{device}_b{report['batch_size']}"
    write_json(stem.with_suffix(".json"), report)
    stem.with_suffix(".md").write_text(markdown(report))
    return [stem.with_suffix(".json"), stem.with_suffix(".md")]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# `resexp bench`: {report['model']}, batch {report['batch_size']}",
        "",
        f"- device: {report['device']}; torch {report['torch']}, resexp {report['resexp']}, "
        f"{report['cpu_count']} CPUs, {report['torch_threads']} torch threads; {report['date']}",
        f"- data: {report['data']}",
        f"- {report['iters']} timed steps after {report['warmup_iters']} untimed warm-up steps, one process",
        "",
        "| pipeline | precision | layout | compiled | ms/step | images/s | vs reference | peak memory | "
        f"projected {PAPER_ITERS // 1000}k iters |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        ratio = f"{row['speedup_vs_reference']:.2f}×" if "speedup_vs_reference" in row else "-"
        lines.append(
            f"| {row['pipeline']} | {row['precision']} | {row['layout']} | {row['compiled'] or 'no'} | "
            f"{row['ms_per_step']:.1f} | {row['images_per_s']:,.0f} | {ratio} | {row['peak_memory']} | "
            f"{row['projected_64k_min']:.1f} min |"
        )
    lines += ["", "Peak memory: on CUDA the allocator's peak for that pipeline; on CPU the process's "
              "peak resident set so far (it only grows, so later rows include earlier ones).", ""]
    return "\n".join(lines)


def _bench_data(cfg: DictConfig) -> tuple[RawData, str]:
    """CIFAR-10 when it is on disk (never downloaded for a benchmark), else uint8 noise of its shape."""
    if cfg.data.name == "cifar10" and verify_cifar(data_root(cfg.data) / CIFAR10.base_folder, CIFAR10) is None:
        return load_cifar("cifar10", data_root(cfg.data), download=False), f"CIFAR-10 from {data_root(cfg.data)}"
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, CIFAR10_SHAPE, dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (CIFAR10_SHAPE[0],), generator=generator)
    test = images[:10_000].clone()
    raw = RawData(images, labels, test, labels[:10_000].clone(), 10, 3, "cifar10-shaped noise")
    return raw, "random uint8 images of CIFAR-10's shape (50,000 × 3×32×32; CIFAR-10 not found on disk)"


def _time_resexp(cfg, raw, device, batch, iters, warmup, precision_name) -> dict[str, Any]:
    """The trainer's own step: the same functions train() calls, in the same order."""
    precision, _ = resolve_precision(precision_name, device)
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    data = device_data(raw, 0, True, device, batch, int(cfg.seed), memory_format)
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, raw.channels, raw.num_classes).to(device, memory_format=memory_format)
    optimizer = build_optimizer(cfg.optim, model, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = _autocast(device, precision)
    forward, compiled = compile_model(model, bool(cfg.trainer.compile), bool(cfg.trainer.cuda_graphs), device)
    errors = torch.zeros((), device=device)
    max_iters = int(cfg.trainer.max_iters)

    def step(i: int) -> None:
        nonlocal errors
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg.optim, i, max_iters)
        images, labels = data.train.next()
        _, logits = forward_backward(forward, optimizer, scaler, autocast, images, labels)
        optimizer_step(optimizer, scaler)
        errors += (logits.argmax(1) != labels).sum()  # read every log_every steps, not here

    seconds, peak = _timed(step, iters, warmup, device)
    layout = "channels_last" if memory_format == torch.channels_last else "NCHW"
    return _row("resexp (device-resident data)", precision, layout, compiled, device, batch, iters, seconds, peak)


def _time_reference(cfg, raw, device, batch, iters, warmup) -> dict[str, Any]:
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

    def step(_: int) -> None:
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

    seconds, peak = _timed(step, iters, warmup, device)
    return _row(f"reference (DataLoader, {workers} workers, PIL transforms)", "fp32", "NCHW", None, device,
                batch, iters, seconds, peak)


class _ArrayCIFAR10(CIFAR10):
    """torchvision's CIFAR10 over arrays already in memory: its own __getitem__ (PIL image,
    transforms) on the same HWC uint8 layout it reads from the batch files."""

    def __init__(self, raw: RawData, transform: Callable) -> None:
        self.data = np.ascontiguousarray(raw.train_images.permute(0, 2, 3, 1).numpy())
        self.targets = raw.train_labels.tolist()
        self.transform, self.target_transform = transform, None


def _timed(step: Callable[[int], None], iters: int, warmup: int, device: torch.device) -> tuple[float, str]:
    for i in range(warmup):
        step(i)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + iters):
        step(i)
    _sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    else:  # ru_maxrss is in KiB on Linux
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"
    return seconds, peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _row(pipeline, precision, layout, compiled, device, batch, iters, seconds, peak) -> dict[str, Any]:
    ms = 1000 * seconds / iters
    return {
        "pipeline": pipeline, "precision": precision, "layout": layout, "compiled": compiled,
        "device_type": device.type, "ms_per_step": round(ms, 2), "images_per_s": round(batch * iters / seconds, 1),
        "peak_memory": peak, "projected_64k_min": round(PAPER_ITERS * ms / 60_000, 2),
    }
