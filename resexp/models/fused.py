"""K CIFAR nets of one architecture fused into one network (horizontal fusion, as HFTA and
Packed-Ensembles do): member k's channels are the k-th of K equal slices of every layer's.

Each conv becomes one grouped conv (groups=K) and each BatchNorm one BatchNorm over K×C channels:
BatchNorm's statistics are per channel, so every member's are taken over its own images, and its
running statistics are its own. The option-A shortcut pads each member's channels; the classifier
is one batched matrix product. Member k's image b enters as channels 3k..3k+2 of input image b,
and its logits come out as column k of (batch, K, classes). The members share no parameter, so
each gets the gradient it would get alone.

`fuse` builds the fused net from K ordinary ones (their own seeds, their own init); `member_state`
hands member k back as an ordinary model's state dict.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from resexp.errors import ConfigError
from resexp.models.cifar_resnet import CifarResNet, SplitBatchNorm2d, ZeroPadShortcut


class FusedZeroPadShortcut(nn.Module):
    """Option A for K members at once: subsample, then pad each member's channels as its own
    ZeroPadShortcut would."""

    def __init__(self, members: int, shortcut: ZeroPadShortcut) -> None:
        super().__init__()
        self.members = members
        self.shortcut = shortcut  # one member's, applied to each member's slice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        per_member = x.reshape(batch * self.members, channels // self.members, height, width)
        padded = self.shortcut(per_member)
        return padded.reshape(batch, -1, *padded.shape[2:])


class FusedLinear(nn.Module):
    """K Linear classifiers on K feature slices: (batch, K*C) -> (batch, K, classes)."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([linear.weight.detach() for linear in linears]))  # (K, out, in)
        self.bias = nn.Parameter(torch.stack([linear.bias.detach() for linear in linears]))  # (K, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x.reshape(len(x), len(self.weight), -1)  # (batch, K, in)
        return torch.einsum("bki,koi->bko", features, self.weight) + self.bias


def fused_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    first = convs[0]
    members = len(convs)
    conv = nn.Conv2d(first.in_channels * members, first.out_channels * members, first.kernel_size,
                     first.stride, first.padding, groups=members, bias=first.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([c.weight for c in convs]))
        if first.bias is not None:
            conv.bias.copy_(torch.cat([c.bias for c in convs]))
    return conv.to(first.weight.device)


def fused_batch_norm(norms: list[SplitBatchNorm2d]) -> SplitBatchNorm2d:
    first = norms[0]
    norm = SplitBatchNorm2d(first.num_features * len(norms), first.group_size).to(first.weight.device)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(norm, name).copy_(torch.cat([getattr(n, name) for n in norms]))
        norm.num_batches_tracked.copy_(first.num_batches_tracked)
    return norm


def fuse(models: list[CifarResNet]) -> CifarResNet:
    """One CifarResNet whose every layer holds the K members' layers side by side (see the module
    docstring); the members are left as they were."""
    if not models or not all(isinstance(m, CifarResNet) for m in models):
        raise ConfigError("fusing is for the CIFAR ResNets and their plain twins (model.arch=cifar_resnet)")
    members = len(models)
    fused = copy.deepcopy(models[0])
    named = [dict(m.named_modules()) for m in models]
    for name, module in list(fused.named_modules()):
        if isinstance(module, nn.Conv2d):
            replacement: nn.Module = fused_conv([n[name] for n in named])
        elif isinstance(module, SplitBatchNorm2d):
            replacement = fused_batch_norm([n[name] for n in named])
        elif isinstance(module, ZeroPadShortcut):
            replacement = FusedZeroPadShortcut(members, copy.deepcopy(module))
        elif isinstance(module, nn.Linear):
            replacement = FusedLinear([n[name] for n in named])
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(fused.get_submodule(parent_name) if parent_name else fused, child, replacement)
    return fused


def member_state(fused: CifarResNet, member: int, members: int, like: nn.Module) -> dict[str, torch.Tensor]:
    """Member `member`'s weights and BN buffers as the state dict of `like` (an ordinary model of
    the same config): every fused tensor is its members' tensors laid end to end."""
    shapes = {name: tensor.shape for name, tensor in like.state_dict().items()}
    state = {}
    for name, tensor in fused.state_dict().items():
        if tensor.ndim == 0:  # num_batches_tracked: every member's count is the same
            state[name] = tensor.clone()
        else:
            state[name] = tensor.reshape(members, *shapes[name])[member].clone()
    return state


def member_of_rows(tensor: torch.Tensor, members: int) -> torch.Tensor:
    """Which member each row (index along dim 0) of a fused parameter belongs to: members lie end
    to end along dim 0 (a conv's output channels, a BN's channels, the classifiers' stack)."""
    return torch.arange(members, device=tensor.device).repeat_interleave(tensor.shape[0] // members)


def member_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy over its batch: logits (batch, K, classes), labels (batch, K) -> (K,)."""
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(0)
