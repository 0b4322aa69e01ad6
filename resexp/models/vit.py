"""A ViT-style classifier for 32x32 inputs, for comparing Transformer norm placements.

Every placement shares one Block class; `residual_step` alone holds the placement rules, so
the model, the probes and the single-block view (resexp block) cannot drift apart. The rules,
for the residual stream x and a sublayer G (attention or MLP):

    post      x <- LN(x + G(x))
    pre       x <- x + G(LN(x))
    sandwich  x <- x + LN_out(G(LN_in(x)))
    deepnorm  x <- LN(alpha*x + G(x)),  alpha = (2N)^(1/4), N = number of blocks
    rezero    x <- x + a*G(x),  a a learnable scalar initialised to 0, no norm
    none      x <- x + G(x),  no norm

residual=false drops the skip term (post becomes LN(G(x)), the plain twin).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resexp.errors import ConfigError
from resexp.schema import PLACEMENTS

# Where each placement puts its norms: before G (norm_in) and after G or the sum (norm_out).
NORM_IN_PLACEMENTS = ("pre", "sandwich")
NORM_OUT_PLACEMENTS = ("post", "sandwich", "deepnorm")
# Placements whose stream reaches the head un-normalised, so the head gets a final norm.
FINAL_NORM_PLACEMENTS = ("pre", "sandwich")
# Keys residual_step adds to `record` besides the named steps: the two terms of the sum.
SKIP, UPDATE = "skip", "update"


def deepnorm_alpha(n: int) -> float:
    """DeepNet's encoder skip scale for N layers: (2N)^(1/4)."""
    return (2 * n) ** 0.25


def deepnorm_beta(n: int) -> float:
    """DeepNet's encoder init gain for N layers: (8N)^(-1/4)."""
    return (8 * n) ** -0.25


def mean_token_norm(x: torch.Tensor) -> torch.Tensor:
    """Mean over batch and tokens of the per-token L2 norm (last dim), as a detached float."""
    return torch.linalg.vector_norm(x.detach().float(), dim=-1).mean()


def residual_step(
    x: torch.Tensor,
    sublayer: nn.Module,
    placement: str,
    residual: bool = True,
    norm_in: nn.Module | None = None,
    norm_out: nn.Module | None = None,
    alpha: float = 1.0,
    gate: torch.Tensor | None = None,
    record: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Apply one sublayer to the stream x under a placement's rule (see the module docstring).

    norm_in is the norm before G (pre, sandwich); norm_out the one after G (sandwich) or after
    the sum (post, deepnorm). alpha scales the skip term (deepnorm); gate is ReZero's scalar a.
    When record is a dict it receives every intermediate, detached, named in computation
    order ("input x", "LN(x)", "G(...)", ...), plus SKIP and UPDATE: the two terms the sum adds.
    """
    if placement not in PLACEMENTS:
        raise ConfigError(f"norm placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}")

    def keep(name: str, value: torch.Tensor) -> None:
        if record is not None:
            record[name] = value.detach()

    keep("input x", x)
    sublayer_input = x
    if placement in NORM_IN_PLACEMENTS:
        sublayer_input = norm_in(x)
        keep("LN(x)", sublayer_input)
    update = sublayer(sublayer_input)
    keep("G(...)", update)
    if placement == "sandwich":
        update = norm_out(update)
        keep("LN_out(G)", update)
    elif placement == "rezero":
        update = gate * update
        keep("a·G(x)", update)
    if residual:
        skip = alpha * x if placement == "deepnorm" else x
        out = skip + update
        keep("α·x + G(x)" if placement == "deepnorm" else "sum", out)
    else:
        # No skip term: the relative update is measured against the sublayer's input x.
        skip = x
        out = update
    if placement in ("post", "deepnorm"):
        out = norm_out(out)
        keep("LN(sum)" if residual else "LN(G)", out)
    keep(SKIP, skip)
    keep(UPDATE, update)
    return out


def make_norm(norm: str, dim: int) -> nn.Module:
    return {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}[norm](dim)  # model.norm (resexp.schema.ViTModel)


class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v and out projections (DeepNorm scales
    v and out, not q and k, so they cannot share one fused matrix)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape

        def split_heads(z: torch.Tensor) -> torch.Tensor:
            return z.view(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

        mixed = F.scaled_dot_product_attention(
            split_heads(self.q(x)), split_heads(self.k(x)), split_heads(self.v(x))
        )
        return self.out(mixed.transpose(1, 2).reshape(batch, tokens, dim))

    def matmul_macs(self, output: torch.Tensor) -> int:
        """MACs of the two activation products, Q·Kᵀ and softmax·V: tokens² · dim each per
        sample. count_macs adds them; the projections are counted as Linear layers."""
        batch, tokens, dim = output.shape
        return 2 * batch * tokens * tokens * dim

    def extra_repr(self) -> str:
        return f"heads={self.heads}"


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Attention then MLP, each applied by residual_step under the block's placement.

    With `recording` True, forward stores in `records` the detached mean per-token norms the
    probes need: "output" (the block's output stream) and, per sublayer ("attn", "mlp"),
    "<sublayer>.update" and "<sublayer>.skip" (the two terms of its residual sum).
    """

    SUBLAYERS = ("attn", "mlp")

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_hidden: int,
        placement: str,
        residual: bool,
        norm: str,
        depth: int,
    ) -> None:
        super().__init__()
        self.placement = placement
        self.residual = residual
        self.alpha = deepnorm_alpha(depth) if placement == "deepnorm" else 1.0
        self.attn = Attention(dim, heads)
        self.mlp = MLP(dim, mlp_hidden)
        self.norms_in = nn.ModuleDict(
            {name: make_norm(norm, dim) for name in self.SUBLAYERS}
            if placement in NORM_IN_PLACEMENTS else {}
        )  # fmt: skip
        self.norms_out = nn.ModuleDict(
            {name: make_norm(norm, dim) for name in self.SUBLAYERS}
            if placement in NORM_OUT_PLACEMENTS else {}
        )  # fmt: skip
        self.gates = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(())) for name in self.SUBLAYERS}
            if placement == "rezero" else {}
        )  # fmt: skip
        self.recording = False
        self.records: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        records = {}
        for name in self.SUBLAYERS:
            step_record: dict[str, torch.Tensor] | None = {} if self.recording else None
            x = residual_step(
                x,
                getattr(self, name),
                self.placement,
                self.residual,
                norm_in=self.norms_in[name] if name in self.norms_in else None,
                norm_out=self.norms_out[name] if name in self.norms_out else None,
                alpha=self.alpha,
                gate=self.gates[name] if name in self.gates else None,
                record=step_record,
            )
            if step_record is not None:
                records[f"{name}.update"] = mean_token_norm(step_record[UPDATE])
                records[f"{name}.skip"] = mean_token_norm(step_record[SKIP])
        if self.recording:
            records["output"] = mean_token_norm(x)
            self.records = records
        return x

    def sublayer_weights(self) -> list[nn.Parameter]:
        """The weight matrices of attention (q, k, v, out) and the MLP (fc1, fc2)."""
        attn, mlp = self.attn, self.mlp
        return [attn.q.weight, attn.k.weight, attn.v.weight, attn.out.weight,
                mlp.fc1.weight, mlp.fc2.weight]  # fmt: skip

    def extra_repr(self) -> str:
        return f"placement={self.placement}, residual={self.residual}, alpha={self.alpha:.4g}"


class ViT(nn.Module):
    """Patch embedding, position embedding, `depth` Blocks, a final norm for pre/sandwich,
    cls-token or mean pooling, Linear head. No dropout."""

    def __init__(
        self,
        depth: int,
        dim: int,
        heads: int,
        mlp_ratio: float,
        patch_size: int,
        pool: str,
        norm_placement: str,
        residual: bool,
        norm: str,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.norm_placement = norm_placement
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        tokens = (image_size // patch_size) ** 2 + (pool == "cls")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        mlp_hidden = round(mlp_ratio * dim)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_hidden, norm_placement, residual, norm, depth) for _ in range(depth)
        )
        self.final_norm = make_norm(norm, dim) if norm_placement in FINAL_NORM_PLACEMENTS else None
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's ViT init (trunc-normal 0.02 Linear weights, zero biases, unit norms; the patch
        conv keeps PyTorch's default); for deepnorm, DeepNet's Xavier-normal init of the blocks."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.norm_placement == "deepnorm":
            beta = deepnorm_beta(len(self.blocks))
            for block in self.blocks:
                gains = {block.attn.q: 1.0, block.attn.k: 1.0, block.attn.v: beta,
                         block.attn.out: beta, block.mlp.fc1: beta, block.mlp.fc2: beta}  # fmt: skip
                for linear, gain in gains.items():
                    nn.init.xavier_normal_(linear.weight, gain=gain)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (batch, patches, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        features = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        return self.head(features)
