"""The training loop: iteration-based, as in the paper. Reads top to bottom."""

from __future__ import annotations

import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from resexp import __version__
from resexp.analysis import block_grad_norms, stream_probes, supports_probes
from resexp.data import Data, build_data
from resexp.engine.checkpoint import load_checkpoint, save_checkpoint
from resexp.engine.schedules import learning_rate
from resexp.engine.tracking import ProgressReport, read_json, tensorboard_writer, write_json
from resexp.errors import ConfigError
from resexp.models import build_model, count_macs, count_params

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Sections that define what a run computes; a resumed run must match them exactly.
IDENTITY_KEYS = ("model", "data", "optim", "seed")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one run in cfg.run.dir (resuming it if it has a checkpoint); returns its summary."""
    run_dir = Path(cfg.run.dir).expanduser()
    finished = _check_run_dir(run_dir, cfg)
    if finished is not None:
        return finished
    t = cfg.trainer
    device = resolve_device(t.device)
    precision, precision_reason = resolve_precision(t.precision, device)
    _set_determinism(bool(t.deterministic))
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format

    data = build_data(cfg.data, device, int(t.batch_size), int(cfg.seed), memory_format)
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, in_channels=data.channels, num_classes=data.num_classes)
    params, macs = count_params(model), count_macs(model, (1, data.channels, 32, 32))
    model = model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(cfg.optim, model.parameters(), device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = _autocast(device, precision)
    forward, compiled = compile_model(model, bool(t.compile), bool(t.cuda_graphs), device)
    probe_every = int(t.probe_every) if supports_probes(model) else 0
    # Only now, with data and model built, does the run directory appear.
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    max_iters, warmup_cfg = int(t.max_iters), cfg.optim.error_warmup
    iteration, wall_before, best_eval = 0, 0.0, math.inf
    in_warmup = warmup_cfg is not None
    window_errors = torch.zeros((), device=device)  # summed on device, read every log_every
    window_loss = torch.zeros((), device=device)
    window_count = 0
    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    if checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        data.train.load_state_dict(state["batcher"])
        iteration, wall_before, best_eval = state["iteration"], state["wall_time"], state["best_eval_error"]
        in_warmup = state["in_warmup"]
        window_errors, window_loss = state["window_errors"], state["window_loss"]
        window_count = state["window_count"]
        torch.set_rng_state(state["torch_rng"])

    writer = tensorboard_writer(run_dir, iteration if iteration > 0 else None)  # resumed after `iteration`
    progress = ProgressReport(t.progress, run_dir.name, iteration, max_iters)
    if iteration > 0:
        progress.message(f"resuming {run_dir} at iteration {iteration}")
    summary = {
        "status": "running", "model": cfg.model.name, "data": data.name, "seed": int(cfg.seed),
        "params": params, "macs": macs, "device": _device_name(device), "precision": precision,
        "precision_reason": precision_reason, "compiled": compiled,
        "torch": torch.__version__, "resexp": __version__, "eval_split": data.eval_split,
        "max_iters": max_iters, "iterations": iteration,
    }
    write_json(run_dir / "summary.json", summary)

    start, start_iteration = time.perf_counter(), iteration
    lr, train_error, diverged = learning_rate(cfg.optim, iteration, max_iters, in_warmup), 100.0, None
    model.train()
    with StopSignal() as stop, _failed_on_error(run_dir, summary), explain_compile_errors(), closing(progress), \
            closing(writer):
        while iteration < max_iters:
            lr = learning_rate(cfg.optim, iteration, max_iters, in_warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = data.train.next()
            loss, logits = forward_backward(forward, optimizer, scaler, autocast, images, labels)
            if probe_every and iteration % probe_every == 0:  # iteration 0: at initialisation
                log_probes(writer, model, optimizer, scaler, images, iteration)
            optimizer_step(optimizer, scaler)
            iteration += 1

            batch_errors = (logits.argmax(1) != labels).sum()
            window_errors += batch_errors
            window_loss += loss.detach().float() * len(labels)
            window_count += len(labels)
            if in_warmup:  # the paper's ResNet-110 warm-up: a host sync per step, <= 400 steps
                batch_error = 100.0 * batch_errors.item() / len(labels)
                if batch_error < warmup_cfg.until_error or iteration >= warmup_cfg.max_iters:
                    in_warmup = False
                    progress.message(f"error warm-up ended at iteration {iteration} (batch error {batch_error:.1f}%)")

            at_eval = iteration % t.eval_every == 0 or iteration == max_iters
            if iteration % t.log_every == 0 or at_eval:  # training metrics of the batches since the last read
                running_loss = window_loss.item() / window_count
                train_error = 100.0 * window_errors.item() / window_count
                progress.update(iteration, train_error, lr)
                diverged = _divergence(running_loss, t.loss_ceiling)
                for tag, value in (("train/error", train_error), ("train/loss", running_loss), ("lr", lr)):
                    writer.add_scalar(tag, value, iteration)
                summary.update({"train_error": train_error, "train_loss": running_loss, "iterations": iteration})
                window_errors.zero_(), window_loss.zero_()
                window_count = 0
            if at_eval or diverged:
                eval_error, eval_loss = evaluate(model, data, int(t.eval_batch_size), memory_format, autocast)
                best_eval = min(best_eval, eval_error)
                split = data.eval_split
                for tag, value in ((f"{split}/error", eval_error), (f"{split}/loss", eval_loss)):
                    writer.add_scalar(tag, value, iteration)
                summary.update({f"{split}_error": eval_error, f"{split}_loss": eval_loss,
                                f"best_{split}_error": best_eval})
            if diverged:
                writer.add_text("status", f"diverged at iteration {iteration}: {diverged}", iteration)
                progress.message(f"[{run_dir.name}] diverged at iteration {iteration}: {diverged}")
                break
            if iteration % t.checkpoint_every == 0 or iteration == max_iters or stop.received:
                writer.flush()
                wall = wall_before + time.perf_counter() - start
                save_checkpoint({
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "batcher": data.train.state_dict(),
                    "iteration": iteration, "wall_time": wall, "best_eval_error": best_eval,
                    "in_warmup": in_warmup, "window_errors": window_errors, "window_loss": window_loss,
                    "window_count": window_count, "torch_rng": torch.get_rng_state(),
                }, checkpoint_path)
            if stop.received:
                break

    elapsed = time.perf_counter() - start
    if stop.received:  # checkpointed above: the same command (or submitit's requeue) resumes it
        summary.update({"status": "stopped", "stopped_by": stop.name, "iterations": iteration,
                        "wall_time_s": round(wall_before + elapsed, 2)})
        write_json(run_dir / "summary.json", summary)
        print(f"{run_dir}: {stop.name} at iteration {iteration}; checkpoint saved, the same command resumes it",
              file=sys.stderr)
        stop.forward()
        return summary
    summary.update({
        "status": "diverged" if diverged else "finished", "diverged_reason": diverged,
        "diverged_at": iteration if diverged else None,
        "wall_time_s": round(wall_before + elapsed, 2),
        "iters_per_s": round((iteration - start_iteration) / max(elapsed, 1e-9), 2),
        "host": platform.node(),
    })
    write_json(run_dir / "summary.json", summary)
    return summary


def forward_backward(forward, optimizer, scaler, autocast, images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and gradients of one batch; returns the loss and logits, still on the device."""
    with autocast:
        logits = forward(images)
        loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return loss.detach(), logits.detach()


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    scaler.step(optimizer)
    scaler.update()


def log_probes(writer, model, optimizer, scaler, images, iteration: int) -> None:
    """Per-block gradient norm, residual-stream norm and relative update, at this iteration's
    weights (step 0 = initialisation). A host sync, so only every trainer.probe_every steps."""
    if scaler.is_enabled():
        scaler.unscale_(optimizer)  # fp16: measure the true gradients, not the scaled ones
    probes = {"grad_norm": block_grad_norms(model), **stream_probes(model, images)}
    for name, values in probes.items():
        for block, value in enumerate(values.tolist()):
            writer.add_scalar(f"probe/{name}/block_{block:03d}", value, iteration)


def compile_model(model: Callable, compile: bool, cuda_graphs: bool, device: torch.device):
    """The callable the loop trains through (a module, or lock-step's vmapped function), and how
    it was compiled (for summary.json).

    Checkpoints always save the un-compiled module, so compiled and eager runs share them."""
    if cuda_graphs and device.type != "cuda":
        print("trainer.cuda_graphs needs a CUDA device; training without CUDA graphs", file=sys.stderr)
        cuda_graphs = False
    if cuda_graphs:  # Inductor with CUDA graphs: one replay per forward and per backward
        return torch.compile(model, mode="reduce-overhead"), "reduce-overhead (CUDA graphs)"
    if compile:
        return torch.compile(model), "default"
    return model, None


@contextmanager
def explain_compile_errors():
    """torch.compile fails at the first step, not where it is asked for (on CPU Inductor needs a
    C++ compiler, say): turn its long traceback into resexp's one-line error."""
    try:
        yield
    except torch._dynamo.exc.BackendCompilerFailed as e:
        cause = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ConfigError(f"torch.compile failed: {cause}; set trainer.compile=false trainer.cuda_graphs=false "
                          "to train without it") from None


class StopSignal:
    """SIGTERM and SIGUSR2 (SLURM pre-emption or time limit, `kill`) end the step in progress;
    the loop then checkpoints and stops, and `forward` hands the signal to the handler that
    was there before: submitit's requeues the job, the default exits with 128 + signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():  # handlers only install there
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        self.received = number

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name

    def forward(self) -> None:
        handler = self.previous.get(self.received, signal.SIG_DFL)
        if callable(handler):
            handler(self.received, None)
        elif handler != signal.SIG_IGN:
            raise SystemExit(128 + self.received)


@contextmanager
def _failed_on_error(run_dir: Path, summary: dict[str, Any]):
    """An exception (Ctrl-C included) marks the run failed; its last checkpoint stays."""
    try:
        yield
    except BaseException:
        summary["status"] = "failed"
        write_json(run_dir / "summary.json", summary)
        raise


@torch.no_grad()
def evaluate(model, data: Data, batch_size: int, memory_format, autocast) -> tuple[float, float]:
    """Error (%) and mean loss on the evaluation split, the plain un-augmented view."""
    model.eval()
    errors = torch.zeros((), device=data.eval_images.device)
    loss = torch.zeros((), device=data.eval_images.device)
    for images, labels in data.eval_batches(batch_size, memory_format):
        with autocast:
            logits = model(images)
        errors += (logits.argmax(1) != labels).sum()
        loss += F.cross_entropy(logits.float(), labels, reduction="sum")
    model.train()
    n = len(data.eval_labels)
    return 100.0 * errors.item() / n, loss.item() / n


OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(optim: DictConfig, parameters: Iterable[torch.Tensor], device: torch.device
                    ) -> torch.optim.Optimizer:
    fused = True if device.type == "cuda" else None  # one kernel for the whole update on GPU
    if optim.name == "sgd":  # the paper decays every parameter, BN included
        return torch.optim.SGD(
            parameters, lr=optim.lr, momentum=optim.momentum,
            weight_decay=optim.weight_decay, nesterov=optim.nesterov, fused=fused,
        )
    if optim.name == "adamw":  # decay weight matrices only: not biases, norm gains, ReZero scalars
        params = [p for p in parameters if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": optim.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=fused)
    raise ConfigError(f"unknown optim.name '{optim.name}'; choose from: {', '.join(OPTIMIZERS)}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown trainer.device '{name}'; choose from: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device asks for CUDA but no CUDA device is visible; use trainer.device=cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> tuple[str, str]:
    """The precision to train in, and why (written to summary.json)."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown trainer.precision '{name}'; choose from: {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs CUDA; on CPU use fp32 or bf16")
    if name != "auto":
        return name, "set by trainer.precision"
    if device.type == "cuda":
        return "bf16", "auto: bf16 autocast on CUDA"
    # bf16 convolutions are fast on CPUs with AMX tiles. With only AVX512-BF16 they were 1.2x
    # slower than fp32 when measured (results/bench/), so there fp32 stays the default.
    if torch.cpu._is_amx_tile_supported():
        return "bf16", "auto: this CPU has AMX, where bf16 autocast is faster than fp32"
    return "fp32", "auto: this CPU has no AMX; bf16 autocast measured slower than fp32 without it"


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    # BatchNorm runs in fp32 under autocast, so its statistics stay fp32.
    return torch.autocast(device.type, dtype=dtype)


def _set_determinism(deterministic: bool) -> None:
    if deterministic:  # cuBLAS needs a fixed workspace to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def _divergence(loss: float, ceiling: float | None) -> str | None:
    if not math.isfinite(loss):
        return f"non-finite training loss ({loss})"
    if ceiling is not None and loss > ceiling:
        return f"training loss {loss:.3g} above trainer.loss_ceiling={ceiling}"
    return None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _check_run_dir(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """Return the summary if this run already finished; refuse to touch another run's files."""
    config_path = run_dir / "config.yaml"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if config_path.is_file():
        if not cfg.run.resume:
            raise ConfigError(f"{run_dir} already holds a run; choose another run.name or run.dir")
        previous = OmegaConf.to_container(OmegaConf.load(config_path))
        changed = [k for k in IDENTITY_KEYS if previous.get(k) != resolved.get(k)]
        if changed:
            raise ConfigError(
                f"{run_dir} holds a run with different {', '.join(changed)}; choose another run.name or run.dir"
            )
        summary = read_json(run_dir / "summary.json")
        if summary and summary["status"] in ("finished", "diverged") and summary["max_iters"] == cfg.trainer.max_iters:
            return summary
    return None
