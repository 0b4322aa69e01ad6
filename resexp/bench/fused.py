"""K seeds of one CIFAR net trained as one fused network (resexp.models.fused): the step interface
of resexp.engine.step, a third way beside one run's TrainStep and the vmapped LockstepStep.

Member k is the run of seed + k: its model is built and initialised from that seed, its batches
come from its own batcher (the one that run would build: its own permutation, crops and flips),
its loss is its own batch mean and its learning rate its own (`set_lr` takes one per member, so
a warm-up ends per member). SGD runs here as plain tensor code, per member, because torch's SGD
takes one learning rate per parameter tensor and a fused tensor holds K members.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from resexp.bench.lockstep import check_lockstep
from resexp.data import RawData, build_data
from resexp.engine.runtime import Runtime
from resexp.engine.step import Inspect, Step, build_optimizer, compile_forward
from resexp.models import build_model
from resexp.models.fused import fuse, member_losses, member_of_rows, member_state


class FusedStep(Step):
    """`members` runs of cfg.model (seeds cfg.seed, cfg.seed + 1, ...) as one fused net; metric
    sums and learning rates are per member, shape (members,)."""

    def __init__(self, cfg: DictConfig, raw: RawData, runtime: Runtime, members: int,
                 notify: Callable[[str], None] = print) -> None:
        check_lockstep(cfg, runtime, "fused")
        device, seed, batch = runtime.device, int(cfg.seed), int(cfg.trainer.batch_size)
        batchers = [build_data(cfg.data, device, batch, seed + k, runtime.memory_format, raw).train
                    for k in range(members)]
        super().__init__(runtime, batchers, notify)
        self.lr = torch.zeros(members, device=device)
        self.lr_values: list[float] | None = None
        models = []
        for k in range(members):  # as TrainStep.build builds the run of seed + k
            torch.manual_seed(seed + k)
            models.append(build_model(cfg.model, raw.channels, raw.num_classes)
                          .to(device, memory_format=runtime.memory_format))
        self.members, self.batch, self.optim = members, batch, cfg.optim
        self.like = models[0]  # an ordinary model of the config: the shapes a member hands back
        self.model = fuse(models).to(memory_format=runtime.memory_format)
        self.forward = compile_forward(self.model, runtime)
        self.params = list(self.model.parameters())
        self.momentum = [torch.zeros_like(p) for p in self.params]  # SGD's buffers: 0 + d is torch's first d
        self.rows = [member_of_rows(p, members) for p in self.params]
        self.errors = torch.zeros(members, device=device)
        self.loss_sum = torch.zeros(members, device=device)
        self.last_errors = torch.zeros(members, device=device)
        self.count = 0  # samples per member in the sums

    def set_lr(self, lr: float | Sequence[float]) -> None:
        """One learning rate for every member, or one each."""
        values = [float(lr)] * self.members if isinstance(lr, (int, float)) else [float(v) for v in lr]
        if len(values) != self.members:
            raise ValueError(f"{len(values)} learning rates for {self.members} members")
        if values != self.lr_values:
            self.lr.copy_(torch.tensor(values))
            self.lr_values = values

    def __call__(self, inspect: Inspect | None = None) -> None:
        super().__call__(inspect)
        self.count += self.batch

    def compute(self, inspect: Inspect | None = None) -> None:
        images, labels = zip(*(batcher.cut() for batcher in self.batchers))
        images = torch.cat(images, 1).contiguous(memory_format=self.runtime.memory_format)  # member k: channels k*C..
        labels = torch.stack(labels, 1)  # (batch, members)
        with self.runtime.autocast():
            logits = self.forward(images)  # (batch, members, classes)
            losses = member_losses(logits, labels)
        for p in self.params:
            p.grad = None
        losses.sum().backward()  # no parameter is shared: each member gets its own loss's gradient
        if inspect is not None:
            inspect(images, labels)
        self.update()
        wrong = (logits.detach().argmax(-1) != labels).sum(0)
        self.last_errors.copy_(wrong)
        self.errors.add_(wrong)
        self.loss_sum.add_(losses.detach().float() * self.batch)

    @torch.no_grad()
    def update(self) -> None:
        """torch.optim.SGD's update (momentum, weight decay, optional Nesterov; no dampening), with
        member k's rows of every parameter stepped by member k's learning rate."""
        momentum, decay, nesterov = float(self.optim.momentum), float(self.optim.weight_decay), self.optim.nesterov
        for p, buffer, rows in zip(self.params, self.momentum, self.rows):
            step = p.grad.add(p, alpha=decay) if decay else p.grad
            buffer.mul_(momentum).add_(step)
            step = step.add(buffer, alpha=momentum) if nesterov else buffer
            p.sub_(self.lr[rows].view(-1, *([1] * (p.ndim - 1))) * step)

    def read_metrics(self) -> tuple[list[float], list[float]]:
        """Each member's training error (%) and mean loss since the last read; resets the sums."""
        errors = (100.0 * self.errors / self.count).tolist()
        losses = (self.loss_sum / self.count).tolist()
        self.errors.zero_(), self.loss_sum.zero_()
        self.count = 0
        return errors, losses

    def member_checkpoint(self, member: int) -> dict[str, Any]:
        """Member `member` as an ordinary run's TrainStep state (resexp.engine.step): its weights and
        BN statistics, its SGD momentum in torch.optim.SGD's form, its batcher, its metric sums."""
        model = self.like
        model.load_state_dict(member_state(self.model, member, self.members, model))
        optimizer = build_optimizer(self.optim, model.parameters(), torch.tensor(0.0))
        for p, buffer in zip(model.parameters(), self.momentum):  # laid out as the weights (member_state)
            optimizer.state[p]["momentum_buffer"] = buffer.reshape(self.members, *p.shape)[member].clone()
        return {"model": {k: v.clone() for k, v in model.state_dict().items()}, "optimizer": optimizer.state_dict(),
                "scaler": self.runtime.scaler().state_dict(), "batcher": self.batchers[member].state_dict(),
                "window_errors": self.errors[member].clone(), "window_loss": self.loss_sum[member].clone(),
                "window_count": self.count}
