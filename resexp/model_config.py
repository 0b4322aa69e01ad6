"""Each model's config: its choices and defaults, which the model classes take (resexp/models),
its section of the run config, which build_model checks and resexp.schema includes, and the
architecture rules that decide the model's shapes (which resexp.model_size counts without torch).

Apart from the model files because it imports no torch: the command line reads it through the
schema when it starts (choices, shell completion), and importing torch takes a second.
"""

from __future__ import annotations

import math
import typing
from typing import Annotated, Literal, Optional, Union

from pydantic import Field

from resexp.sections import Label, Positive, PositiveInt, Section, rule

# cifar_resnet.py
Shortcut = Literal["A", "B"]  # A: zero-padded identity (parameter-free); B: 1x1 conv + BN where the shape changes
ZeroPad = Literal["end", "split"]  # where option A's zero channels go (ZeroPadShortcut)
DEFAULT_ZERO_PAD: ZeroPad = "end"
STAGE_CHANNELS = (16, 32, 64)  # the three stages' channels at width 1
# Images per BatchNorm batch in training: None normalises the whole mini-batch at once; the paper's
# 128 "on two GPUs" normalised each 64-image half on its own GPU (resexp/models/cifar_resnet.py, SplitBatchNorm2d).
DEFAULT_BN_BATCH: int | None = None
PAPER_BN_BATCH = 64
# Fixed choices of the code, named here so that the report's recipe table (resexp/report/paper.py) states
# what ran: He init's fan mode (resexp/models/cifar_resnet.py, he_init_) and BatchNorm's running-average
# momentum (PyTorch's default: each training step moves the running averages 10% of the way to the
# batch's statistics; evaluation normalises with them).
HE_INIT_MODE = "fan_out"
BN_MOMENTUM = 0.1


def scaled_channels(channels: int, width: float) -> int:
    """Channel count times the width multiplier, rounded, never below 1."""
    return max(1, round(channels * width))


# vgg.py
VGGDepth = Literal[11, 13, 16, 19]  # VGG_LAYERS' keys
POOL = "M"
VGG_LAYERS: dict[int, list[int | str]] = {
    11: [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    13: [64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    16: [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
         512, 512, 512, POOL, 512, 512, 512, POOL],
    19: [64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL,
         512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL],
}  # fmt: skip

# vit.py
Placement = Literal["post", "pre", "sandwich", "deepnorm", "rezero", "none", "mix", "lns", "dyt", "peri", "derf",
                    "hybrid"]
PLACEMENTS: tuple[str, ...] = typing.get_args(Placement)
Pool = Literal["cls", "mean"]
Norm = Literal["layernorm", "rmsnorm"]
IMAGE_SIZE = 32  # every dataset is served as 32x32 (Fashion-MNIST zero-padded)
DEFAULT_MIX_RATIO = 0.25  # Mix-LN's alpha: the fraction of leading blocks that are Post-LN
DEFAULT_DYT_ALPHA = 0.5  # DyT's initial alpha in gamma * tanh(alpha * x) + beta
# Derf's initial alpha and shift in gamma * erf(alpha * x + shift) + beta, as its public code sets them
# (zlab-princeton/Derf, ViT/dynamic_erf.py: alpha_init_value=0.5, shift_init_value=0.0).
DERF_ALPHA_INIT = 0.5
DERF_SHIFT_INIT = 0.0
DEFAULT_QK_NORM = False
# Where each base rule (see base_rule) puts its norms: before G (norm_in) and after G or the sum (norm_out).
NORM_IN_RULES = ("pre", "sandwich", "normed_skip")
NORM_OUT_RULES = ("post", "sandwich", "deepnorm")
# Base rules whose stream reaches the head un-normalised, so the head gets a final norm.
FINAL_NORM_RULES = ("pre", "sandwich", "normed_skip")
SUBLAYERS = ("attn", "mlp")  # a ViT block's two sublayers, in order


def mix_post_layers(mix_ratio: float, depth: int) -> int:
    """How many leading blocks Mix-LN makes Post-LN: floor(mix_ratio * depth). The tolerance
    keeps products such as 0.29 * 100 = 28.999999999999996 at the count the ratio means."""
    return math.floor(mix_ratio * depth + 1e-9)


def base_rule(placement: str, layer: int = 1, post_layers: int = 0, sublayer: str = "mlp") -> str:
    """The rule among post, pre, sandwich, deepnorm, rezero, none and normed_skip that sublayer
    `sublayer` ("attn" or "mlp") of block `layer` (1-based) follows: mix is post in blocks
    1..post_layers and pre after; lns, dyt and derf are pre (residual_step adds lns's scale, the
    model's norms are DyT or Derf); peri is sandwich; hybrid is none on attention (whose q, k and
    v are normalised inside it) and normed_skip, x <- LN(x) + G(LN(x)), on the MLP."""
    if placement == "mix":
        return "post" if layer <= post_layers else "pre"
    if placement == "hybrid":
        return "none" if sublayer == "attn" else "normed_skip"
    return {"lns": "pre", "dyt": "pre", "derf": "pre", "peri": "sandwich"}.get(placement, placement)


def norm_kind(placement: str, norm: str) -> str:
    """What every norm of a ViT is (resexp.models.vit.make_norm's choice): DyT under dyt and Derf
    under derf, which replace them all, the final and the q/k norms included; model.norm under
    the others."""
    return placement if placement in ("dyt", "derf") else norm


def normalises_qkv(placement: str) -> bool:
    """HybridNorm normalises each head's queries, keys and values (model.qk_norm adds q and k
    norms under the other placements)."""
    return placement == "hybrid"


# ---- one section per arch: the constructor's arguments besides arch and name ----

class CifarResNetModel(Section):
    """The paper's 6n+2 CIFAR nets and their plain twins (resexp/models/cifar_resnet.py)."""

    arch: Literal["cifar_resnet"]
    depth: Annotated[int, rule("6n+2 with n >= 1 (20, 32, 44, 56, 110, 1202, ...)",
                               lambda d: d >= 8 and (d - 2) % 6 == 0)]
    residual: bool
    shortcut: Shortcut
    width: Positive
    # Runs written before this key existed lack it and count as the default (resexp.rundir.run_identity).
    zero_pad: ZeroPad = DEFAULT_ZERO_PAD
    # Images per BatchNorm batch in training (null: the whole mini-batch; the paper's presets: 64, its two
    # GPUs' halves of 128). trainer.batch_size must be a multiple of it (resexp.schema).
    bn_batch: Annotated[Optional[int], rule("a positive integer or null", lambda v: v >= 1)] = DEFAULT_BN_BATCH
    name: Label = None


class VGGModel(Section):
    """VGG-style plain CNN (resexp/models/vgg.py)."""

    arch: Literal["vgg"]
    depth: VGGDepth
    width: Positive
    name: Label = None


class ViTModel(Section):
    """ViT-style classifier with a choice of norm placement (resexp/models/vit.py)."""

    arch: Literal["vit"]
    depth: PositiveInt
    dim: PositiveInt
    heads: PositiveInt
    mlp_ratio: Positive
    patch_size: Annotated[int, rule(f"a divisor of the image size {IMAGE_SIZE} (1, 2, 4, 8, 16, 32)",
                                    lambda p: p >= 1 and IMAGE_SIZE % p == 0)]
    pool: Pool
    norm_placement: Placement
    residual: bool
    norm: Norm
    name: Label = None
    # Runs written before these keys existed lack them and count as the defaults (resexp.rundir.run_identity).
    mix_ratio: Annotated[float, rule("a number in [0, 1]", lambda v: 0 <= v <= 1)] = DEFAULT_MIX_RATIO
    dyt_alpha: Positive = DEFAULT_DYT_ALPHA
    qk_norm: bool = DEFAULT_QK_NORM

    def relations(self) -> list[str]:
        problems = []
        if self.dim % self.heads:
            problems.append(f"model.dim must be divisible by model.heads; got dim {self.dim}, heads {self.heads}")
        if self.norm_placement == "rezero" and not self.residual:
            problems.append("model.residual=false cannot be used with norm_placement=rezero (a*G(x) with a = 0 "
                            "at init never trains); use residual=true or another placement")
        return problems


ModelConfig = Annotated[Union[CifarResNetModel, VGGModel, ViTModel], Field(discriminator="arch")]
