"""build_model(cfg): one entry point from a model config to an nn.Module."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from resexp.errors import ConfigError
from resexp.models.cifar_resnet import CifarResNet
from resexp.models.complexity import count_macs, count_params
from resexp.models.vgg import VGG
from resexp.models.vit import ViT

__all__ = ["build_model", "count_macs", "count_params"]

# Keys every model config may carry that are not constructor arguments.
NON_MODEL_KEYS = frozenset({"arch", "name"})


def _checked_kwargs(cfg: Mapping[str, Any], arch: str, valid_keys: tuple[str, ...]) -> dict:
    """The arch's constructor arguments from cfg; unknown or missing keys are ConfigErrors."""
    given = set(cfg) - NON_MODEL_KEYS
    unknown = sorted(given - set(valid_keys))
    missing = [key for key in valid_keys if key not in given]
    if unknown or missing:
        problem = f"unknown {', '.join(unknown)}" if unknown else f"missing {', '.join(missing)}"
        raise ConfigError(
            f"model config for arch {arch} has {problem}; valid keys: {', '.join(valid_keys)}"
        )
    return {key: cfg[key] for key in valid_keys}


def _build_cifar_resnet(cfg: Mapping[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    kwargs = _checked_kwargs(cfg, "cifar_resnet", ("depth", "residual", "shortcut", "width"))
    return CifarResNet(**kwargs, in_channels=in_channels, num_classes=num_classes)


def _build_vgg(cfg: Mapping[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    kwargs = _checked_kwargs(cfg, "vgg", ("depth", "width"))
    return VGG(**kwargs, in_channels=in_channels, num_classes=num_classes)


def _build_vit(cfg: Mapping[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    kwargs = _checked_kwargs(
        cfg, "vit",
        ("depth", "dim", "heads", "mlp_ratio", "patch_size", "pool", "norm_placement", "residual", "norm"),
    )  # fmt: skip
    return ViT(**kwargs, in_channels=in_channels, num_classes=num_classes)


BUILDERS: dict[str, Callable[[Mapping[str, Any], int, int], nn.Module]] = {
    "cifar_resnet": _build_cifar_resnet,
    "vgg": _build_vgg,
    "vit": _build_vit,
}


def build_model(
    cfg: Mapping[str, Any] | str, in_channels: int = 3, num_classes: int = 10
) -> nn.Module:
    """Build the model a config describes; cfg may also name a config, e.g. "resnet56"."""
    if isinstance(cfg, str):
        # Lazy: the config module pulls in Hydra, which building from a mapping does not need.
        from resexp.config import load_model_config

        cfg = load_model_config(cfg)
    arch = cfg.get("arch")
    if arch not in BUILDERS:
        raise ConfigError(f"model.arch must be one of {', '.join(BUILDERS)}; got {arch!r}")
    return BUILDERS[arch](cfg, in_channels, num_classes)
