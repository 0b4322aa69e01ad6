"""The config schema: every group's keys, their types and the values they allow, in one place.

`validate` checks a composed run config (resexp.config) with resexp.sections.check, which raises
every violation as one ConfigError line naming the key, the bad value and what is allowed. The
model sections, with the models' choices and defaults, are resexp.model_config's.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Optional, Union

from omegaconf import DictConfig
from pydantic import Field

from resexp.model_config import ModelConfig
from resexp.sections import NonNegative, NonNegativeInt, Positive, PositiveInt, Section, by_tag, check, rule, sections

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
Fraction = Annotated[float, rule("a number in [0, 1)", lambda v: 0 <= v < 1)]
Milestones = Annotated[list[float], rule("ascending fractions of trainer.max_iters in (0, 1], e.g. [0.5,0.75]",
                                         lambda m: all(0 < f <= 1 for f in m) and m == sorted(m))]
Directory = Annotated[str, rule("a directory path", bool)]
# A name is one folder inside run.root (run.sweep: inside run.root/sweeps): never '.', '..' or a path.
RunName = Annotated[str, rule("a folder name: not empty, '.' or '..', without '/'",
                              lambda n: n not in ("", ".", "..") and "/" not in n and "\0" not in n)]
Schedule = Literal["step", "cosine", "constant"]


# ---- data ----

class TorchvisionData(Section):
    """CIFAR-10/100 and Fashion-MNIST through torchvision (resexp/data/sources.py)."""

    name: Literal["cifar10", "cifar100", "fashion_mnist"]
    root: Directory
    download: bool
    val_size: NonNegativeInt
    augment: bool


class SyntheticData(Section):
    """The built-in synthetic set (resexp/data/synthetic.py)."""

    name: Literal["synthetic"]
    train_size: PositiveInt
    test_size: PositiveInt
    seed: NonNegativeInt
    val_size: NonNegativeInt
    augment: bool
    noise: NonNegative
    distractor: NonNegative
    orientation_jitter: NonNegative
    frequency_jitter: NonNegative
    colour_jitter: NonNegative
    background: NonNegative
    modes: PositiveInt

    def relations(self) -> list[str]:
        if self.val_size >= self.train_size:
            return [f"data.val_size must be smaller than data.train_size ({self.train_size}); got {self.val_size}"]
        return []


# ---- optim ----

class ErrorWarmup(Section):
    """The paper's ResNet-110 warm-up: lr `lr` until the training error over the last `window` images
    is below until_error (%), or max_iters iterations (resexp/engine/schedules.py)."""

    lr: NonNegative
    until_error: Annotated[float, rule("a percentage from 0 to 100", lambda v: 0 <= v <= 100)]
    window: PositiveInt
    max_iters: PositiveInt


class SGD(Section):
    """SGD with momentum, the paper's recipe (resexp/engine/step.py)."""

    name: Literal["sgd"]
    lr: NonNegative
    momentum: Fraction
    weight_decay: NonNegative
    nesterov: bool
    schedule: Schedule
    milestones: Milestones
    gamma: Positive
    warmup_iters: NonNegativeInt
    error_warmup: Optional[ErrorWarmup]

    def relations(self) -> list[str]:
        return ["optim.nesterov=true needs optim.momentum > 0"] if self.nesterov and self.momentum == 0 else []


class AdamW(Section):
    """AdamW for the Transformer runs (resexp/engine/step.py)."""

    name: Literal["adamw"]
    lr: NonNegative
    betas: Annotated[list[float], rule("two numbers in [0, 1)", lambda b: len(b) == 2 and all(0 <= v < 1 for v in b))]
    eps: Positive
    weight_decay: NonNegative
    schedule: Schedule
    warmup_iters: NonNegativeInt
    milestones: Milestones
    gamma: Positive
    error_warmup: Optional[ErrorWarmup]


# ---- trainer, run ----

class Trainer(Section):
    """How a run executes and reports (resexp/engine/train.py, runtime.py)."""

    max_iters: PositiveInt
    batch_size: PositiveInt
    eval_every: PositiveInt
    eval_batch_size: PositiveInt
    log_every: PositiveInt
    checkpoint_every: PositiveInt
    device: Annotated[str, rule("auto, cpu, cuda or cuda:N", lambda d: DEVICE_PATTERN.fullmatch(d) is not None)]
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    channels_last: bool
    compile: bool
    graph: Literal["auto", "always", "never"]
    recompute_blocks: NonNegativeInt
    deterministic: bool
    progress: Literal["auto", "bar", "lines", "none"]
    loss_ceiling: Annotated[Optional[float], rule("a positive number or null", lambda v: v > 0)]
    probe_every: NonNegativeInt


class Run(Section):
    """Where a run's directory is and whether an existing one is resumed."""

    root: Directory
    name: RunName
    dir: Directory
    resume: bool
    sweep: RunName


class TrainConfig(Section):
    """A whole run config (configs/train.yaml and its groups)."""

    model: ModelConfig
    data: Union[TorchvisionData, SyntheticData] = Field(discriminator="name")
    optim: Union[SGD, AdamW] = Field(discriminator="name")
    trainer: Trainer
    seed: NonNegativeInt
    run: Run

    def relations(self) -> list[str]:
        problems = []
        data, trainer = self.data, self.trainer
        if isinstance(data, SyntheticData) and trainer.batch_size > data.train_size - data.val_size:
            problems.append(f"trainer.batch_size must be at most the {data.train_size - data.val_size} "
                            f"training images (data.train_size - data.val_size); got {trainer.batch_size}")
        bn_batch = getattr(self.model, "bn_batch", None)  # cifar_resnet's only
        if bn_batch is not None and trainer.batch_size % bn_batch:
            problems.append(f"trainer.batch_size must be a multiple of model.bn_batch={bn_batch} (BatchNorm's groups "
                            f"of the batch); got {trainer.batch_size}: set model.bn_batch to a divisor of it, or null")
        if trainer.recompute_blocks and self.model.arch != "cifar_resnet":
            problems.append(f"trainer.recompute_blocks applies to the cifar_resnet models (plainN, resnetN), not "
                            f"model.arch={self.model.arch}; set trainer.recompute_blocks=0")
        return problems


def validate(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise one ConfigError listing every violation of the schema in a run config."""
    check(cfg, TrainConfig)


def key_choices(key: str) -> tuple[str, ...]:
    """The values a dotted key allows when they are a fixed set (a Literal, or a bool), as the
    command line spells them; () for a free value or an unknown key. For shell completion."""
    hints: list[Any] = [TrainConfig]
    for part in key.split("."):
        hints = [m.model_fields[part].annotation for h in hints for m in sections(h) if part in m.model_fields]
    values: list[str] = []
    for hint in hints:
        if hint is bool:
            values += ["true", "false"]
        elif typing.get_origin(hint) is Literal:
            values += [str(v) for v in typing.get_args(hint)]
    return tuple(dict.fromkeys(values))


def section_defaults(group: str, section: Mapping[str, Any]) -> dict[str, Any]:
    """The schema's defaults for one section of a tagged group (model, data, optim): every key of
    the section class that the section's tag picks that has a default; {} for a tag it does not know."""
    tag, members = by_tag(TrainConfig.model_fields[group].annotation)
    for value, member in members.items():
        if section.get(tag) == value:
            return {name: field.default for name, field in member.model_fields.items() if not field.is_required()}
    return {}
