"""A trained run, loaded for analysis: its config, its model with the checkpoint's weights (in
eval mode, fp32) and its data on the chosen device. Every analysis command starts here, so they
all refuse a missing, unfinished or foreign run the same way, in one line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from resexp.data import Data, build_data
from resexp.engine.checkpoint import load_checkpoint
from resexp.engine.rundir import CHECKPOINT, read_config
from resexp.engine.runtime import resolve_device
from resexp.engine.tracking import read_json
from resexp.errors import ResexpError
from resexp.models import build_model

EVAL_BATCH = 500  # images per forward in the analyses: bounded memory on any device


@dataclass
class TrainedRun:
    """One run directory, loaded."""

    path: Path
    cfg: DictConfig
    model: nn.Module  # the checkpoint's weights, eval mode, fp32, on `device`
    data: Data  # the run's data on `device`: eval_images / eval_labels are the evaluation split
    device: torch.device
    iteration: int  # the checkpoint's
    status: str  # the summary's: finished, diverged, stopped, ...

    @property
    def label(self) -> str:
        """The paper's names: "plain-20", "ResNet-56"; other archs by their config name."""
        model = self.cfg.model
        if model.arch == "cifar_resnet":
            return f"{'ResNet' if model.residual else 'plain'}-{model.depth}"
        return str(model.name)


def load_run(run_dir: str | Path, device: str = "auto", unfinished: bool = False) -> TrainedRun:
    """The run in run_dir with its checkpoint's weights. One-line ResexpError for a directory
    that is no run, has no checkpoint, or (unless `unfinished`) has not finished training."""
    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise ResexpError(f"{path} is not a run directory (no config.yaml); give the directory `resexp train` "
                          "wrote, e.g. runs/resnet20_synthetic_seed0")
    cfg = read_config(path / "config.yaml")
    summary = read_json(path / "summary.json") or {}
    status = summary.get("status", "unknown")
    if status != "finished" and not unfinished:
        raise ResexpError(f"{path} has not finished training (status {status}, iteration "
                          f"{summary.get('iterations', 0)} of {cfg.trainer.max_iters}); finish it with the same "
                          "resexp train command, or pass --unfinished to analyse its last checkpoint")
    checkpoint = path / CHECKPOINT
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
    return TrainedRun(path, cfg, model, data, target, int(state["iteration"]), status)


def require_arch(run: TrainedRun, arch: str, command: str) -> None:
    """One line when an analysis meets a model it does not apply to."""
    if run.cfg.model.arch != arch:
        raise ResexpError(f"{command} applies to the {arch} models (plainN, resnetN); {run.path} is "
                          f"{run.cfg.model.name} (model.arch={run.cfg.model.arch})")


@torch.no_grad()
def error_and_loss(model: nn.Module, data: Data, limit: int | None = None) -> tuple[float, float]:
    """Test error (%) and mean cross-entropy of model (as it is: eval mode is the caller's) on
    the first `limit` images of the evaluation split (all by default)."""
    errors = torch.zeros((), dtype=torch.float64, device=data.eval_images.device)
    loss = torch.zeros((), dtype=torch.float64, device=data.eval_images.device)
    seen = 0
    for images, labels in data.eval_batches(EVAL_BATCH, torch.contiguous_format):
        if limit is not None and seen >= limit:
            break
        if limit is not None:
            images, labels = images[: limit - seen], labels[: limit - seen]
        logits = model(images).float()
        errors += (logits.argmax(1) != labels).sum()
        loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        seen += len(labels)
    return 100.0 * errors.item() / seen, loss.item() / seen


def expand_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories from arguments that are runs or sweeps: a sweep stands for every run
    directory under it (config.yaml beside checkpoints/), by path."""
    found: list[Path] = []
    for given in map(Path, paths):
        if not given.is_dir():
            raise ResexpError(f"{given} is not a directory; give a run directory or a sweep directory")
        if (given / "config.yaml").is_file():
            found.append(given)
            continue
        runs = sorted(p.parent for p in given.rglob("config.yaml") if (p.parent / CHECKPOINT).is_file())
        if not runs:
            raise ResexpError(f"no trained runs under {given} (no config.yaml beside {CHECKPOINT})")
        found += runs
    return found
