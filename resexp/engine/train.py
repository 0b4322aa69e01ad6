"""The training loop: iteration-based, as in the paper. Reads top to bottom.

The step itself (batch, forward, backward, update, metric sums) is resexp.engine.step; what a
checkpoint holds is resexp.engine.checkpoint.TrainState; how the run executes (device,
precision, graph capture) is resexp.engine.runtime.Runtime; summary.json is
resexp.engine.record.RunRecord; signals are resexp.engine.stopping.StopSignal.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from contextlib import closing
from functools import partial

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from resexp.data import Data, build_data
from resexp.engine.checkpoint import TrainState, save_checkpoint
from resexp.engine.evaluate import evaluate
from resexp.engine.probes import keep_batch, log_final_probes, log_probes, supports_probes
from resexp.engine.record import RunRecord
from resexp.engine.runtime import Runtime, explain_compile_errors
from resexp.engine.schedules import ErrorWarmup, learning_rate
from resexp.engine.step import TrainStep
from resexp.engine.stopping import StopSignal, StopSource
from resexp.engine.tracking import ProgressReport, announce, tensorboard_writer
from resexp.errors import ResexpError
from resexp.model_size import model_size
from resexp.rundir import RunDir, load_checkpoint, run_identity
from resexp.summary import Summary


def train(cfg: DictConfig, stop_source: StopSource | None = None) -> Summary:
    """Train one run in cfg.run.dir (resuming it if it has a checkpoint); returns its summary.
    cfg is a composed, validated config (resexp.config.compose).

    Nothing is written before the data and model are built, this process holds the run
    directory's lock and the checkpoint (if any) has loaded."""
    run = RunDir(cfg.run.dir)
    done = run.check(cfg)  # refuse before the build, which can take minutes
    if done is not None:
        return done
    runtime = Runtime.from_config(cfg.trainer)
    if runtime.device.type == "cuda":  # a sweep's worker trains run after run: this run's peak, not the process's
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(runtime.device)
    announce(cfg.trainer.progress, f"[{run.name}] {cfg.model.name} on {cfg.data.name}, {int(cfg.trainer.max_iters)} "
             f"iterations, {runtime.device_name}, {runtime.precision} -> {run.path}")
    data = build_data(cfg.data, runtime.device, int(cfg.trainer.batch_size), int(cfg.seed), runtime.memory_format)
    step = TrainStep.build(cfg, data, runtime)
    run.path.mkdir(parents=True, exist_ok=True)
    with run.lock():
        done = run.check(cfg)  # again: another process may have trained it meanwhile
        return done if done is not None else _train_locked(cfg, run, runtime, data, step, stop_source)


def _train_locked(cfg: DictConfig, run: RunDir, runtime: Runtime, data: Data, step: TrainStep,
                  stop_source: StopSource | None) -> Summary:
    state, record, writer, progress = _start(cfg, run, runtime, data, step)
    t, model, max_iters = cfg.trainer, step.model, int(cfg.trainer.max_iters)
    probe_every = int(t.probe_every) if supports_probes(model) else 0
    start, start_iteration, wall_before = time.perf_counter(), state.iteration, state.wall_time
    diverged = None
    probe_batch: list = []  # the last step's images and labels, for the final probes
    model.train()
    with StopSignal(stop_source) as stop, record.failed_on_error(), explain_compile_errors(), closing(progress), \
            closing(writer):
        while state.iteration < max_iters:
            if state.iteration == start_iteration and stop.stopping:  # stopped while it built: not even
                break  # the first step, which compiling or a capture can make outlast a sweep's grace
            lr = learning_rate(cfg.optim, state.iteration, max_iters, state.in_warmup)
            step.set_lr(lr)
            probing = probe_every and state.iteration % probe_every == 0  # iteration 0: at initialisation
            last = probe_every and state.iteration == max_iters - 1  # its batch is the final probes': a
            # resumed run has it as an uninterrupted one does, whenever its last probe step was
            step(partial(log_probes, writer, step, state.iteration, probe_batch) if probing else
                 partial(keep_batch, probe_batch) if last else None)
            state.iteration += 1
            iteration = state.iteration
            progress.tick(iteration)
            if state.in_warmup and state.warmup.observe(int(step.last_errors.item()), iteration):  # a host read
                record.warmup_ended(state.warmup.end)  # per step during the warm-up, about 400 steps
                progress.message(f"[{run.name}] error warm-up ended at iteration {iteration} ({_warmup_end(state)})")

            at_eval = iteration % t.eval_every == 0 or iteration == max_iters
            if iteration % t.log_every == 0 or at_eval:  # training metrics of the batches since the last read
                diverged = _log_training(writer, record, progress, step, iteration, lr, t.loss_ceiling)
            if at_eval or diverged:
                _log_evaluation(writer, record, model, data, runtime, state, int(t.eval_batch_size))
                if iteration == max_iters and probe_batch and not diverged:  # the trained model's probes
                    log_final_probes(writer, model, iteration, *probe_batch)
            if iteration % t.log_every == 0 or at_eval or diverged:  # progress for `resexp status`, cheap
                record.save()
            if diverged:
                writer.add_text("status", f"diverged at iteration {iteration}: {diverged}", iteration)
                progress.message(f"[{run.name}] diverged at iteration {iteration}: {diverged}")
                break
            stopping = stop.stopping
            if iteration % t.checkpoint_every == 0 or iteration == max_iters or stopping:
                writer.flush()
                state.wall_time = wall_before + time.perf_counter() - start
                with stop.saving_checkpoint():
                    save_checkpoint(state.state_dict(), run.checkpoint_path)
                record.checkpointed(iteration)
            if stopping:
                break

    elapsed, iteration = time.perf_counter() - start, state.iteration
    if stop.reason:  # checkpointed above: the same command (or submitit's requeue) resumes it
        summary = record.ended("stopped", iteration, step.execution, stopped_by=stop.reason, iterations=iteration,
                               wall_time_s=round(wall_before + elapsed, 2))
        saved = "checkpoint saved" if iteration > start_iteration else "before its first step, nothing to save"
        print(f"{run.path}: {stop.reason} at iteration {iteration}; {saved}, the same command resumes it",
              file=sys.stderr)
        stop.forward()
        return summary
    return record.ended("diverged" if diverged else "finished", iteration, step.execution, diverged_reason=diverged,
                        diverged_at=iteration if diverged else None, wall_time_s=round(wall_before + elapsed, 2),
                        iters_per_s=round((iteration - start_iteration) / max(elapsed, 1e-9), 2),
                        host=platform.node())


def _start(cfg: DictConfig, run: RunDir, runtime: Runtime, data: Data,
           step: TrainStep) -> tuple[TrainState, RunRecord, SummaryWriter, ProgressReport]:
    """Load the checkpoint (refusing one this run cannot continue before anything is written),
    then write the config and the summary, and open the event writer and the progress report."""
    max_iters = int(cfg.trainer.max_iters)
    run.remove_stale_temporaries()  # a save that a kill -9 cut short: never read, only litter
    warmup = cfg.optim.error_warmup
    state = TrainState(step, run_identity(cfg),
                       warmup=ErrorWarmup(warmup, int(cfg.trainer.batch_size)) if warmup is not None else None)
    checkpointed = run.checkpoint_path.is_file()
    if checkpointed:
        state.load_state_dict(load_checkpoint(run.checkpoint_path, runtime.device), run.checkpoint_path)
    if state.iteration > max_iters:
        raise ResexpError(f"{run.checkpoint_path} is at iteration {state.iteration}; trainer.max_iters={max_iters} "
                          "asks for fewer, so nothing was changed (a shorter run needs its own run.name)")
    size = model_size(cfg.model, data.channels, data.num_classes)
    run.write_config(cfg)
    record = RunRecord.start(run, cfg, runtime, data, size.params, size.macs, state.iteration)
    if state.warmup is not None and state.warmup.end is not None:  # resumed after the warm-up ended
        record.warmup_ended(state.warmup.end)
    writer = tensorboard_writer(run.events_path, state.iteration if checkpointed else None)
    progress = ProgressReport(cfg.trainer.progress, run.name, state.iteration, max_iters)
    step.notify = lambda text: progress.message(f"[{run.name}] {text}")
    if state.iteration > 0:
        progress.message(f"resuming {run.path} at iteration {state.iteration}")
    if not runtime.graph:
        step.notify(runtime.graph_reason)
    return state, record, writer, progress


def _warmup_end(state: TrainState) -> str:
    end = state.warmup.end
    cause = "its limit, optim.error_warmup.max_iters" if end["ended_by"] == "max_iters" else "the error"
    return f"training error {end['train_error']:.1f}% over the last {end['over_images']:,} images; ended by {cause}"


def _log_training(writer: SummaryWriter, record: RunRecord, progress: ProgressReport, step: TrainStep,
                  iteration: int, lr: float, loss_ceiling: float | None) -> str | None:
    """The training error and loss of the batches since the last read; why the run diverged, if it did."""
    train_error, running_loss = step.read_metrics()
    speed = progress.update(iteration, train_error, lr)
    for tag, value in (("train/error", train_error), ("train/loss", running_loss), ("lr", lr)):
        writer.add_scalar(tag, value, iteration)
    record.logged(iteration, train_error, running_loss, speed)
    if not math.isfinite(running_loss):
        return f"non-finite training loss ({running_loss})"
    if loss_ceiling is not None and running_loss > loss_ceiling:
        return f"training loss {running_loss:.3g} above trainer.loss_ceiling={loss_ceiling}"
    return None


def _log_evaluation(writer: SummaryWriter, record: RunRecord, model: nn.Module, data: Data, runtime: Runtime,
                    state: TrainState, batch_size: int) -> None:
    error, loss = evaluate(model, data, batch_size, runtime.memory_format, runtime.autocast)
    state.best_eval_error = min(state.best_eval_error, error)
    for tag, value in ((f"{data.eval_split}/error", error), (f"{data.eval_split}/loss", loss)):
        writer.add_scalar(tag, value, state.iteration)
    record.evaluated(data.eval_split, error, loss, state.best_eval_error)
