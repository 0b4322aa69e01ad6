"""Each model's config: its choices and defaults, which the model classes take (resexp/models),
and its section of the run config, which build_model checks and resexp.schema includes.

Apart from the model files because it imports no torch: the command line reads it through the
schema when it starts (choices, shell completion), and importing torch takes a second.
"""

from __future__ import annotations

import typing
from typing import Annotated, Literal, Union

from pydantic import Field

from resexp.sections import Label, Positive, PositiveInt, Section, rule

# cifar_resnet.py
Shortcut = Literal["A", "B"]  # A: zero-padded identity (parameter-free); B: 1x1 conv + BN where the shape changes
ZeroPad = Literal["end", "split"]  # where option A's zero channels go (ZeroPadShortcut)
DEFAULT_ZERO_PAD: ZeroPad = "end"

# vgg.py
VGGDepth = Literal[11, 13, 16, 19]  # VGG_LAYERS' keys

# vit.py
Placement = Literal["post", "pre", "sandwich", "deepnorm", "rezero", "none", "mix", "lns", "dyt", "peri"]
PLACEMENTS: tuple[str, ...] = typing.get_args(Placement)
Pool = Literal["cls", "mean"]
Norm = Literal["layernorm", "rmsnorm"]
IMAGE_SIZE = 32  # every dataset is served as 32x32 (Fashion-MNIST zero-padded)
DEFAULT_MIX_RATIO = 0.25  # Mix-LN's alpha: the fraction of leading blocks that are Post-LN
DEFAULT_DYT_ALPHA = 0.5  # DyT's initial alpha in gamma * tanh(alpha * x) + beta
DEFAULT_QK_NORM = False


# ---- one section per arch: the constructor's arguments besides arch and name ----

class CifarResNetModel(Section):
    """The paper's 6n+2 CIFAR nets and their plain twins (resexp/models/cifar_resnet.py)."""

    arch: Literal["cifar_resnet"]
    depth: Annotated[int, rule("6n+2 with n >= 1 (20, 32, 44, 56, 110, 1202, ...)",
                               lambda d: d >= 8 and (d - 2) % 6 == 0)]
    residual: bool
    shortcut: Shortcut
    width: Positive
    # Runs written before this key existed lack it and count as the default (resexp.config.run_identity).
    zero_pad: ZeroPad = DEFAULT_ZERO_PAD
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
    # Runs written before these keys existed lack them and count as the defaults (resexp.config.run_identity).
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
