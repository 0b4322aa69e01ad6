"""The config schema: every group's keys, their types and the values they allow, in one place.

`validate(cfg)` checks a composed run config before anything is built or written: each
violation names the key, the bad value and what is allowed, and all of them are raised
together as one ConfigError line. `build_model` takes a model's constructor arguments from the
arch's dataclass here.

A field is a dataclass field whose type says what kind of value it holds (Literal for a fixed
set of choices) and whose optional `rule` adds a range; `relations` check keys against each
other. Values of a union (model, data, optim) are told apart by one tag key (arch or name).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resexp.errors import ConfigError

# A choice that code outside the schema checks too (the single-block view) is named once here.
Placement = Literal["post", "pre", "sandwich", "deepnorm", "rezero", "none", "mix", "lns", "dyt", "peri"]
PLACEMENTS = typing.get_args(Placement)
# Defaults of the ViT's placement parameters, shared with the model and the single-block view.
DEFAULT_MIX_RATIO = 0.25  # Mix-LN's alpha: the fraction of leading blocks that are Post-LN
DEFAULT_DYT_ALPHA = 0.5  # DyT's initial alpha in gamma * tanh(alpha * x) + beta
ZeroPad = Literal["end", "split"]  # where option A's zero channels go (resexp/models/cifar_resnet.py)
IMAGE_SIZE = 32  # every dataset is served as 32x32 (Fashion-MNIST zero-padded)
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def rule(check: Callable[[Any], bool], allowed: str, default: Any = dataclasses.MISSING) -> Any:
    """A field whose value must pass `check`; `allowed` completes "KEY must be ..."."""
    return field(default=default, metadata={"check": check, "allowed": allowed})


def positive_int() -> Any:
    return rule(lambda v: v >= 1, "a positive integer")


def non_negative_int() -> Any:
    return rule(lambda v: v >= 0, "an integer >= 0")


def positive() -> Any:
    return rule(lambda v: v > 0, "a positive number")


def non_negative() -> Any:
    return rule(lambda v: v >= 0, "a number >= 0")


# ---- model: one dataclass per arch, the constructor's arguments besides arch and name ----

@dataclass
class CifarResNetModel:
    """The paper's 6n+2 CIFAR nets and their plain twins (resexp/models/cifar_resnet.py)."""

    arch: Literal["cifar_resnet"]
    depth: int = rule(lambda d: d >= 8 and (d - 2) % 6 == 0, "6n+2 with n >= 1 (20, 32, 44, 56, 110, 1202, ...)")
    residual: bool
    shortcut: Literal["A", "B"]
    width: float = positive()
    # Runs written before this key existed lack it and count as "end" (resexp.config.run_identity).
    zero_pad: ZeroPad = "end"
    name: Optional[str] = None


@dataclass
class VGGModel:
    """VGG-style plain CNN (resexp/models/vgg.py)."""

    arch: Literal["vgg"]
    depth: Literal[11, 13, 16, 19]
    width: float = positive()
    name: Optional[str] = None


@dataclass
class ViTModel:
    """ViT-style classifier with a choice of norm placement (resexp/models/vit.py)."""

    arch: Literal["vit"]
    depth: int = positive_int()
    dim: int = positive_int()
    heads: int = positive_int()
    mlp_ratio: float = positive()
    patch_size: int = rule(lambda p: p >= 1 and IMAGE_SIZE % p == 0,
                           f"a divisor of the image size {IMAGE_SIZE} (1, 2, 4, 8, 16, 32)")
    pool: Literal["cls", "mean"]
    norm_placement: Placement
    residual: bool
    norm: Literal["layernorm", "rmsnorm"]
    name: Optional[str] = None
    # Runs written before these keys existed lack them and count as the defaults (resexp.config.run_identity).
    mix_ratio: float = rule(lambda v: 0 <= v <= 1, "a number in [0, 1]", DEFAULT_MIX_RATIO)
    dyt_alpha: float = rule(lambda v: v > 0, "a positive number", DEFAULT_DYT_ALPHA)
    qk_norm: bool = False

    @staticmethod
    def relations(model: Mapping[str, Any]) -> list[str]:
        problems = []
        if model["dim"] % model["heads"]:
            problems.append(f"model.dim must be divisible by model.heads; got dim {model['dim']}, "
                            f"heads {model['heads']}")
        if model["norm_placement"] == "rezero" and not model["residual"]:
            problems.append("model.residual=false cannot be used with norm_placement=rezero (a*G(x) with a = 0 "
                            "at init never trains); use residual=true or another placement")
        return problems


# ---- data ----

@dataclass
class TorchvisionData:
    """CIFAR-10/100 and Fashion-MNIST through torchvision (resexp/data/sources.py)."""

    name: Literal["cifar10", "cifar100", "fashion_mnist"]
    root: str = rule(bool, "a directory path")
    download: bool
    val_size: int = non_negative_int()
    augment: bool


@dataclass
class SyntheticData:
    """The built-in synthetic set (resexp/data/synthetic.py)."""

    name: Literal["synthetic"]
    train_size: int = positive_int()
    test_size: int = positive_int()
    seed: int = non_negative_int()
    val_size: int = non_negative_int()
    augment: bool
    noise: float = non_negative()
    distractor: float = non_negative()
    orientation_jitter: float = non_negative()
    frequency_jitter: float = non_negative()
    colour_jitter: float = non_negative()
    background: float = non_negative()
    modes: int = positive_int()

    @staticmethod
    def relations(data: Mapping[str, Any]) -> list[str]:
        if data["val_size"] >= data["train_size"]:
            return [f"data.val_size must be smaller than data.train_size ({data['train_size']}); "
                    f"got {data['val_size']}"]
        return []


# ---- optim ----

@dataclass
class ErrorWarmup:
    """The paper's ResNet-110 warm-up: lr `lr` until the training error is below until_error (%)."""

    lr: float = non_negative()
    until_error: float = rule(lambda v: 0 <= v <= 100, "a percentage from 0 to 100")
    max_iters: int = positive_int()


def _milestones() -> Any:
    return rule(lambda m: all(0 < f <= 1 for f in m) and list(m) == sorted(m),
                "ascending fractions of trainer.max_iters in (0, 1], e.g. [0.5,0.75]")


def _unit_interval() -> Any:
    return rule(lambda v: 0 <= v < 1, "a number in [0, 1)")


@dataclass
class SGD:
    """SGD with momentum, the paper's recipe (resexp/engine/step.py)."""

    name: Literal["sgd"]
    lr: float = non_negative()
    momentum: float = _unit_interval()
    weight_decay: float = non_negative()
    nesterov: bool
    schedule: Literal["step", "cosine", "constant"]
    milestones: list[float] = _milestones()
    gamma: float = positive()
    warmup_iters: int = non_negative_int()
    error_warmup: Optional[ErrorWarmup]

    @staticmethod
    def relations(optim: Mapping[str, Any]) -> list[str]:
        if optim["nesterov"] and optim["momentum"] == 0:
            return ["optim.nesterov=true needs optim.momentum > 0"]
        return []


@dataclass
class AdamW:
    """AdamW for the Transformer runs (resexp/engine/step.py)."""

    name: Literal["adamw"]
    lr: float = non_negative()
    betas: list[float] = rule(lambda b: len(b) == 2 and all(0 <= v < 1 for v in b), "two numbers in [0, 1)")
    eps: float = positive()
    weight_decay: float = non_negative()
    schedule: Literal["step", "cosine", "constant"]
    warmup_iters: int = non_negative_int()
    milestones: list[float] = _milestones()
    gamma: float = positive()
    error_warmup: Optional[ErrorWarmup]


# ---- trainer, run, launcher ----

@dataclass
class Trainer:
    """How a run executes and reports (resexp/engine/train.py, runtime.py)."""

    max_iters: int = positive_int()
    batch_size: int = positive_int()
    eval_every: int = positive_int()
    eval_batch_size: int = positive_int()
    log_every: int = positive_int()
    checkpoint_every: int = positive_int()
    device: str = rule(lambda d: DEVICE_PATTERN.fullmatch(d) is not None, "auto, cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    channels_last: bool
    compile: bool
    graph: Literal["auto", "always", "never"]
    recompute_blocks: int = non_negative_int()
    deterministic: bool
    progress: Literal["auto", "bar", "lines", "none"]
    loss_ceiling: Optional[float] = rule(lambda v: v > 0, "a positive number or null")
    probe_every: int = non_negative_int()


@dataclass
class Run:
    """Where a run's directory is and whether an existing one is resumed."""

    root: str = rule(bool, "a directory path")
    name: str = rule(lambda n: bool(n) and "/" not in n, "a non-empty name without '/'")
    dir: str = rule(bool, "a directory path")
    resume: bool
    sweep: str = rule(lambda n: bool(n) and "/" not in n, "a non-empty name without '/'")


@dataclass
class Launcher:
    """How `resexp sweep` places runs on local processes (resexp/sweep.py)."""

    runs_per_gpu: int = positive_int()
    cpu_runs: int = positive_int()
    mps: bool


@dataclass
class TrainConfig:
    """A whole run config (configs/train.yaml and its groups)."""

    model: Union[CifarResNetModel, VGGModel, ViTModel] = field(metadata={"tag": "arch"})
    data: Union[TorchvisionData, SyntheticData] = field(metadata={"tag": "name"})
    optim: Union[SGD, AdamW] = field(metadata={"tag": "name"})
    trainer: Trainer
    seed: int = non_negative_int()
    run: Run
    launcher: Launcher

    @staticmethod
    def relations(cfg: Mapping[str, Any]) -> list[str]:
        problems = []
        data, trainer = cfg["data"], cfg["trainer"]
        if data["name"] == "synthetic" and trainer["batch_size"] > data["train_size"] - data["val_size"]:
            problems.append(f"trainer.batch_size must be at most the {data['train_size'] - data['val_size']} "
                            f"training images (data.train_size - data.val_size); got {trainer['batch_size']}")
        if trainer["recompute_blocks"] and cfg["model"]["arch"] != "cifar_resnet":
            problems.append(f"trainer.recompute_blocks applies to the cifar_resnet models (plainN, resnetN), not "
                            f"model.arch={cfg['model']['arch']}; set trainer.recompute_blocks=0")
        return problems


def key_choices(key: str) -> tuple[str, ...]:
    """The values a dotted key allows when they are a fixed set (a Literal, or a bool), as the
    command line spells them; () for a free value or an unknown key. For shell completion."""
    hints: list[Any] = [TrainConfig]
    for part in key.split("."):
        found = []
        for hint in hints:
            members = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
            for member in members:
                if dataclasses.is_dataclass(member):
                    found.extend(h for name, h in typing.get_type_hints(member).items() if name == part)
        hints = found
    values: list[str] = []
    for hint in hints:
        if hint is bool:
            values += ["true", "false"]
        elif typing.get_origin(hint) is Literal:
            values += [str(v) for v in typing.get_args(hint)]
    return tuple(dict.fromkeys(values))


def section_defaults(group: str, section: Mapping[str, Any]) -> dict[str, Any]:
    """The schema's defaults for one section of a tagged group (model, data, optim): every key of
    the dataclass that the section's tag picks that has a default; {} for a tag it does not know."""
    spec = next(f for f in fields(TrainConfig) if f.name == group)
    tag = spec.metadata["tag"]
    for member in typing.get_args(typing.get_type_hints(TrainConfig)[group]):
        if section.get(tag) in typing.get_args(typing.get_type_hints(member)[tag]):
            return {f.name: f.default for f in fields(member) if f.default is not dataclasses.MISSING}
    return {}


def validate(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise one ConfigError listing every violation of the schema in a run config."""
    problems = _check(_plain(cfg), TrainConfig, "")
    if problems:
        raise ConfigError("; ".join(problems))


def validate_model(model: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Check a model section; returns the arch's constructor arguments (all keys but arch, name)."""
    model = _plain(model)
    problems = _check_value(model, typing.get_type_hints(TrainConfig)["model"], "model", "arch")
    if problems:
        raise ConfigError("; ".join(problems))
    return {k: v for k, v in model.items() if k not in ("arch", "name")}


def _plain(cfg: DictConfig | Mapping[str, Any]) -> Any:
    if isinstance(cfg, DictConfig):
        try:
            return OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as e:  # e.g. ${oc.env:X} without X set
            raise ConfigError(str(e).strip().splitlines()[0]) from None
    return dict(cfg)


def _check(section: dict[str, Any], schema: type, prefix: str) -> list[str]:
    """Violations in one mapping: unknown and missing keys, kinds, rules, then relations."""
    hints = typing.get_type_hints(schema)
    known = {f.name: f for f in fields(schema)}
    problems = [f"unknown key '{prefix}{key}'; valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: "
                f"{', '.join(known)}" for key in section if key not in known]
    for name, spec in known.items():
        if name not in section:
            if spec.default is dataclasses.MISSING:
                problems.append(f"missing key '{prefix}{name}'")
            continue
        problems += _check_value(section[name], hints[name], f"{prefix}{name}", spec.metadata.get("tag"),
                                 spec.metadata)
    relations = getattr(schema, "relations", None)
    if relations is not None and not problems:  # relations read values the checks above vouch for
        problems += relations(section)
    return problems


def _check_value(value: Any, hint: Any, key: str, tag: str | None = None,
                 metadata: Mapping[str, Any] = {}) -> list[str]:
    members = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
    nullable = type(None) in members
    members = tuple(m for m in members if m is not type(None))
    allowed = metadata.get("allowed") or _kind_name(members[0]) + (" or null" if nullable else "")
    if value is None:
        return [] if nullable else [f"{key} must be {allowed}; got null"]
    if dataclasses.is_dataclass(members[0]):
        if not isinstance(value, dict):
            return [f"{key} must be a mapping; got {value!r}"]
        if len(members) == 1:
            return _check(value, members[0], f"{key}.")
        by_tag = {choice: m for m in members for choice in typing.get_args(typing.get_type_hints(m)[tag])}
        if value.get(tag) not in by_tag:
            return [f"{key}.{tag} must be one of {', '.join(map(str, by_tag))}; got {value.get(tag)!r}"]
        return _check(value, by_tag[value[tag]], f"{key}.")
    if not _is_kind(value, members[0]) or not metadata.get("check", lambda v: True)(value):
        return [f"{key} must be {allowed}; got {_show(value)}"]
    return []


def _is_kind(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_is_kind(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint)


def _kind_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if typing.get_origin(hint) is list:
        return "a list of " + {float: "numbers", int: "integers"}.get(typing.get_args(hint)[0], "values")
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(hint, "a mapping")


def _show(value: Any) -> str:
    return {True: "true", False: "false"}.get(value, repr(value)) if isinstance(value, bool) else repr(value)
