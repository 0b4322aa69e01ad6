"""Model size and cost: trainable parameters and forward multiply-accumulates per image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BN affine weights included, BN running stats not)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> int:
    """Forward multiply-accumulates per image of the conv and linear layers.

    BN, ReLU, pooling and the residual additions are ignored, as in the usual published counts
    (ResNet-20 40.55M). The classifier's in*out MACs are included: 640 for a 10-way ResNet, so
    the published values are met with or without it. Modules with a `matmul_macs(output)`
    method add the products of activations they compute without weights (a ViT's attention:
    Q·Kᵀ and softmax·V); softmax, norms and GELU are ignored. Divided by the batch of input_shape.
    """
    macs = 0

    def count_conv(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        kernel_h, kernel_w = module.kernel_size
        macs += output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w

    def count_linear(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        # output.numel() = samples (and tokens) * out_features.
        macs += output.numel() * module.in_features

    def count_matmuls(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        macs += module.matmul_macs(output)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(count_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(count_linear))
        elif hasattr(module, "matmul_macs"):
            handles.append(module.register_forward_hook(count_matmuls))
    # Per-module modes, so a model with some submodules frozen in eval comes back unchanged.
    modes = {module: module.training for module in model.modules()}
    # Eval mode so counting does not move the BN running statistics.
    model.eval()
    try:
        # Match the model's device and dtype so a GPU or bf16 model can be counted in place.
        parameter = next(model.parameters(), None)
        like = parameter if parameter is not None else torch.empty(0)
        with torch.no_grad():
            model(torch.zeros(*input_shape, device=like.device, dtype=like.dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return macs // input_shape[0]
