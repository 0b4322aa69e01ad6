"""The memory a training step keeps on its device, counted the same way on CPU and GPU: so a CPU
tells how much GPU memory a model needs for an uncompiled step, at the least."""

from __future__ import annotations

import torch

from resexp.data import Data


def memory_estimate(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Data, autocast) -> dict[str, float]:
    """GiB an eager training step keeps on its device, the same on CPU and GPU: the activations
    saved for the backward of one batch and the data splits, counted tensor by tensor, and the
    weights with their gradients and optimizer state, from the parameter sizes. A lower bound on
    an uncompiled step's GPU peak: the allocator's caching and cuDNN workspaces come on top; a
    compiled step may save less."""
    weights = [p for p in model.parameters() if p.requires_grad]
    weight_bytes = sum(p.numel() * p.element_size() for p in weights)
    # state tensors per weight: SGD keeps a momentum buffer, Adam(W) two moments
    states = {"SGD": 1 if optimizer.defaults.get("momentum") else 0, "AdamW": 2}.get(type(optimizer).__name__, 2)
    batcher = data.train
    data_bytes = sum(t.numel() * t.element_size() for t in (batcher.images, batcher.padded, batcher.labels,
                                                            data.eval_images, data.eval_labels))
    images, _ = batcher.next()
    parts = {
        "activations": saved_activation_bytes(model, images, autocast),
        "weights_grads_optimizer": weight_bytes * (2 + states),
        "data": data_bytes,
    }
    if getattr(model, "recompute_segment", 0):
        parts["recomputed_segment"] = recomputed_segment_bytes(model, images, autocast)
    gib = {name: round(n / 2**30, 3) for name, n in parts.items()}
    return {**gib, "total": round(sum(parts.values()) / 2**30, 3)}


def recomputed_segment_bytes(model: torch.nn.Module, images: torch.Tensor, autocast) -> int:
    """With trainer.recompute_blocks: what the largest segment keeps while the backward
    recomputes it, on top of the segment inputs kept from the forward."""
    inputs: list[torch.Tensor] = []
    hooks = [stage.register_forward_pre_hook(lambda _, args: inputs.append(args[0].detach()))
             for stage in model.stages]
    try:
        with torch.no_grad(), autocast:
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return max(saved_activation_bytes(stage[:model.recompute_segment], x.requires_grad_(), autocast)
               for stage, x in zip(model.stages, inputs))


def saved_activation_bytes(model: torch.nn.Module, images: torch.Tensor, autocast) -> int:
    """Bytes autograd keeps from one forward for the backward, the parameters themselves not
    counted; tensors sharing storage (an in-place ReLU's input and output) count once."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    # storages, not tensors, are kept (so none is freed and its address reused while counting):
    # autograd keeps these hooks with the graph, and a tensor held here would hold its own graph
    # (a cycle no one frees), whose AccumulateGrad nodes, made on this stream, broke a later
    # CUDA-graph capture of the training step (seen on an H100)
    saved: dict[int, torch.UntypedStorage] = {}

    def pack(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage

    with torch.autograd.graph.saved_tensors_hooks(pack, _no_backward), autocast:
        model(images)
    return sum(storage.nbytes() for storage in saved.values())


def _no_backward(_) -> torch.Tensor:
    raise RuntimeError("saved_activation_bytes counts a forward's saved tensors; its graph has no backward")
