"""build_model(cfg): one entry point from a model config to an nn.Module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from resexp.model_config import ModelConfig
from resexp.models.cifar_resnet import CifarResNet
from resexp.models.vgg import VGG
from resexp.models.vit import ViT
from resexp.sections import check

__all__ = ["build_model"]

# One class per model.arch; resexp.model_config states each one's config keys (CifarResNetModel, ...).
ARCHS: dict[str, type[nn.Module]] = {"cifar_resnet": CifarResNet, "vgg": VGG, "vit": ViT}


def build_model(
    cfg: Mapping[str, Any] | str, in_channels: int = 3, num_classes: int = 10
) -> nn.Module:
    """Build the model a config describes; cfg may also name a config, e.g. "resnet56". Its check
    (resexp.model_config's sections) gives the constructor's arguments, so a hand-made config that
    it refuses is a one-line ConfigError, as in a composed run config."""
    if isinstance(cfg, str):
        # Lazy: the config module pulls in Hydra, which building from a mapping does not need.
        from resexp.config import load_model_config

        cfg = load_model_config(cfg)
    kwargs = check(cfg, ModelConfig, "model")
    arch = kwargs.pop("arch")
    del kwargs["name"]
    return ARCHS[arch](**kwargs, in_channels=in_channels, num_classes=num_classes)
