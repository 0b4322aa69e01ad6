"""Per-block probes of a Transformer's residual stream and gradients.

They work on any model with a `blocks` ModuleList of resexp.models.vit.Block, and return
tensors on the model's device without a host sync, so a trainer can log them every k
iterations and move them to the host once.
"""

from __future__ import annotations

import torch
from torch import nn

from resexp.errors import ResexpError
from resexp.models.vit import Block


def supports_probes(model: nn.Module) -> bool:
    """Whether the model has the `blocks` of Blocks the probes read."""
    blocks = getattr(model, "blocks", None)
    return isinstance(blocks, nn.ModuleList) and len(blocks) > 0 and all(isinstance(b, Block) for b in blocks)


def _blocks(model: nn.Module) -> list[Block]:
    if not supports_probes(model):
        raise ResexpError(
            f"{type(model).__name__} has no Transformer blocks to probe (only the vit arch has)"
        )
    return list(model.blocks)


def stream_probes(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Residual-stream probes per block, from one no-grad eval-mode forward of `images`.

    stream_norm: mean over batch and tokens of the per-token L2 norm of each block's output.
    rel_update: per block, the mean over its two sublayers of ‖update‖/‖skip term‖, each the
    mean per-token norm (see Block and residual_step for what the terms are per placement).
    Both are float tensors of shape (depth,) on the model's device.
    """
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


def block_grad_norms(model: nn.Module) -> torch.Tensor:
    """Per block, the L2 norm of the gradients of its sublayer weight matrices together
    (attention q, k, v, out and MLP fc1, fc2): shape (depth,), on the model's device.

    Call after a backward; weights without a gradient count as zero.
    """
    blocks = _blocks(model)
    device = blocks[0].attn.q.weight.device
    norms = []
    for block in blocks:
        grads = [w.grad for w in block.sublayer_weights() if w.grad is not None]
        if grads:
            per_matrix = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            norms.append(torch.linalg.vector_norm(per_matrix))
        else:
            norms.append(torch.zeros((), device=device))
    return torch.stack(norms)
