"""What a checkpoint holds (TrainState), written atomically and read back with weights_only."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resexp.engine.step import TrainStep


@dataclass
class TrainState:
    """The step (model, optimizer, scaler, batcher, metric sums) and the loop's own counters."""

    step: TrainStep
    iteration: int = 0
    wall_time: float = 0.0  # seconds trained before this process, summed over resumptions
    best_eval_error: float = math.inf
    in_warmup: bool = False  # the paper's ResNet-110 error warm-up

    def state_dict(self) -> dict[str, Any]:
        return {**self.step.state_dict(), "iteration": self.iteration, "wall_time": self.wall_time,
                "best_eval_error": self.best_eval_error, "in_warmup": self.in_warmup,
                "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step.load_state_dict(state)
        self.iteration, self.wall_time = int(state["iteration"]), float(state["wall_time"])
        self.best_eval_error, self.in_warmup = float(state["best_eval_error"]), bool(state["in_warmup"])
        torch.set_rng_state(state["torch_rng"].cpu())  # a checkpoint loaded onto CUDA moved it


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """A killed process leaves either the old checkpoint or the new one, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    # weights_only: a checkpoint is data, never code to execute.
    return torch.load(path, map_location=device, weights_only=True)
