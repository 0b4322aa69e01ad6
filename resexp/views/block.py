"""One Transformer block on one small vector, step by step (`resexp block`).

The sublayer is linear, G(x) = W x + b, and the norms are fresh LayerNorms (weight 1, bias 0;
under dyt and derf fresh DyTs and Derfs, gamma 1, beta 0, alpha and shift the model's defaults),
so every step can be checked by hand. Under hybrid the block shown is the MLP's step (attention's,
x + G(x) with q, k and v normalised inside G, has no norm on the stream to show). The steps come from the model's own rule function, resexp.models.vit.residual_step, so
the view shows exactly what the ViT computes. The block is the first of a model of `blocks`
blocks: lns's scale 1/sqrt(l) is 1, and mix's block is Post-LN when floor(mix_ratio * blocks) >= 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table
from torch import nn

from resexp.errors import ConfigError
from resexp.model_config import (DEFAULT_DYT_ALPHA, DEFAULT_MIX_RATIO, DERF_ALPHA_INIT, DERF_SHIFT_INIT, base_rule,
                                 mix_post_layers, norm_kind)
from resexp.models.vit import SKIP, UPDATE, deepnorm_alpha, make_norm, residual_step

BLOCK_PLACEMENTS = ("pre", "post", "sandwich", "deepnorm", "mix", "lns", "dyt", "peri", "derf", "hybrid")
RULES = {
    "pre": "x + G(LN(x))",
    "post": "LN(x + G(x))",
    "sandwich": "x + LN_out(G(LN_in(x)))",
    "deepnorm": "LN(α·x + G(x))",
    "lns": "x + G(LN(x)/√l), l = 1",
    "dyt": f"x + G(DyT(x)), DyT(x) = γ·tanh(α·x) + β, α = {DEFAULT_DYT_ALPHA}",
    "peri": "x + LN_out(G(LN_in(x)))",
    "derf": f"x + G(Derf(x)), Derf(x) = γ·erf(α·x + s) + β, α = {DERF_ALPHA_INIT}, s = {DERF_SHIFT_INIT}",
    "hybrid": "LN(x) + G(LN(x)) (HybridNorm's MLP step; its attention: x + Attn(x), q, k, v normalised)",
}
MAX_DIM = 32  # beyond this the table and the bar chart stop being readable


def check_placement(placement: str) -> None:
    if placement not in BLOCK_PLACEMENTS:
        raise ConfigError(f"placement must be one of {', '.join(BLOCK_PLACEMENTS)}; got {placement!r}")


def parse_vector(text: str, dim: int) -> list[float]:
    """'1,2,3,4' as floats; exactly dim finite numbers, else a ConfigError."""
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise ConfigError(f"--x must be {dim} comma-separated numbers, e.g. 1,2,3,4; got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--x must be finite numbers; got {text!r}")
    if len(values) != dim:
        raise ConfigError(
            f"--x has {len(values)} values but --dim is {dim}: give {dim} comma-separated numbers"
        )
    return values


def block_steps(
    placement: str,
    dim: int = 4,
    seed: int = 42,
    x: Sequence[float] | torch.Tensor | None = None,
    blocks: int = 1,
) -> list[tuple[str, torch.Tensor]]:
    """The vectors at every step of one block, as (step name, vector of size dim) pairs.

    W ~ N(0, 1/dim) and b ~ N(0, 0.1²) are drawn from `seed`, then x ~ N(0, 1) unless x is
    given. DeepNorm's α = (2N)^(1/4) uses N = `blocks`, the depth of the model it sits in.
    """
    check_placement(placement)
    if isinstance(dim, bool) or not isinstance(dim, int) or not 2 <= dim <= MAX_DIM:
        raise ConfigError(f"--dim must be an integer from 2 to {MAX_DIM}; got {dim!r}")
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ConfigError(f"--blocks must be a positive integer; got {blocks!r}")
    generator = torch.Generator().manual_seed(seed)
    sublayer = nn.Linear(dim, dim)
    with torch.no_grad():
        sublayer.weight.copy_(torch.randn(dim, dim, generator=generator) / math.sqrt(dim))
        sublayer.bias.copy_(0.1 * torch.randn(dim, generator=generator))
    if x is None:
        x = torch.randn(dim, generator=generator)
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.shape != (dim,):
        raise ConfigError(f"x must have {dim} values (--dim); got shape {tuple(x.shape)}")
    norm = norm_kind(placement, "layernorm")
    record: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        residual_step(
            x,
            sublayer,
            placement,
            norm_in=make_norm(norm, dim),
            norm_out=make_norm(norm, dim),
            alpha=deepnorm_alpha(blocks),
            record=record,
            post_layers=mix_post_layers(DEFAULT_MIX_RATIO, blocks),
        )
    return [(name, value) for name, value in record.items() if name not in (SKIP, UPDATE)]


def rule_text(placement: str, blocks: int = 1) -> str:
    """The placement's update rule, with DeepNorm's α and Mix-LN's rule for N = blocks."""
    if placement == "mix":
        post_layers = mix_post_layers(DEFAULT_MIX_RATIO, blocks)
        return (f"{RULES[base_rule('mix', 1, post_layers)]} (Mix-LN block 1 of {blocks}: "
                f"Post-LN in the first ⌊{DEFAULT_MIX_RATIO}·{blocks}⌋ = {post_layers})")
    rule = RULES[placement]
    if placement == "deepnorm":
        rule += f", α = (2·{blocks})^(1/4) = {deepnorm_alpha(blocks):.4f}"
    return rule


def draw_block(
    steps: list[tuple[str, torch.Tensor]], placement: str, path: str | Path, blocks: int = 1
) -> Path:
    """A grouped bar chart (a group per vector component, a bar per step) saved as PNG."""
    path = Path(path)
    dim = len(steps[0][1])
    figure = Figure(figsize=(max(6.0, 1.2 * dim + 2), 4.0), layout="constrained")
    axes = figure.add_subplot()
    bar_width = 0.8 / len(steps)
    colours = colormaps["viridis"](np.linspace(0.0, 0.9, len(steps)))
    components = np.arange(dim)
    for index, ((name, vector), colour) in enumerate(zip(steps, colours)):
        offset = (index - (len(steps) - 1) / 2) * bar_width
        axes.bar(components + offset, vector.numpy(), bar_width, label=name, color=colour)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(components, [f"x[{i}]" for i in components])
    axes.set_ylabel("value")
    axes.set_title(f"{placement}: x ← {rule_text(placement, blocks)}")
    axes.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def show_block(placement: str, dim: int = 4, seed: int | None = None, x: str | None = None, blocks: int = 1,
               out: str | Path | None = None) -> Path:
    """`resexp block`: the steps printed as a table (components and norm) and drawn to out (default
    block_PLACEMENT.png); x ("1,2,3,4") or a seed (default 42) gives the input vector, not both."""
    check_placement(placement)
    if seed is not None and x is not None:
        raise ConfigError("give --seed or --x, not both: --seed draws x at random, --x sets it")
    vector = parse_vector(x, dim) if x is not None else None
    steps = block_steps(placement, dim, seed if seed is not None else 42, vector, blocks)
    title = f"{placement}: x ← {rule_text(placement, blocks)}"
    table = Table("step", *(f"x[{i}]" for i in range(dim)), "‖·‖", title=title)
    for name, values in steps:
        table.add_row(name, *(f"{v:+.4f}" for v in values.tolist()), f"{values.norm():.4f}")
    Console().print(table)
    return draw_block(steps, placement, out or f"block_{placement}.png", blocks)
