"""What a checkpoint holds (TrainState) and what it is (run identity, model, parameter shapes),
written atomically and read back with weights_only: a checkpoint is data, never code to run."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resexp.engine.schedules import ErrorWarmup
from resexp.engine.step import TrainStep
from resexp.errors import ResexpError, one_line
from resexp.files import atomic_path
from resexp.rundir import MOVE_IT_AWAY, identity_changes


@dataclass
class TrainState:
    """The step (model, optimizer, scaler, batcher, metric sums) and the loop's own counters."""

    step: TrainStep
    identity: dict[str, Any] = field(default_factory=dict)  # resexp.rundir.run_identity of the run
    iteration: int = 0
    wall_time: float = 0.0  # seconds trained before this process, summed over resumptions
    best_eval_error: float = math.inf
    warmup: ErrorWarmup | None = None  # the paper's ResNet-110 error warm-up, where the run has one

    @property
    def in_warmup(self) -> bool:
        return self.warmup is not None and self.warmup.active

    def state_dict(self) -> dict[str, Any]:
        return {**self.step.state_dict(), "iteration": self.iteration, "wall_time": self.wall_time,
                "best_eval_error": self.best_eval_error, "in_warmup": self.in_warmup,
                "warmup": self.warmup.state_dict() if self.warmup is not None else None,
                "torch_rng": torch.get_rng_state(), **self.what_it_is()}

    def what_it_is(self) -> dict[str, str]:
        return {"run_identity": json.dumps(self.identity, sort_keys=True),
                "model_name": str(self.identity.get("model", {}).get("name")),
                "param_shapes": param_shapes(self.step.model)}

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        """Refuses (one line, nothing loaded) a checkpoint of another run or not from resexp."""
        self._check(state, path)
        wrong = self._wrong_values(state)
        if wrong:
            raise ResexpError(f"{path} holds values no run can have ({wrong}); {MOVE_IT_AWAY}")
        try:
            self.step.load_state_dict(state)
            self.iteration, self.wall_time = int(state["iteration"]), float(state["wall_time"])
            self.best_eval_error = float(state["best_eval_error"])
            if self.warmup is not None:  # its config is in the run identity: a checkpoint of this run has its state
                self.warmup.load_state_dict(state["warmup"])
            torch.set_rng_state(state["torch_rng"].cpu())  # a checkpoint loaded onto CUDA moved it
        except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as e:
            raise ResexpError(f"{path} is not a resexp checkpoint of this run ({type(e).__name__}: "
                              f"{one_line(e)}); {MOVE_IT_AWAY}") from None

    def _check(self, state: Any, path: Path) -> None:
        if not isinstance(state, dict) or not {"model", "iteration"} <= state.keys():
            raise ResexpError(f"{path} is not a resexp checkpoint (no model or iteration); {MOVE_IT_AWAY}")
        mine = self.what_it_is()
        if "run_identity" in state:  # older checkpoints carry no identity: only the shapes check below
            try:
                saved = json.loads(state["run_identity"])
                changes = identity_changes(saved, self.identity)
            except (TypeError, ValueError, AttributeError):
                raise ResexpError(f"{path} holds a damaged run identity; {MOVE_IT_AWAY}") from None
            if changes:
                raise ResexpError(f"{path} belongs to another run: {'; '.join(changes[:3])}; {MOVE_IT_AWAY}")
        if not isinstance(state["model"], dict):
            raise ResexpError(f"{path} holds no model weights; {MOVE_IT_AWAY}")
        saved_shapes = state.get("param_shapes") or param_shapes_of(state["model"])
        if saved_shapes != mine["param_shapes"]:
            raise ResexpError(f"{path} holds a model with other parameter shapes than "
                              f"{mine['model_name']}; {MOVE_IT_AWAY}")


    def _wrong_values(self, state: dict[str, Any]) -> str | None:
        """What in a checkpoint of the right run and shapes is still impossible: counters out of
        range, optimizer or batcher state that does not fit this model and data. Checked before
        anything is loaded or written, so a damaged checkpoint changes nothing."""
        iteration, wall_time = state.get("iteration"), state.get("wall_time")
        if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
            return f"iteration={iteration!r}"
        if not isinstance(wall_time, (int, float)) or not 0 <= wall_time < math.inf:
            return f"wall_time={wall_time!r}"
        best = state.get("best_eval_error")
        if not isinstance(best, (int, float)) or not (0 <= best <= 100 or best == math.inf):
            return f"best_eval_error={best!r}"
        count = state.get("window_count")
        if not isinstance(count, int) or count < 0:
            return f"window_count={count!r}"
        return self._wrong_optimizer(state.get("optimizer")) or self._wrong_batcher(state.get("batcher"))

    def _wrong_optimizer(self, saved: Any) -> str | None:
        shapes = [p.shape for group in self.step.optimizer.param_groups for p in group["params"]]
        if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
            return "no optimizer state"
        for index, entry in saved["state"].items():
            if not isinstance(index, int) or not 0 <= index < len(shapes) or not isinstance(entry, dict):
                return f"optimizer state for parameter {index!r} of {len(shapes)}"
            for key, value in entry.items():  # momentum, Adam's moments: the parameter's shape
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != shapes[index]:
                    return f"optimizer {key} of parameter {index} has shape {list(value.shape)}, " \
                           f"not {list(shapes[index])}"
        return None

    def _wrong_batcher(self, saved: Any) -> str | None:
        mine = self.step.batcher.state_dict()
        if not isinstance(saved, dict) or saved.keys() != mine.keys():
            return "no batcher state"
        order, n = saved["order"], len(mine["order"])
        if not isinstance(order, torch.Tensor) or order.shape != mine["order"].shape \
                or not torch.equal(order.sort().values.cpu(), torch.arange(n, dtype=order.dtype)):
            return f"the batch order is not a permutation of the {n} training images"
        position, epoch = saved["position"], saved["epoch"]
        if not isinstance(position, int) or not 0 <= position <= n:
            return f"batcher position={position!r}"
        if not isinstance(epoch, int) or epoch < 0:
            return f"batcher epoch={epoch!r}"
        return None




def param_shapes(model: nn.Module) -> str:
    """A fingerprint of the model's parameter and buffer names and shapes."""
    return param_shapes_of(model.state_dict())


def param_shapes_of(state: dict[str, Any]) -> str:
    layout = sorted((name, list(getattr(t, "shape", ()))) for name, t in state.items())
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """A killed process leaves either the old checkpoint or the new one, never half a file. A
    full disk is a one-line ResexpError that says so: torch reports it as a RuntimeError of its
    zip writer, so the free space is compared with what the checkpoint needs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # closed on failure: the space comes back
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as error:
        free, needed = shutil.disk_usage(path.parent).free, tensor_bytes(state)
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < needed:
            kept = "the previous checkpoint is intact" if path.is_file() else "no checkpoint was saved"
            raise ResexpError(f"no space left on device: {path} needs about {needed / 2**20:.1f} MiB, "
                              f"{free / 2**20:.1f} MiB free; {kept}: free some space and run the same "
                              "command to resume") from None
        raise


def tensor_bytes(tree: Any) -> int:
    """The bytes of the tensors in a nested state dict: a checkpoint's size, near enough."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(value) for value in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(value) for value in tree)
    return 0
