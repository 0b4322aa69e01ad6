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
    mix       Mix-LN: post in blocks l <= floor(mix_ratio * N), pre after (l is 1-based)
    lns       LayerNorm Scaling: x <- x + G(LN(x) / sqrt(l)) in block l
    dyt       pre with every LayerNorm, the final one too, replaced by
              DyT(x) = gamma * tanh(alpha * x) + beta (alpha one learnable scalar)
    peri      sandwich by another name: the same modules, so the same model for one seed
    derf      pre with every LayerNorm, the final one too, replaced by
              Derf(x) = gamma * erf(alpha * x + s) + beta (alpha, s learnable scalars, 0.5 and 0)
    hybrid    HybridNorm: attention x <- x + G(x) with each head's q, k and v normalised inside G;
              MLP x <- LN(x) + G(LN(x)) (the skip leaves from the normalised stream); final LN

residual=false drops the skip term (post becomes LN(G(x)), the plain twin). qk_norm=true adds,
under any placement, a norm (model.norm, DyT or Derf under dyt or derf) on each head's queries
and keys.

Sources: DyT, Zhu et al. 2025 (arXiv 2503.10622); Derf, Chen et al., "Stronger Normalization-Free
Transformers" (arXiv 2512.10938, CVPR 2026), rule and init from zlab-princeton/Derf,
ViT/dynamic_erf.py; HybridNorm, Zhuo et al. 2025 (arXiv 2503.04598), rule from
BryceZhuo/HybridNorm, dense_model/olmo/model.py (OLMoSequentialBlock.forward with the 1.2B
config's attn_norm false, q/k/v norms, ffn_norm and ffn_residual_after_norm true) and the final
LayerNorm OLMo applies before its head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from resexp.errors import ConfigError
from resexp.model_config import (DEFAULT_DYT_ALPHA, DEFAULT_MIX_RATIO, DEFAULT_QK_NORM, DERF_ALPHA_INIT,
                                 DERF_SHIFT_INIT, FINAL_NORM_RULES, IMAGE_SIZE, NORM_IN_RULES, NORM_OUT_RULES,
                                 PLACEMENTS, SUBLAYERS, Norm, Placement, Pool, base_rule, mix_post_layers,
                                 norm_kind, normalises_qkv)

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
    *,
    layer: int = 1,
    post_layers: int = 0,
    sublayer_name: str = "mlp",
) -> torch.Tensor:
    """Apply one sublayer to the stream x under a placement's rule (see the module docstring).

    norm_in is the norm before G (pre, sandwich, hybrid's MLP); norm_out the one after G
    (sandwich) or after the sum (post, deepnorm). alpha scales the skip term (deepnorm); gate is
    ReZero's scalar a. layer is the block's 1-based index (lns's 1/sqrt(layer)) and post_layers
    the number of leading Post-LN blocks under mix (mix_post_layers); the other placements ignore
    both. sublayer_name ("attn" or "mlp") matters to hybrid alone, whose two rules differ.
    When record is a dict it receives every intermediate, detached, named in computation
    order ("input x", "LN(x)", "G(...)", ...), plus SKIP and UPDATE: the two terms the sum adds.
    """
    if placement not in PLACEMENTS:
        raise ConfigError(f"norm placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}")

    def keep(name: str, value: torch.Tensor) -> None:
        if record is not None:
            record[name] = value.detach()

    rule = base_rule(placement, layer, post_layers, sublayer_name)
    keep("input x", x)
    sublayer_input = x
    if rule in NORM_IN_RULES:
        sublayer_input = norm_in(x)
        keep({"dyt": "DyT(x)", "derf": "Derf(x)"}.get(placement, "LN(x)"), sublayer_input)
        if placement == "lns":
            sublayer_input = sublayer_input / math.sqrt(layer)
            keep("LN(x)/√l", sublayer_input)
    update = sublayer(sublayer_input)
    keep("G(...)", update)
    if rule == "sandwich":
        update = norm_out(update)
        keep("LN_out(G)", update)
    elif rule == "rezero":
        update = gate * update
        keep("a·G(x)", update)
    if residual:
        skip = alpha * x if rule == "deepnorm" else sublayer_input if rule == "normed_skip" else x
        out = skip + update
        keep({"deepnorm": "α·x + G(x)", "normed_skip": "LN(x) + G(LN(x))"}.get(rule, "sum"), out)
    else:
        # No skip term: the relative update is measured against the sublayer's input x.
        skip = x
        out = update
    if rule in ("post", "deepnorm"):
        out = norm_out(out)
        keep("LN(sum)" if residual else "LN(G)", out)
    keep(SKIP, skip)
    keep(UPDATE, update)
    return out


class DyT(nn.Module):
    """Dynamic Tanh (Zhu et al. 2025), dyt's stand-in for LayerNorm: weight * tanh(alpha * x) + bias,
    weight (gamma) and bias (beta) per channel, initialised to 1 and 0; alpha one learnable scalar."""

    def __init__(self, dim: int, alpha: float = DEFAULT_DYT_ALPHA) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.tanh(self.alpha * x) + self.bias

    def extra_repr(self) -> str:
        return f"{len(self.weight)}, alpha_init={self.alpha.item():.4g}"


class Derf(nn.Module):
    """Dynamic erf (Chen et al. 2025), derf's stand-in for LayerNorm: weight * erf(alpha * x + shift)
    + bias, weight and bias per channel (1 and 0 at init), alpha and shift one learnable scalar each
    (DERF_ALPHA_INIT, DERF_SHIFT_INIT), as zlab-princeton/Derf's Dynamic_erf."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(DERF_ALPHA_INIT))
        self.shift = nn.Parameter(torch.tensor(DERF_SHIFT_INIT))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.erf(self.alpha * x + self.shift) + self.bias

    def extra_repr(self) -> str:
        return f"{len(self.weight)}, alpha_init={DERF_ALPHA_INIT}, shift_init={DERF_SHIFT_INIT}"


def make_norm(norm: str, dim: int, dyt_alpha: float = DEFAULT_DYT_ALPHA) -> nn.Module:
    """A norm over the last dim: model.norm (Norm: layernorm, rmsnorm), "dyt" or "derf"."""
    if norm == "dyt":
        return DyT(dim, dyt_alpha)
    if norm == "derf":
        return Derf(dim)
    return {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}[norm](dim)


class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v and out projections (DeepNorm scales
    v and out, not q and k, so they cannot share one fused matrix). q_norm and k_norm, when
    given, normalise each head's queries and keys over the head dim before the logits q·k;
    v_norm (HybridNorm) each head's values before they are mixed."""

    def __init__(self, dim: int, heads: int, q_norm: nn.Module | None = None,
                 k_norm: nn.Module | None = None, v_norm: nn.Module | None = None) -> None:  # fmt: skip
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.v_norm = v_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape

        def split_heads(z: torch.Tensor) -> torch.Tensor:
            return z.view(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

        queries, keys, values = split_heads(self.q(x)), split_heads(self.k(x)), split_heads(self.v(x))
        if self.q_norm is not None:
            queries, keys = self.q_norm(queries), self.k_norm(keys)
        if self.v_norm is not None:
            values = self.v_norm(values)
        mixed = F.scaled_dot_product_attention(queries, keys, values)
        return self.out(mixed.transpose(1, 2).reshape(batch, tokens, dim))

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
    """Attention then MLP, each applied by residual_step under the block's placement (`rules`:
    each sublayer's base rule); `layer` is its 1-based index in the model and post_layers
    Mix-LN's count of Post-LN blocks.

    With `recording` True, forward stores in `records` the detached mean per-token norms the
    probes need: "output" (the block's output stream) and, per sublayer ("attn", "mlp"),
    "<sublayer>.update" and "<sublayer>.skip" (the two terms of its residual sum).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_hidden: int,
        placement: str,
        residual: bool,
        norm: str,
        depth: int,
        layer: int = 1,
        post_layers: int = 0,
        dyt_alpha: float = DEFAULT_DYT_ALPHA,
        qk_norm: bool = DEFAULT_QK_NORM,
    ) -> None:
        super().__init__()
        self.placement = placement
        self.residual = residual
        self.layer = layer
        self.post_layers = post_layers
        self.rules = {name: base_rule(placement, layer, post_layers, name) for name in SUBLAYERS}
        self.alpha = deepnorm_alpha(depth) if placement == "deepnorm" else 1.0
        norm = norm_kind(placement, norm)
        head_dim = dim // heads
        head_norms = (3 if normalises_qkv(placement) else 2 if qk_norm else 0)
        self.attn = Attention(dim, heads, *(make_norm(norm, head_dim, dyt_alpha) for _ in range(head_norms)))
        self.mlp = MLP(dim, mlp_hidden)
        self.norms_in = nn.ModuleDict(
            {name: make_norm(norm, dim, dyt_alpha) for name in SUBLAYERS if self.rules[name] in NORM_IN_RULES}
        )  # fmt: skip
        self.norms_out = nn.ModuleDict(
            {name: make_norm(norm, dim, dyt_alpha) for name in SUBLAYERS if self.rules[name] in NORM_OUT_RULES}
        )  # fmt: skip
        self.gates = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(())) for name in SUBLAYERS}
            if placement == "rezero" else {}
        )  # fmt: skip
        self.recording = False
        self.records: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        records = {}
        for name in SUBLAYERS:
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
                layer=self.layer,
                post_layers=self.post_layers,
                sublayer_name=name,
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
        rules = set(self.rules.values())
        rule = "" if rules == {self.placement} else ", rules=" + "/".join(self.rules[name] for name in SUBLAYERS)
        return f"placement={self.placement}{rule}, residual={self.residual}, alpha={self.alpha:.4g}"


class ViT(nn.Module):
    """Patch embedding, position embedding, `depth` Blocks, a final norm when any block's base
    rule is pre or sandwich, cls-token or mean pooling, Linear head. No dropout."""

    def __init__(
        self,
        depth: int,
        dim: int,
        heads: int,
        mlp_ratio: float,
        patch_size: int,
        pool: Pool,
        norm_placement: Placement,
        residual: bool,
        norm: Norm,
        mix_ratio: float = DEFAULT_MIX_RATIO,
        dyt_alpha: float = DEFAULT_DYT_ALPHA,
        qk_norm: bool = DEFAULT_QK_NORM,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = IMAGE_SIZE,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.norm_placement = norm_placement
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        tokens = (image_size // patch_size) ** 2 + (pool == "cls")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        mlp_hidden = round(mlp_ratio * dim)
        post_layers = mix_post_layers(mix_ratio, depth)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_hidden, norm_placement, residual, norm, depth, layer, post_layers, dyt_alpha, qk_norm)
            for layer in range(1, depth + 1)
        )  # fmt: skip
        # Pre-LN blocks leave the stream un-normalised, so the head gets a final norm when any
        # block is pre or sandwich: under mix, unless all blocks are Post-LN (each ends in an LN).
        needs_final_norm = any(rule in FINAL_NORM_RULES for block in self.blocks for rule in block.rules.values())
        self.final_norm = make_norm(norm_kind(norm_placement, norm), dim, dyt_alpha) if needs_final_norm else None
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's ViT init (trunc-normal 0.02 Linear weights, zero biases, unit norms; the patch
        conv keeps PyTorch's default); for deepnorm, DeepNet's Xavier-normal init of the blocks."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):  # DyT and Derf keep their own init
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
