"""A model's size from its config alone: trainable parameters and forward multiply-accumulates
per image, counted from the shapes the model classes (resexp/models) build.

Apart from the models because it imports no torch: the commands that only state sizes (`resexp
models`, the longest-first order of `resexp sweep --dry-run`) would otherwise pay for importing
torch and building every model. What is counted:

- params: every trainable parameter, BN and norm affine parts included, BN running stats not.
- macs: per image, each conv and linear layer's output elements times its inputs per output
  (in_channels * kernel area, in_features), plus a ViT attention's two activation products,
  Q·Kᵀ and softmax·V, tokens² * dim each. BN, norms, activations, softmax, pooling and residual
  additions are ignored, as in the usual published counts (ResNet-20 40.55M); the classifier is
  included (640 MACs for a 10-way ResNet-20, within the published rounding).

tests/test_model_size.py holds these counts equal to hook-based ones on the built models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from resexp.model_config import (FINAL_NORM_RULES, IMAGE_SIZE, NORM_IN_RULES, NORM_OUT_RULES, POOL, STAGE_CHANNELS,
                                 SUBLAYERS, VGG_LAYERS, ModelConfig, base_rule, mix_post_layers, norm_kind,
                                 normalises_qkv, scaled_channels)
from resexp.sections import check


@dataclass(frozen=True)
class ModelSize:
    params: int  # trainable parameters
    macs: int  # forward multiply-accumulates per image

    def __add__(self, other: ModelSize) -> ModelSize:
        return ModelSize(self.params + other.params, self.macs + other.macs)

    def __mul__(self, times: int) -> ModelSize:
        return ModelSize(self.params * times, self.macs * times)

    __rmul__ = __mul__


def model_size(cfg: DictConfig | Mapping[str, Any], in_channels: int = 3, num_classes: int = 10) -> ModelSize:
    """The size of the model resexp.models.build_model(cfg, in_channels, num_classes) builds.
    cfg is checked as build_model checks it, so a config it refuses is the same one-line ConfigError."""
    model = check(cfg, ModelConfig, "model")
    return ARCH_SIZES[model["arch"]](model, in_channels, num_classes)


def conv(in_channels: int, out_channels: int, kernel: int, out_side: int, bias: bool = False) -> ModelSize:
    """A square conv whose output maps are out_side x out_side."""
    weights = in_channels * out_channels * kernel * kernel
    return ModelSize(weights + out_channels * bias, weights * out_side * out_side)


def linear(in_features: int, out_features: int, rows: int = 1) -> ModelSize:
    """A Linear with bias, applied to `rows` vectors per image (a ViT's tokens)."""
    return ModelSize(in_features * out_features + out_features, in_features * out_features * rows)


def batch_norm(channels: int) -> ModelSize:
    return ModelSize(2 * channels, 0)


def norm_params(kind: str, dim: int) -> int:
    """LayerNorm: weight and bias; RMSNorm: weight; DyT: weight, bias and its scalar alpha; Derf:
    weight, bias and its scalars alpha and shift."""
    return {"layernorm": 2 * dim, "rmsnorm": dim, "dyt": 2 * dim + 1, "derf": 2 * dim + 2}[kind]


def cifar_resnet_size(model: Mapping[str, Any], in_channels: int, num_classes: int) -> ModelSize:
    """resexp.models.cifar_resnet.CifarResNet; option A shortcuts and zero_pad add nothing."""
    channels = [scaled_channels(c, model["width"]) for c in STAGE_CHANNELS]
    side = IMAGE_SIZE
    size = conv(in_channels, channels[0], 3, side) + batch_norm(channels[0])
    stage_in = channels[0]
    for stage_index, stage_out in enumerate(channels):
        for block_index in range((model["depth"] - 2) // 6):
            stride = 2 if stage_index > 0 and block_index == 0 else 1
            side //= stride
            size += conv(stage_in, stage_out, 3, side) + batch_norm(stage_out)
            size += conv(stage_out, stage_out, 3, side) + batch_norm(stage_out)
            shape_changes = stride != 1 or stage_in != stage_out
            if model["residual"] and model["shortcut"] == "B" and shape_changes:
                size += conv(stage_in, stage_out, 1, side) + batch_norm(stage_out)
            stage_in = stage_out
    return size + linear(stage_in, num_classes)


def vgg_size(model: Mapping[str, Any], in_channels: int, num_classes: int) -> ModelSize:
    """resexp.models.vgg.VGG: conv (with bias) + BN per entry, each POOL halving the maps."""
    size, channels, side = ModelSize(0, 0), in_channels, IMAGE_SIZE
    for item in VGG_LAYERS[model["depth"]]:
        if item == POOL:
            side //= 2
            continue
        out_channels = scaled_channels(item, model["width"])
        size += conv(channels, out_channels, 3, side, bias=True) + batch_norm(out_channels)
        channels = out_channels
    return size + linear(channels, num_classes)


def vit_size(model: Mapping[str, Any], in_channels: int, num_classes: int) -> ModelSize:
    """resexp.models.vit.ViT; residual and deepnorm's alpha change no shape."""
    depth, dim, placement = model["depth"], model["dim"], model["norm_placement"]
    patch_size, cls = model["patch_size"], model["pool"] == "cls"
    side = IMAGE_SIZE // patch_size
    tokens = side * side + cls
    norm = norm_kind(placement, model["norm"])
    hidden = round(model["mlp_ratio"] * dim)
    # Patch embedding, then the position embedding and the cls token, which are added, not multiplied.
    size = conv(in_channels, dim, patch_size, side, bias=True) + ModelSize(tokens * dim + cls * dim, 0)
    post_layers = mix_post_layers(model["mix_ratio"], depth)
    rules = [base_rule(placement, layer, post_layers, sublayer)
             for layer in range(1, depth + 1) for sublayer in SUBLAYERS]
    head_norms = 3 if normalises_qkv(placement) else 2 if model["qk_norm"] else 0
    for _ in range(depth):
        size += 4 * linear(dim, dim, tokens)  # q, k, v and out projections
        size += ModelSize(0, 2 * tokens * tokens * dim)  # Q·Kᵀ and softmax·V, summed over the heads
        size += linear(dim, hidden, tokens) + linear(hidden, dim, tokens)
        size += ModelSize(head_norms * norm_params(norm, dim // model["heads"]), 0)
    for rule in rules:  # per sublayer (attention, MLP): its norms and, under rezero, its gate a
        norms = (rule in NORM_IN_RULES) + (rule in NORM_OUT_RULES)
        size += ModelSize(norms * norm_params(norm, dim) + (placement == "rezero"), 0)
    if any(rule in FINAL_NORM_RULES for rule in rules):
        size += ModelSize(norm_params(norm, dim), 0)
    return size + linear(dim, num_classes)


ARCH_SIZES: dict[str, Callable[[Mapping[str, Any], int, int], ModelSize]] = {
    "cifar_resnet": cifar_resnet_size, "vgg": vgg_size, "vit": vit_size,
}
