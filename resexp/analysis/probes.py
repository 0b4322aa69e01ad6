"""Per-block probes of the residual stream and gradients, for Transformers and the CIFAR CNNs.

They work on any model with a `blocks` ModuleList of resexp.models.vit.Block, or with `stages`
of resexp.models.cifar_resnet.BasicBlock (plain or residual), and return tensors on the
model's device without a host sync, so a trainer can log them every k iterations and move them
to the host once.
"""

from __future__ import annotations

import torch
from torch import nn

from resexp.errors import ResexpError
from resexp.models.cifar_resnet import BasicBlock
from resexp.models.vit import Block


def supports_probes(model: nn.Module) -> bool:
    """Whether the model has the Transformer blocks or CNN blocks the probes read."""
    blocks = getattr(model, "blocks", None)
    transformer = isinstance(blocks, nn.ModuleList) and len(blocks) > 0 and all(isinstance(b, Block) for b in blocks)
    return transformer or bool(cnn_blocks(model))


def cnn_blocks(model: nn.Module) -> list[BasicBlock]:
    """The BasicBlocks of a cifar_resnet model in network order; [] for any other model."""
    stages = getattr(model, "stages", None)
    blocks = [block for stage in stages for block in stage] if isinstance(stages, nn.Sequential) else []
    return blocks if blocks and all(isinstance(b, BasicBlock) for b in blocks) else []


def _blocks(model: nn.Module) -> list[Block]:
    if not supports_probes(model):
        raise ResexpError(
            f"{type(model).__name__} has no blocks to probe (the vit and cifar_resnet archs have)"
        )
    return list(model.blocks)


def stream_probes(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Residual-stream probes per block, from one no-grad eval-mode forward of `images`.

    stream_norm: mean over batch and tokens of the per-token L2 norm of each block's output.
    rel_update: per block, the mean over its two sublayers of ‖update‖/‖skip term‖, each the
    mean per-token norm (see Block and residual_step for what the terms are per placement).
    Both are float tensors of shape (depth,) on the model's device.
    """
    if cnn_blocks(model):
        return cnn_stream_probes(model, images)
    blocks = _blocks(model)
    # Per-module modes, so a model with some submodules in another mode comes back unchanged.
    modes = {module: module.training for module in model.modules()}
    model.eval()
    for block in blocks:
        block.recording = True
    try:
        with torch.no_grad():
            model(images)
        records = [block.records for block in blocks]
    finally:
        for block in blocks:
            block.recording = False
            block.records = {}
        for module, training in modes.items():
            module.training = training
    rel_updates = [
        torch.stack([r[f"{name}.update"] / r[f"{name}.skip"] for name in Block.SUBLAYERS]).mean()
        for r in records
    ]
    return {
        "stream_norm": torch.stack([r["output"] for r in records]),
        "rel_update": torch.stack(rel_updates),
    }


def cnn_stream_probes(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The CNN form of stream_probes, from one no-grad eval-mode forward: stream_norm, the mean
    per-image L2 norm of each block's output; for residual nets also rel_update, per block the
    mean per-image ‖F(x)‖ / ‖shortcut(x)‖ (the residual branch against what it is added to)."""
    blocks = cnn_blocks(model)
    residual = all(block.shortcut is not None for block in blocks)
    norms: dict[tuple[int, str], torch.Tensor] = {}

    def record(index: int, what: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            norms[index, what] = torch.linalg.vector_norm(output.flatten(1).float(), dim=1).mean()
        return hook

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_hook(record(i, "output")))
        if residual:
            handles += [block.bn2.register_forward_hook(record(i, "update")),
                        block.shortcut.register_forward_hook(record(i, "skip"))]
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    probes = {"stream_norm": torch.stack([norms[i, "output"] for i in range(len(blocks))])}
    if residual:
        probes["rel_update"] = torch.stack([norms[i, "update"] / norms[i, "skip"] for i in range(len(blocks))])
    return probes


def block_grad_norms(model: nn.Module) -> torch.Tensor:
    """Per block, the L2 norm of the gradients of its weight matrices together (a Transformer
    block's attention q, k, v, out and MLP fc1, fc2; a CNN block's convolutions, the option-B
    projection included): shape (depth,), on the model's device.

    Call after a backward; weights without a gradient count as zero.
    """
    if cnn_blocks(model):
        weights = [[m.weight for m in block.modules() if isinstance(m, nn.Conv2d)] for block in cnn_blocks(model)]
    else:
        weights = [block.sublayer_weights() for block in _blocks(model)]
    device = next(model.parameters()).device
    norms = []
    for block_weights in weights:
        grads = [w.grad for w in block_weights if w.grad is not None]
        if grads:
            per_matrix = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            norms.append(torch.linalg.vector_norm(per_matrix))
        else:
            norms.append(torch.zeros((), device=device))
    return torch.stack(norms)
