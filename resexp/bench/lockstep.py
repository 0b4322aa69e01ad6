"""K runs of one architecture trained as one: the step interface of resexp.engine.step for K models.

Their parameters and BN buffers are stacked (torch.func.stack_module_state) and one vmapped
forward and backward runs per step, so each conv becomes one grouped conv over the K models.
Every model has its own seed (seed, seed+1, ...), data order and augmentation, and its loss is
its own batch mean, so each gets the gradient it would get alone.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.func import functional_call, stack_module_state, vmap

from resexp.data import RawData, build_data
from resexp.engine.runtime import Runtime
from resexp.engine.step import Inspect, Step, build_optimizer, compile_forward
from resexp.errors import ConfigError
from resexp.models import build_model


def check_lockstep(cfg: DictConfig, runtime: Runtime, way: str = "lock-step") -> None:
    """What training several runs as one model (lock-step, or fused: resexp.bench.fused) needs."""
    if cfg.optim.name != "sgd":  # AdamW's decay rule reads each parameter's rank, which stacking changes
        raise ConfigError(f"{way} is measured with optim=sgd (the paper's recipe), not optim={cfg.optim.name}")
    if runtime.precision == "fp16":  # one shared loss scale would skip a step for all runs at once
        raise ConfigError(f"{way} runs in fp32 or bf16; set trainer.precision=fp32 or bf16")
    if runtime.recompute_blocks:
        raise ConfigError(f"{way} keeps every activation; set trainer.recompute_blocks=0")


class LockstepStep(Step):
    """`runs` models of cfg.model trained as one step; metric sums are per model, shape (runs,)."""

    def __init__(self, cfg: DictConfig, raw: RawData, runtime: Runtime, runs: int,
                 notify: Callable[[str], None] = print) -> None:
        check_lockstep(cfg, runtime)
        device, seed, batch = runtime.device, int(cfg.seed), int(cfg.trainer.batch_size)
        batchers = [build_data(cfg.data, device, batch, seed + k, runtime.memory_format, raw).train
                    for k in range(runs)]
        super().__init__(runtime, batchers, notify)
        models = []
        for k in range(runs):
            torch.manual_seed(seed + k)
            models.append(build_model(cfg.model, raw.channels, raw.num_classes)
                          .to(device, memory_format=runtime.memory_format))
        self.params, self.buffers = stack_module_state(models)  # leading dim = run; BN stats per run
        skeleton = copy.deepcopy(models[0]).to("meta")

        def one_model(p: dict, b: dict, images: torch.Tensor) -> torch.Tensor:
            return functional_call(skeleton, (p, b), (images,))

        # vmap has no batching rule for the in-place op inside adaptive_avg_pool2d; the fallback
        # loops over the K models for that one small op only, and its warning would repeat.
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
        self.forward = compile_forward(vmap(one_model), runtime)
        self.optimizer = build_optimizer(cfg.optim, self.params.values(), self.lr, capturable=runtime.graph)
        self.errors = torch.zeros(runs, device=device)
        self.runs, self.batch = runs, batch

    def compute(self, inspect: Inspect | None = None) -> None:
        images, labels = zip(*(b.cut() for b in self.batchers))
        images, labels = torch.stack(images), torch.stack(labels)  # (runs, batch, ...)
        with self.runtime.autocast():
            logits = self.forward(self.params, self.buffers, images)
            losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        self.optimizer.zero_grad(set_to_none=True)
        losses.view(self.runs, self.batch).mean(1).sum().backward()  # disjoint parameters per run
        if inspect is not None:
            inspect(images, labels)
        self.optimizer.step()
        self.errors.add_((logits.detach().argmax(-1) != labels).sum(1))
