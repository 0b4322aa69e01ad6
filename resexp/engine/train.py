"""The training loop: iteration-based, as in the paper. Reads top to bottom.

The step itself (batch, forward, backward, update, metric sums) is resexp.engine.step; what a
checkpoint holds is resexp.engine.checkpoint.TrainState; how the run executes (device,
precision, graph capture) is resexp.engine.runtime.Runtime.
"""

from __future__ import annotations

import math
import platform
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from resexp import __version__
from resexp.engine.probes import block_grad_norms, skip_loss_delta, stream_probes, supports_probes
from resexp.data import Data, build_data
from resexp.config import run_identity
from resexp.engine.checkpoint import TrainState, load_checkpoint, save_checkpoint
from resexp.engine.rundir import CHECKPOINT, RunDirLock, check_run_dir
from resexp.engine.runtime import Runtime, explain_compile_errors
from resexp.engine.schedules import learning_rate
from resexp.engine.step import TrainStep
from resexp.engine.tracking import ProgressReport, atomic_path, read_json, tensorboard_writer, write_json
from resexp.errors import ResexpError, one_line
from resexp.models import count_macs, count_params
from resexp.schema import validate

class StopSource(Protocol):
    """Who else may stop a run (a sweep, for its worker processes): polled about once a second,
    and told of a signal this process received, which is then not handed on."""

    def stop_reason(self) -> str | None: ...

    def signalled(self, name: str) -> None: ...


def train(cfg: DictConfig, stop_source: StopSource | None = None) -> dict[str, Any]:
    """Train one run in cfg.run.dir (resuming it if it has a checkpoint); returns its summary.

    Nothing is written before the config is valid, the data and model are built, this process
    holds the run directory's lock and the checkpoint (if any) has loaded."""
    validate(cfg)
    run_dir = Path(cfg.run.dir).expanduser()
    done = check_run_dir(run_dir, cfg)  # refuse before the build, which can take minutes
    if done is not None:
        return done
    runtime = Runtime.from_config(cfg.trainer)
    data = build_data(cfg.data, runtime.device, int(cfg.trainer.batch_size), int(cfg.seed), runtime.memory_format)
    step = TrainStep.build(cfg, data, runtime)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunDirLock(run_dir):
        done = check_run_dir(run_dir, cfg)  # again: another process may have trained it meanwhile
        return done if done is not None else _train_locked(cfg, run_dir, runtime, data, step, stop_source)


def _train_locked(cfg: DictConfig, run_dir: Path, runtime: Runtime, data: Data, step: TrainStep,
                  stop_source: StopSource | None) -> dict[str, Any]:
    t, model = cfg.trainer, step.model
    max_iters, warmup_cfg = int(t.max_iters), cfg.optim.error_warmup
    state = TrainState(step, run_identity(cfg), in_warmup=warmup_cfg is not None)
    checkpoint_path = run_dir / CHECKPOINT
    if checkpoint_path.is_file():
        state.load_state_dict(load_checkpoint(checkpoint_path, runtime.device), checkpoint_path)
    if state.iteration > max_iters:
        raise ResexpError(f"{checkpoint_path} is at iteration {state.iteration}; trainer.max_iters={max_iters} "
                          "asks for fewer, so nothing was changed (a shorter run needs its own run.name)")
    params, macs = count_params(model), count_macs(model, (1, data.channels, 32, 32))
    probe_every = int(t.probe_every) if supports_probes(model) else 0
    with atomic_path(run_dir / "config.yaml") as tmp:
        OmegaConf.save(cfg, tmp, resolve=True)
    # One segment per process that trained the run: what may differ between them is recorded.
    segments = [s for s in (read_json(run_dir / "summary.json") or {}).get("segments", [])
                if s["start"] < state.iteration]
    segment = {"start": state.iteration, "end": state.iteration, "max_iters": max_iters,
               "device": runtime.device_name, "precision": runtime.precision, "execution": runtime.execution,
               "torch": torch.__version__, "resexp": __version__, "host": platform.node(),
               "started": _now()}
    writer = tensorboard_writer(run_dir, state.iteration if checkpoint_path.is_file() else None)
    progress = ProgressReport(t.progress, run_dir.name, state.iteration, max_iters)
    step.notify = lambda text: progress.message(f"[{run_dir.name}] {text}")
    if state.iteration > 0:
        progress.message(f"resuming {run_dir} at iteration {state.iteration}")
    if not runtime.graph:
        step.notify(runtime.graph_reason)
    summary = {
        "status": "running", "model": cfg.model.name, "data": data.name, "seed": int(cfg.seed),
        "params": params, "macs": macs, "device": runtime.device_name, "precision": runtime.precision,
        "precision_reason": runtime.precision_reason, "execution": runtime.execution,
        "torch": torch.__version__, "resexp": __version__, "eval_split": data.eval_split,
        "max_iters": max_iters, "iterations": state.iteration, "segments": [*segments, segment],
        "checkpoint_iteration": state.iteration if checkpoint_path.is_file() else None, "updated": _now(),
    }
    write_json(run_dir / "summary.json", summary)

    start, start_iteration, wall_before = time.perf_counter(), state.iteration, state.wall_time
    lr, train_error, diverged = learning_rate(cfg.optim, state.iteration, max_iters, state.in_warmup), 100.0, None
    probe_batch: list[torch.Tensor] = []  # the latest probe step's images and labels, for the final probes
    model.train()
    with StopSignal(stop_source) as stop, _failed_on_error(run_dir, summary), explain_compile_errors(), closing(progress), \
            closing(writer):
        while state.iteration < max_iters:
            lr = learning_rate(cfg.optim, state.iteration, max_iters, state.in_warmup)
            step.set_lr(lr)
            probing = probe_every and state.iteration % probe_every == 0  # iteration 0: at initialisation
            step(partial(log_probes, writer, step, state.iteration, probe_batch) if probing else None)
            state.iteration += 1
            iteration = state.iteration

            if state.in_warmup:  # the paper's ResNet-110 warm-up: a host read per step, <= 400 steps
                batch_error = 100.0 * step.last_errors.item() / data.train.batch_size
                if batch_error < warmup_cfg.until_error or iteration >= warmup_cfg.max_iters:
                    state.in_warmup = False
                    progress.message(f"error warm-up ended at iteration {iteration} (batch error {batch_error:.1f}%)")

            at_eval = iteration % t.eval_every == 0 or iteration == max_iters
            if iteration % t.log_every == 0 or at_eval:  # training metrics of the batches since the last read
                train_error, running_loss = step.read_metrics()
                speed = progress.update(iteration, train_error, lr)
                diverged = _divergence(running_loss, t.loss_ceiling)
                for tag, value in (("train/error", train_error), ("train/loss", running_loss), ("lr", lr)):
                    writer.add_scalar(tag, value, iteration)
                summary.update({"train_error": train_error, "train_loss": running_loss, "iterations": iteration,
                                "iters_per_s": round(speed, 2), "updated": _now()})
                segment["end"] = iteration
            if at_eval or diverged:
                eval_error, eval_loss = evaluate(model, data, int(t.eval_batch_size), runtime)
                state.best_eval_error = min(state.best_eval_error, eval_error)
                split = data.eval_split
                for tag, value in ((f"{split}/error", eval_error), (f"{split}/loss", eval_loss)):
                    writer.add_scalar(tag, value, iteration)
                summary.update({f"{split}_error": eval_error, f"{split}_loss": eval_loss,
                                f"best_{split}_error": state.best_eval_error})
                if iteration == max_iters and probe_batch and not diverged:  # the trained model's probes
                    log_final_probes(writer, model, iteration, *probe_batch)
            if iteration % t.log_every == 0 or at_eval or diverged:  # progress for `resexp status`, cheap
                write_json(run_dir / "summary.json", summary)
            if diverged:
                writer.add_text("status", f"diverged at iteration {iteration}: {diverged}", iteration)
                progress.message(f"[{run_dir.name}] diverged at iteration {iteration}: {diverged}")
                break
            stopping = stop.stopping
            if iteration % t.checkpoint_every == 0 or iteration == max_iters or stopping:
                writer.flush()
                state.wall_time = wall_before + time.perf_counter() - start
                with stop.saving_checkpoint():
                    save_checkpoint(state.state_dict(), checkpoint_path)
                summary["checkpoint_iteration"] = iteration  # where the same command resumes
                write_json(run_dir / "summary.json", summary)
            if stopping:
                break

    elapsed = time.perf_counter() - start
    iteration = state.iteration
    summary["execution"] = segment["execution"] = step.execution  # less a capture that fell back to eager
    segment["end"] = iteration
    if stop.reason:  # checkpointed above: the same command (or submitit's requeue) resumes it
        summary.update({"status": "stopped", "stopped_by": stop.reason, "iterations": iteration,
                        "wall_time_s": round(wall_before + elapsed, 2), "updated": _now()})
        write_json(run_dir / "summary.json", summary)
        print(f"{run_dir}: {stop.reason} at iteration {iteration}; checkpoint saved, the same command resumes it",
              file=sys.stderr)
        stop.forward()
        return summary
    summary.update({
        "status": "diverged" if diverged else "finished", "diverged_reason": diverged,
        "diverged_at": iteration if diverged else None,
        "wall_time_s": round(wall_before + elapsed, 2),
        "iters_per_s": round((iteration - start_iteration) / max(elapsed, 1e-9), 2),
        "host": platform.node(), "updated": _now(),
    })
    write_json(run_dir / "summary.json", summary)
    return summary


def log_probes(writer, step: TrainStep, iteration: int, probe_batch: list[torch.Tensor], images: torch.Tensor,
               labels: torch.Tensor) -> None:
    """Per-block gradient norm, the stream probes (residual-stream norm, relative update,
    angular distance) and the loss change when the block is skipped, at this iteration's weights
    (step 0 = initialisation), between the step's backward and its update. A host sync, an
    eager step and depth + 2 forwards, so only every trainer.probe_every steps. A copy of the
    batch is kept in `probe_batch` for the final probes (the batcher's buffers are reused)."""
    if step.scaler.is_enabled():
        step.scaler.unscale_(step.optimizer)  # fp16: measure the true gradients, not the scaled ones
    probe_batch[:] = [images.clone(), labels.clone()]
    probes = {"grad_norm": block_grad_norms(step.model), **stream_probes(step.model, images),
              "skip_loss_delta": skip_loss_delta(step.model, images, labels)}
    _write_probes(writer, probes, iteration)


def log_final_probes(writer, model: torch.nn.Module, iteration: int, images: torch.Tensor,
                     labels: torch.Tensor) -> None:
    """At the end of the run, after its last evaluation: skip_loss_delta of the trained model on
    the latest probe step's batch. Only it: the other probes stay at probe steps, which the
    norms report reads as "the last probe step"."""
    _write_probes(writer, {"skip_loss_delta": skip_loss_delta(model, images, labels)}, iteration)


def _write_probes(writer, probes: dict[str, torch.Tensor], iteration: int) -> None:
    for name, values in probes.items():
        for block, value in enumerate(values.tolist()):
            writer.add_scalar(f"probe/{name}/block_{block:03d}", value, iteration)


class StopSignal:
    """SIGTERM, SIGUSR2 (SLURM pre-emption or time limit), SIGHUP, Ctrl-C, or a stop source that
    says so, end the step in progress; the loop then checkpoints and stops. `forward` hands a signal
    to the handler that was there before: submitit's requeues the job, the default exits with
    128 + signal, Python's raises KeyboardInterrupt (exit 130); with a stop source it is told
    instead. A second signal while the checkpoint is being saved waits for the save; at any other
    time it interrupts at once, and the run says where its last checkpoint is."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP)
    POLL_S = 1.0  # how often the stop source is asked: a stat or two, off the step's critical path

    def __init__(self, source: StopSource | None = None) -> None:
        self.source = source
        self.received: int | None = None  # the signal this process received
        self.reason: str | None = None  # why the run stops: a signal's name or the source's reason
        self.previous: dict[int, Any] = {}
        self.saving = False
        self.next_poll = 0.0

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():  # handlers only install there
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        if self.received is None:
            self.received, self.reason = number, signal.Signals(number).name
            if self.source is not None:
                self.source.signalled(self.reason)
        elif not self.saving:  # a second signal cuts the wait short, never a save
            raise KeyboardInterrupt

    @property
    def stopping(self) -> bool:
        if self.reason is None and self.source is not None and time.monotonic() >= self.next_poll:
            self.next_poll = time.monotonic() + self.POLL_S
            self.reason = self.source.stop_reason()
        return self.reason is not None

    @contextmanager
    def saving_checkpoint(self) -> Iterator[None]:
        self.saving = True
        try:
            yield
        finally:
            self.saving = False

    def forward(self) -> None:
        if self.received is None or self.source is not None:
            return
        handler = self.previous.get(self.received, signal.SIG_DFL)
        if callable(handler):
            handler(self.received, None)
        elif handler != signal.SIG_IGN:
            raise SystemExit(128 + self.received)


@contextmanager
def _failed_on_error(run_dir: Path, summary: dict[str, Any]):
    """An exception marks the run failed, with the reason, and Ctrl-C stopped; its last
    checkpoint stays. If even that cannot be written (a full disk), the original error wins."""
    try:
        yield
    except KeyboardInterrupt:  # a second signal: say exactly what is on disk
        summary.update({"status": "stopped", "stopped_by": "SIGINT"})
        with suppress(OSError):
            write_json(run_dir / "summary.json", summary)
        kept = summary.get("checkpoint_iteration")
        raise KeyboardInterrupt(
            f"{run_dir}: interrupted at iteration {summary['iterations']} before its checkpoint; "
            + (f"the last checkpoint is at iteration {kept}: the same command resumes from there" if kept else
               "no checkpoint was saved: the same command starts the run again")) from None
    except BaseException as e:  # a ResexpError's line says it all; anything else is named
        error = one_line(e) if isinstance(e, ResexpError) else f"{type(e).__name__}: {one_line(e)}"
        summary.update({"status": "failed", "error": error})
        with suppress(OSError):
            write_json(run_dir / "summary.json", summary)
        raise


@torch.no_grad()
def evaluate(model, data: Data, batch_size: int, runtime: Runtime) -> tuple[float, float]:
    """Error (%) and mean loss on the evaluation split, the plain un-augmented view."""
    model.eval()
    errors = torch.zeros((), device=data.eval_images.device)
    loss = torch.zeros((), device=data.eval_images.device)
    for images, labels in data.eval_batches(batch_size, runtime.memory_format):
        with runtime.autocast():
            logits = model(images)
        errors += (logits.argmax(1) != labels).sum()
        loss += F.cross_entropy(logits.float(), labels, reduction="sum")
    model.train()
    n = len(data.eval_labels)
    return 100.0 * errors.item() / n, loss.item() / n


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _divergence(loss: float, ceiling: float | None) -> str | None:
    if not math.isfinite(loss):
        return f"non-finite training loss ({loss})"
    if ceiling is not None and loss > ceiling:
        return f"training loss {loss:.3g} above trainer.loss_ceiling={ceiling}"
    return None
