"""THE training step: cut and augment a batch on the device, forward, loss, backward, optimizer
update, metric sums on the device. Training, evaluation's caller, `resexp bench` and
`bench --runs` all drive this one object.

A step has a host half (`Step.__call__`: start a new epoch when one is due, pick eager or graph)
and a device half (`compute`), which reads everything that changes from step to step from
device tensors: the batch cursor, the learning rate, the random generator's offset. Nothing in
it reads a value back to the host, so on CUDA it is captured once as one CUDA graph and then
replayed, one launch per step; the learning-rate schedule (the ResNet-110 error warm-up too)
writes the lr tensor in place between replays, without re-capturing. On CPU, or where capture
is not possible, the same `compute` runs eagerly.

`TrainStep` is one model; `resexp.bench.lockstep.LockstepStep` is K models trained as one,
a second implementation of the same interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from resexp.data import Data, DeviceBatcher
from resexp.engine.runtime import Runtime
from resexp.errors import ConfigError
from resexp.models import build_model

# How an optimizer runs, chosen here, not by whichever run saved the checkpoint.
OPTIMIZER_FLAGS = ("fused", "foreach", "capturable", "differentiable")
# Eager steps before capture: cuDNN picks its algorithms, the optimizer creates its state, a
# compiled forward compiles. They are ordinary training steps, run on a side stream as capture wants.
EAGER_STEPS_BEFORE_CAPTURE = 3
Inspect = Callable[[torch.Tensor, torch.Tensor], None]  # called with images, labels between backward and update


class Step:
    """What every step implementation shares: the learning rate held in a device tensor, the
    host half of a step, and running `compute` eagerly or as one captured CUDA graph."""

    def __init__(self, runtime: Runtime, batchers: list[DeviceBatcher], notify: Callable[[str], None]) -> None:
        self.runtime = runtime
        self.batchers = batchers
        self.notify = notify  # one-line messages (why a capture fell back to eager)
        self.lr = torch.zeros((), device=runtime.device)  # the optimizer reads it on the device
        self.lr_value: float | None = None
        self.capture = runtime.graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.side_stream = torch.cuda.Stream(runtime.device) if runtime.graph else None  # warm-up steps run there
        self.eager_steps = 0

    def compute(self, inspect: Inspect | None = None) -> None:
        """The device half of one step; subclasses write it. No host reads."""
        raise NotImplementedError

    def set_lr(self, lr: float) -> None:
        if lr != self.lr_value:  # a fill per change, not per step
            self.lr.fill_(lr)
            self.lr_value = lr

    def __call__(self, inspect: Inspect | None = None) -> None:
        """One training step. With `inspect` it runs eagerly (a probe reads the gradients)."""
        for batcher in self.batchers:
            batcher.advance()
        if inspect is None and self.capture and self.graph is None and self.eager_steps >= EAGER_STEPS_BEFORE_CAPTURE:
            self._capture()
        if self.graph is not None and inspect is None:
            self.graph.replay()
            return
        if self.capture and self.graph is None:
            self.side_stream.wait_stream(torch.cuda.current_stream(self.runtime.device))
            with torch.cuda.stream(self.side_stream):
                self.compute(inspect)
            torch.cuda.current_stream(self.runtime.device).wait_stream(self.side_stream)
        else:
            self.compute(inspect)
        self.eager_steps += 1

    def _capture(self) -> None:
        """Record `compute` as one CUDA graph (nothing runs while recording); eager from now on
        if that fails, with one line saying why, unless trainer.graph=always asked for it."""
        graph = torch.cuda.CUDAGraph()
        states = [batcher.generator.get_state() for batcher in self.batchers]
        for batcher in self.batchers:  # crops and flips replay fresh random numbers each step
            graph.register_generator_state(batcher.generator)
        stream = torch.cuda.current_stream(self.runtime.device)
        try:
            with torch.cuda.graph(graph):
                self.compute()
        except Exception as e:
            torch.cuda.set_stream(stream)  # a failed end of capture leaves the capture stream current
            cause = e.__context__ or e  # the end of a broken capture raises on top of what broke it
            reason = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
            if self.runtime.graph_required:
                raise ConfigError(f"trainer.graph=always: capturing the step failed: {reason}") from None
            for batcher, state in zip(self.batchers, states):
                # a generator registered with a failed capture refuses eager draws: a fresh one
                # goes on from the same state (nothing of the capture ran)
                batcher.generator = torch.Generator(self.runtime.device)
                batcher.generator.set_state(state)
            self.capture = False
            self.notify(f"eager step: capturing it as a CUDA graph failed ({reason})")
            return
        self.graph = graph

    @property
    def execution(self) -> str:
        """How the step ran: the runtime's plan, less a capture that fell back to eager or never came."""
        return self.runtime.describe(self.graph is not None)


class TrainStep(Step):
    """One model: the trainer's step. Its metric sums (wrong predictions, loss x batch) stay on
    the device until `read_metrics`; `last_errors` holds the latest batch's wrong predictions."""

    def __init__(self, model: torch.nn.Module, optim: DictConfig, batcher: DeviceBatcher, runtime: Runtime,
                 notify: Callable[[str], None] = print) -> None:
        super().__init__(runtime, [batcher], notify)
        self.model, self.batcher = model, batcher
        if runtime.recompute_blocks:
            model.recompute_segment = runtime.recompute_blocks  # cifar_resnet only (resexp.schema)
        self.forward = compile_forward(model, runtime)
        self.optimizer = build_optimizer(optim, model.parameters(), self.lr, capturable=runtime.graph)
        self.scaler = runtime.scaler()
        device = runtime.device
        self.errors = torch.zeros((), device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.last_errors = torch.zeros((), device=device)
        self.count = 0  # samples in the sums, counted on the host

    @classmethod
    def build(cls, cfg: DictConfig, data: Data, runtime: Runtime, notify: Callable[[str], None] = print) -> TrainStep:
        """The step of a run: cfg.model seeded with cfg.seed, on the runtime's device and layout."""
        torch.manual_seed(int(cfg.seed))
        model = build_model(cfg.model, in_channels=data.channels, num_classes=data.num_classes)
        model = model.to(runtime.device, memory_format=runtime.memory_format)
        return cls(model, cfg.optim, data.train, runtime, notify)

    def __call__(self, inspect: Inspect | None = None) -> None:
        super().__call__(inspect)
        self.count += self.batcher.batch_size

    def compute(self, inspect: Inspect | None = None) -> None:
        images, labels = self.batcher.cut()
        with self.runtime.autocast():
            logits = self.forward(images)
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if inspect is not None:
            inspect(images, labels)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        wrong = (logits.detach().argmax(1) != labels).sum()
        self.last_errors.copy_(wrong)
        self.errors.add_(wrong)
        self.loss_sum.add_(loss.detach().float() * len(labels))

    def read_metrics(self) -> tuple[float, float]:
        """Training error (%) and mean loss of the batches since the last read; resets the sums.
        A host synchronisation: call it every log_every steps, not every step."""
        error, loss = 100.0 * self.errors.item() / self.count, self.loss_sum.item() / self.count
        self.errors.zero_(), self.loss_sum.zero_()
        self.count = 0
        return error, loss

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "batcher": self.batcher.state_dict(),
                "window_errors": self.errors, "window_loss": self.loss_sum, "window_count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Before the first step: the optimizer's state tensors are replaced, not copied into."""
        if self.graph is not None:
            raise RuntimeError("load a TrainStep's state before its first steps, not after its capture")
        self.model.load_state_dict(state["model"])
        chosen = [{key: group[key] for key in OPTIMIZER_FLAGS if key in group} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, flags in zip(self.optimizer.param_groups, chosen):
            # loading brought back the saved lr (a copy) and the saving run's kernel choices
            group.update(flags, lr=self.lr)
        self.scaler.load_state_dict(state["scaler"])
        self.batcher.load_state_dict(state["batcher"])
        self.errors.copy_(state["window_errors"]), self.loss_sum.copy_(state["window_loss"])
        self.count = int(state["window_count"])


def compile_forward(model: Callable, runtime: Runtime) -> Callable:
    """The callable the step trains through: the module, or Inductor's compiled version of it
    (no CUDA graphs of its own: the whole step is captured instead). Checkpoints always save
    the un-compiled module, so compiled and eager runs share them."""
    return torch.compile(model) if runtime.compile else model


def build_optimizer(optim: DictConfig, parameters: Iterable[torch.Tensor], lr: torch.Tensor,
                    capturable: bool = False) -> torch.optim.Optimizer:
    """The configured optimizer, reading its learning rate from the device tensor `lr`; fused:
    one kernel for the whole update, and the form that takes a tensor lr without a host read.
    `capturable`: the step will be captured in a CUDA graph (Adam needs to know; SGD does not)."""
    if optim.name == "sgd":  # the paper decays every parameter, BN included
        return torch.optim.SGD(parameters, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                               nesterov=optim.nesterov, fused=True)
    # adamw, the only other optim.name (resexp.schema): decay weight matrices only: not biases, norm gains, ReZero scalars
    params = [p for p in parameters if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    # capturable: Adam refuses a CUDA-graph capture without it (then its step count lives on the device)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim.betas), eps=optim.eps, fused=True,
                             capturable=capturable)
