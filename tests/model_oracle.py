"""The tests' oracle for resexp.model_size: a model's size counted on the built nn.Module, its
parameters enumerated and its MACs hooked from a forward pass, so the shape arithmetic of
model_size is checked against what torch actually builds and runs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from resexp.models.vit import Attention


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BN affine weights included, BN running stats not)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> int:
    """Forward multiply-accumulates per image of the conv and linear layers, plus a ViT
    attention's two activation products, Q·Kᵀ and softmax·V (tokens² · dim each per sample; its
    projections are Linear layers). BN, ReLU, softmax, norms, GELU, pooling and the residual
    additions are ignored, as model_size ignores them. Divided by the batch of input_shape.
    Leaves the model in eval mode (which keeps the forward from moving BN's running statistics)."""
    macs = 0

    def count_conv(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        kernel_h, kernel_w = module.kernel_size
        macs += output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w

    def count_linear(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        # output.numel() = samples (and tokens) * out_features.
        macs += output.numel() * module.in_features

    def count_attention(_module: Attention, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        batch, tokens, dim = output.shape
        macs += 2 * batch * tokens * tokens * dim

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(count_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(count_linear))
        elif isinstance(module, Attention):
            handles.append(module.register_forward_hook(count_attention))
    with torch.no_grad():
        model.eval()(torch.zeros(*input_shape))
    for handle in handles:
        handle.remove()
    return macs // input_shape[0]
