"""Per-block probes of the residual stream and gradients, for Transformers and the CIFAR CNNs.

They work on any model with a `blocks` ModuleList of resexp.models.vit.Block, or with `stages`
of resexp.models.cifar_resnet.BasicBlock (plain or residual), and return tensors on the
model's device without a host sync, so a trainer can log them every k iterations and move them
to the host once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from resexp.engine.step import TrainStep
from resexp.errors import ResexpError
from resexp.model_config import SUBLAYERS
from resexp.models.cifar_resnet import BasicBlock, ZeroPadShortcut
from resexp.models.modes import in_mode
from resexp.models.surgery import blocks_of, lesioned
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


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over the vectors along the last dim of arccos(cos_sim(a, b)) / pi, in [0, 1]: 0 for
    the same direction, 1/2 for orthogonal vectors (or a zero vector), 1 for opposite ones.

    Computed as 2 atan2(‖u - v‖, ‖u + v‖) / pi with u, v the unit vectors (the same angle,
    Kahan's form): exact where arccos of a rounded cosine is not, so a block whose output equals
    its input gives exactly 0. A detached float scalar.
    """
    a, b = a.detach().float(), b.detach().float()
    tiny = torch.finfo(torch.float32).tiny
    u = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp_min(tiny)
    v = b / torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp_min(tiny)
    angle = 2 * torch.atan2(torch.linalg.vector_norm(u - v, dim=-1), torch.linalg.vector_norm(u + v, dim=-1))
    return (angle / math.pi).mean()


def stream_probes(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Residual-stream probes per block, from one no-grad eval-mode forward of `images`.

    stream_norm: mean over batch and tokens of the per-token L2 norm of each block's output.
    rel_update: per block, the mean over its two sublayers of ‖update‖/‖skip term‖, each the
    mean per-token norm (see Block and residual_step for what the terms are per placement).
    angular_distance: per block, the mean over batch and tokens of the angle between the
    block's input and output token vectors, arccos(cos_sim) / pi (see angular_distance).
    All are float tensors of shape (depth,) on the model's device.
    """
    if cnn_blocks(model):
        return cnn_stream_probes(model, images)
    blocks = _blocks(model)
    angles: dict[int, torch.Tensor] = {}

    def record_angle(index: int):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            angles[index] = angular_distance(inputs[0], output)
        return hook

    handles = [block.register_forward_hook(record_angle(i)) for i, block in enumerate(blocks)]
    for block in blocks:
        block.recording = True
    try:
        with in_mode(model), torch.no_grad():
            model(images)
        records = [block.records for block in blocks]
    finally:
        for handle in handles:
            handle.remove()
        for block in blocks:
            block.recording = False
            block.records = {}
    rel_updates = [
        torch.stack([r[f"{name}.update"] / r[f"{name}.skip"] for name in SUBLAYERS]).mean()
        for r in records
    ]
    return {
        "stream_norm": torch.stack([r["output"] for r in records]),
        "rel_update": torch.stack(rel_updates),
        "angular_distance": torch.stack([angles[i] for i in range(len(blocks))]),
    }


def cnn_stream_probes(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The CNN form of stream_probes, from one no-grad eval-mode forward: stream_norm, the mean
    per-image L2 norm of each block's output; angular_distance, per block the mean per-image
    arccos(cos_sim(x, block(x))) / pi of the flattened input and output (at a downsampling block
    the input is first carried to the output's shape by option A's parameter-free subsampling and
    zero channels, which leave the cosine of what remains unchanged); for residual nets also
    rel_update, per block the mean per-image ‖F(x)‖ / ‖shortcut(x)‖ (the residual branch against
    what it is added to)."""
    blocks = cnn_blocks(model)
    residual = all(block.shortcut is not None for block in blocks)
    norms: dict[tuple[int, str], torch.Tensor] = {}

    def record(index: int, what: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            norms[index, what] = torch.linalg.vector_norm(output.flatten(1).float(), dim=1).mean()
        return hook

    def record_angle(index: int):
        def hook(module: BasicBlock, inputs, output: torch.Tensor) -> None:
            x = inputs[0]
            if x.shape != output.shape:
                carry = module.shortcut if isinstance(module.shortcut, ZeroPadShortcut) else \
                    ZeroPadShortcut(module.conv2.out_channels, module.conv1.stride[0])
                x = carry(x)
            norms[index, "angle"] = angular_distance(x.flatten(1), output.flatten(1))
        return hook

    handles = []
    for i, block in enumerate(blocks):
        handles += [block.register_forward_hook(record(i, "output")), block.register_forward_hook(record_angle(i))]
        if residual:
            handles += [block.bn2.register_forward_hook(record(i, "update")),
                        block.shortcut.register_forward_hook(record(i, "skip"))]
    try:
        with in_mode(model), torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    probes = {"stream_norm": torch.stack([norms[i, "output"] for i in range(len(blocks))]),
              "angular_distance": torch.stack([norms[i, "angle"] for i in range(len(blocks))])}
    if residual:
        probes["rel_update"] = torch.stack([norms[i, "update"] / norms[i, "skip"] for i in range(len(blocks))])
    return probes


def skip_loss_delta(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per block, the mean cross-entropy of `images` with that block skipped minus the mean
    cross-entropy with nothing skipped: shape (depth,), on the model's device.

    Skipped: a Transformer block becomes the identity; a CNN block becomes its shortcut alone,
    resexp.models.surgery's ShortcutOnly (identity, or at a downsampling block the option-A
    subsampling and zero channels, or option B's projection; a plain net gets the parameter-free
    path). depth + 1 no-grad eval-mode forwards; the model's blocks and modes are restored.
    """

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(images).float(), labels)

    with in_mode(model), torch.no_grad():
        base = loss()
        skipped = []
        if cnn_blocks(model):
            for block in blocks_of(model):
                with lesioned(model, deleted=[block]):
                    skipped.append(loss())
        else:
            blocks = model.blocks
            for i, block in enumerate(_blocks(model)):
                blocks[i] = nn.Identity()
                try:
                    skipped.append(loss())
                finally:
                    blocks[i] = block
    return torch.stack(skipped) - base


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


def log_probes(writer: SummaryWriter, step: TrainStep, iteration: int, probe_batch: list[torch.Tensor],
               images: torch.Tensor, labels: torch.Tensor) -> None:
    """Per-block gradient norm, the stream probes (residual-stream norm, relative update,
    angular distance) and the loss change when the block is skipped, at this iteration's weights
    (step 0 = initialisation), between the step's backward and its update. A host sync, an
    eager step and depth + 2 forwards, so only every trainer.probe_every steps. A copy of the
    batch is kept in `probe_batch` (keep_batch)."""
    if step.scaler.is_enabled():
        step.scaler.unscale_(step.optimizer)  # fp16: measure the true gradients, not the scaled ones
    keep_batch(probe_batch, images, labels)
    probes = {"grad_norm": block_grad_norms(step.model), **stream_probes(step.model, images),
              "skip_loss_delta": skip_loss_delta(step.model, images, labels)}
    _write_probes(writer, probes, iteration)


def keep_batch(probe_batch: list[torch.Tensor], images: torch.Tensor, labels: torch.Tensor) -> None:
    """A copy of a step's batch in `probe_batch` (the batcher's buffers are reused)."""
    probe_batch[:] = [images.clone(), labels.clone()]


def log_final_probes(writer: SummaryWriter, model: torch.nn.Module, iteration: int, images: torch.Tensor,
                     labels: torch.Tensor) -> None:
    """At the end of the run, after its last evaluation: skip_loss_delta of the trained model on
    the last training step's batch. Only it: the other probes stay at probe steps, which the
    norms report reads as "the last probe step"."""
    _write_probes(writer, {"skip_loss_delta": skip_loss_delta(model, images, labels)}, iteration)


def _write_probes(writer: SummaryWriter, probes: dict[str, torch.Tensor], iteration: int) -> None:
    for name, values in probes.items():
        for block, value in enumerate(values.tolist()):
            writer.add_scalar(f"probe/{name}/block_{block:03d}", value, iteration)
