"""resexp.model_size against the built models: its shape arithmetic gives exactly the oracle's
counts (tests/model_oracle.py) for every named model and for variants of every option."""

from __future__ import annotations

import subprocess
import sys

import pytest

from model_oracle import count_macs, count_params
from resexp.config import compose, group_choices
from resexp.errors import ConfigError
from resexp.model_config import PLACEMENTS
from resexp.model_size import model_size
from resexp.models import build_model

# (in_channels, num_classes): CIFAR-10's, and a grey 100-way set's, which reach the stem and the head.
DATA_SHAPES = [(3, 10), (1, 100)]


def assert_size_matches_built_model(cfg: dict, in_channels: int = 3, num_classes: int = 10) -> None:
    model = build_model(cfg, in_channels, num_classes)
    size = model_size(cfg, in_channels, num_classes)
    assert (size.params, size.macs) == (count_params(model), count_macs(model, (1, in_channels, 32, 32)))


@pytest.mark.parametrize("name", group_choices("model"))
def test_every_named_model(name: str) -> None:
    assert_size_matches_built_model(compose([f"model={name}"]).model)


def resnet(**changes: object) -> dict:
    return {"arch": "cifar_resnet", "depth": 20, "residual": True, "shortcut": "A", "width": 1.0} | changes


@pytest.mark.parametrize("in_channels, num_classes", DATA_SHAPES)
@pytest.mark.parametrize("cfg", [
    resnet(), resnet(width=0.5), resnet(width=0.3), resnet(shortcut="B"), resnet(shortcut="B", width=0.3),
    resnet(residual=False), resnet(residual=False, shortcut="B"), resnet(depth=8, zero_pad="split"),
], ids=str)  # fmt: skip
def test_cifar_resnet_variants(cfg: dict, in_channels: int, num_classes: int) -> None:
    assert_size_matches_built_model(cfg, in_channels, num_classes)


@pytest.mark.parametrize("in_channels, num_classes", DATA_SHAPES)
@pytest.mark.parametrize("width", [0.5, 0.3])
@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_vgg_variants(depth: int, width: float, in_channels: int, num_classes: int) -> None:
    assert_size_matches_built_model({"arch": "vgg", "depth": depth, "width": width}, in_channels, num_classes)


def vit(**changes: object) -> dict:
    """Small (dim 16, depth 3, 16 patches) so each forward is cheap."""
    return {"arch": "vit", "depth": 3, "dim": 16, "heads": 2, "mlp_ratio": 2.0, "patch_size": 8, "pool": "cls",
            "norm_placement": "pre", "residual": True, "norm": "layernorm"} | changes


@pytest.mark.parametrize("in_channels, num_classes", DATA_SHAPES)
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_vit_placements(placement: str, pool: str, norm: str, qk_norm: bool, in_channels: int,
                        num_classes: int) -> None:  # fmt: skip
    cfg = vit(norm_placement=placement, pool=pool, norm=norm, qk_norm=qk_norm)
    assert_size_matches_built_model(cfg, in_channels, num_classes)


@pytest.mark.parametrize("cfg", [
    vit(residual=False), vit(norm_placement="post", residual=False), vit(norm_placement="deepnorm", residual=False),
    # Mix-LN with post and pre blocks (2 of 4 post), and with all blocks post: then no final norm.
    vit(norm_placement="mix", depth=4, mix_ratio=0.5), vit(norm_placement="mix", mix_ratio=1.0),
    vit(norm_placement="mix", mix_ratio=0.0, norm="rmsnorm"),
    vit(dim=20, heads=4, mlp_ratio=1.37), vit(dim=24, heads=3, mlp_ratio=2.5, qk_norm=True),  # round()ed hidden
    vit(patch_size=4, pool="mean"), vit(depth=2, dim=32, heads=4, norm_placement="dyt", dyt_alpha=2.0),
], ids=str)  # fmt: skip
def test_vit_variants(cfg: dict) -> None:
    assert_size_matches_built_model(cfg, 1, 100)


@pytest.mark.parametrize("cfg", [
    resnet(depth=21), resnet(shortcut="C"), {"arch": "vgg", "depth": 12, "width": 1.0},
    {"arch": "resnet", "depth": 20}, vit(heads=3), vit(norm_placement="rezero", residual=False),
    {"arch": "vgg", "depth": 16, "width": 1.0, "dropout": 0.5},
], ids=str)  # fmt: skip
def test_bad_config_is_the_same_config_error_as_build_models(cfg: dict) -> None:
    with pytest.raises(ConfigError) as built:
        build_model(cfg)
    with pytest.raises(ConfigError) as sized:
        model_size(cfg)
    assert str(sized.value) == str(built.value)


def test_sizes_of_all_named_models_import_no_torch() -> None:
    code = ("import sys; from resexp.config import compose, group_choices; from resexp.model_size import model_size; "
            "[model_size(compose([f'model={name}']).model) for name in group_choices('model')]; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
