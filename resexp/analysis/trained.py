"""A trained run, loaded for analysis: its config, its model with the checkpoint's weights (in
eval mode, fp32) and its data on the chosen device. Every analysis command starts here, so they
all refuse a missing, unfinished or foreign run the same way, in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from resexp.data import Data, build_data
from resexp.engine.runtime import resolve_device
from resexp.errors import ResexpError
from resexp.models import build_model
from resexp.rundir import CHECKPOINT, RunDir, find_run_dirs, is_trained, load_checkpoint

EVAL_BATCH = 500  # images per forward in the analyses: bounded memory on any device


class TrainedRun(RunDir):
    """A run directory, loaded: its model with the checkpoint's weights (eval mode, fp32) and its
    data, both on `device`."""

    def __init__(self, run: RunDir, model: nn.Module, data: Data, device: torch.device, iteration: int,
                 status: str) -> None:
        super().__init__(run.path)
        self.config = run.config
        self.model, self.data, self.device = model, data, device  # data.eval_images: the evaluation split
        self.iteration, self.status = iteration, status  # the checkpoint's; the summary's


def load_run(run_dir: str | Path, device: str = "auto", unfinished: bool = False) -> TrainedRun:
    """The run in run_dir with its checkpoint's weights. One-line ResexpError for a directory
    that is no run, has no checkpoint, or (unless `unfinished`) has not finished training."""
    run = RunDir(run_dir)
    path = run.path
    if not run.config_path.is_file():
        raise ResexpError(f"{path} is not a run directory (no config.yaml); give the directory `resexp train` "
                          "wrote, e.g. runs/resnet20_synthetic_seed0")
    cfg = run.config
    summary = run.read_summary()
    status = summary.status if summary else "unknown"
    if status != "finished" and not unfinished:
        raise ResexpError(f"{path} has not finished training (status {status}, iteration "
                          f"{summary.iterations if summary and summary.iterations is not None else 0} of {cfg.trainer.max_iters}); finish it with the same "
                          "resexp train command, or pass --unfinished to analyse its last checkpoint")
    checkpoint = run.checkpoint_path
    if not checkpoint.is_file():
        raise ResexpError(f"{path} has no checkpoint ({CHECKPOINT}); it did not train to its first checkpoint")
    target = resolve_device(device)
    state = load_checkpoint(checkpoint, target)
    data = build_data(cfg.data, target, int(cfg.trainer.batch_size), int(cfg.seed), torch.contiguous_format)
    model = build_model(cfg.model, in_channels=data.channels, num_classes=data.num_classes)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise ResexpError(f"{checkpoint} does not hold the weights of {cfg.model.name} ({type(e).__name__}); "
                          "restore the run's own checkpoint") from None
    model.to(target).eval()
    return TrainedRun(run, model, data, target, int(state["iteration"]), status)


def require_arch(run: TrainedRun, arch: str, command: str) -> None:
    """One line when an analysis meets a model it does not apply to."""
    if run.config.model.arch != arch:
        raise ResexpError(f"{command} applies to the {arch} models (plainN, resnetN); {run.path} is "
                          f"{run.config.model.name} (model.arch={run.config.model.arch})")


def expand_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories from arguments that are runs or sweeps: a sweep stands for every trained
    run under it (config.yaml beside its checkpoint), by path."""
    found: list[Path] = []
    for given in map(Path, paths):
        if not given.is_dir():
            raise ResexpError(f"{given} is not a directory; give a run directory or a sweep directory")
        if RunDir(given).config_path.is_file():
            found.append(given)
            continue
        runs, blocked = find_run_dirs(given, is_trained)
        for path, why in blocked:
            print(f"resexp: warning: unreadable run {path}: {why}", file=sys.stderr)
        if not runs:
            raise ResexpError(f"no trained runs under {given} (no config.yaml beside {CHECKPOINT})")
        found += [run.path for run in runs]
    return found
