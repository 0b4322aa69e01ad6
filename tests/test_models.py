"""The model zoo against the paper's numbers (He et al. 2015, Table 6) and its definitions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from resexp.errors import ConfigError
from resexp.model_size import model_size
from resexp.models import build_model
from resexp.models.cifar_resnet import BasicBlock, ZeroPadShortcut

MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


def resnet_config(depth: int, residual: bool = True, shortcut: str = "A", width: float = 1.0) -> dict:
    return {"arch": "cifar_resnet", "depth": depth, "residual": residual, "shortcut": shortcut, "width": width}


def cifar_resnet(
    depth: int,
    residual: bool = True,
    shortcut: str = "A",
    width: float = 1.0,
    in_channels: int = 3,
    num_classes: int = 10,
) -> nn.Module:
    return build_model(resnet_config(depth, residual, shortcut, width), in_channels=in_channels,
                       num_classes=num_classes)  # fmt: skip


def paper_rounding(params: int) -> str:
    """Table 6's style: two decimals in millions below 1M, one decimal above."""
    millions = params / 1e6
    return f"{millions:.2f}M" if millions < 1 else f"{millions:.1f}M"


def blocks(model: nn.Module) -> list[BasicBlock]:
    return [m for m in model.modules() if isinstance(m, BasicBlock)]


# depth: (Table 6 params, exact params, reference MACs, exact MACs incl. the 10-way classifier)
PAPER_SIZES = {
    20: ("0.27M", 269_722, 40.55e6, 40_551_040),
    32: ("0.46M", 464_154, 68.86e6, 68_862_592),
    44: ("0.66M", 658_586, 97.17e6, 97_174_144),
    56: ("0.85M", 853_018, 125.49e6, 125_485_696),
    110: ("1.7M", 1_727_962, 252.89e6, 252_887_680),
    1202: ("19.4M", 19_421_274, 2.829e9, 2_829_238_912),
}


@pytest.mark.parametrize("depth", list(PAPER_SIZES))
def test_params_and_macs_match_paper(depth: int) -> None:
    table_params, exact_params, reference_macs, exact_macs = PAPER_SIZES[depth]
    size = model_size(resnet_config(depth))
    assert paper_rounding(size.params) == table_params
    assert size.params == exact_params
    assert abs(size.macs - reference_macs) / reference_macs < 1e-3
    assert size.macs == exact_macs


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_option_a_twins_share_params_and_option_b_adds_projections(depth: int) -> None:
    residual = model_size(resnet_config(depth, residual=True, shortcut="A")).params
    plain = model_size(resnet_config(depth, residual=False, shortcut="A")).params
    projection = model_size(resnet_config(depth, residual=True, shortcut="B")).params
    assert plain == residual
    # Two projections, 16->32 and 32->64, each a 1x1 conv plus BN: 512+64 + 2048+128.
    assert projection - residual == 2_752


def test_option_a_shortcut_subsamples_and_appends_zero_channels() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = ZeroPadShortcut(out_channels=32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(out[:, 16:], torch.zeros(2, 16, 4, 4))


def test_option_a_is_used_and_parameter_free_where_shapes_change() -> None:
    downsampling = [b for b in blocks(cifar_resnet(20)) if b.conv1.stride == (2, 2)]
    assert len(downsampling) == 2
    for block in downsampling:
        assert isinstance(block.shortcut, ZeroPadShortcut)
        assert not list(block.shortcut.parameters())


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_resnet_forward_shape(residual: bool, in_channels: int, num_classes: int) -> None:
    model = cifar_resnet(20, residual, width=0.25, in_channels=in_channels,
                         num_classes=num_classes)  # fmt: skip
    assert model(torch.randn(2, in_channels, 32, 32)).shape == (2, num_classes)


def test_width_scales_channels_and_option_b_forward() -> None:
    model = cifar_resnet(20, shortcut="B", width=0.25)
    assert [b.conv2.out_channels for b in blocks(model)][::3] == [4, 8, 16]
    assert model.fc.in_features == 16
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_vgg_forward_shape(depth: int, in_channels: int) -> None:
    model = build_model({"arch": "vgg", "depth": depth, "width": 0.25},
                        in_channels=in_channels, num_classes=100)  # fmt: skip
    assert model(torch.randn(2, in_channels, 32, 32)).shape == (2, 100)


def test_vgg16_matches_public_cifar_vgg16_bn_size() -> None:
    # kuangliu/pytorch-cifar VGG('VGG16'): conv(+bias)-BN-ReLU stacks, Linear(512, 10).
    assert model_size({"arch": "vgg", "depth": 16, "width": 1.0}).params == 14_728_266


def _shortcut_reference(x: torch.Tensor, out_channels: int, stride: int) -> torch.Tensor:
    x = x[:, :, ::stride, ::stride]
    zeros = x.new_zeros(x.shape[0], out_channels - x.shape[1], *x.shape[2:])
    return torch.cat([x, zeros], dim=1)


@pytest.mark.parametrize("residual", [True, False])
def test_residual_adds_shortcut_and_plain_does_not(residual: bool) -> None:
    """With every block's last BN scaled to 0 the residual branch outputs 0: a residual block
    then passes ReLU(shortcut(x)) on, a plain block passes only zeros."""
    torch.manual_seed(0)
    model = cifar_resnet(20, residual, width=0.25).eval()
    seen: list[tuple[BasicBlock, torch.Tensor, torch.Tensor]] = []
    for block in blocks(model):
        nn.init.zeros_(block.bn2.weight)
        block.register_forward_hook(lambda m, inputs, out: seen.append((m, inputs[0], out)))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(seen) == 9
    for block, x, out in seen:
        if residual:
            stride = block.conv1.stride[0]
            expected = F.relu(_shortcut_reference(x, block.conv2.out_channels, stride))
            assert torch.equal(out, expected)
        else:
            assert torch.equal(out, torch.zeros_like(out))
    if residual:  # the inputs are not trivially zero, so the check above has teeth
        assert seen[-1][2].abs().sum() > 0


@pytest.mark.parametrize("arch", ["cifar_resnet", "vgg"])
def test_base_yaml_configs_build(arch: str) -> None:
    """The YAML on disk (a DictConfig, with its `name` key) carries exactly the builder's keys."""
    cfg = OmegaConf.load(MODEL_CONFIGS / "base" / f"{arch}.yaml")
    assert build_model(cfg)(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("depth", [21, 2, 0, 57])
def test_depth_not_6n_plus_2_is_config_error(depth: int) -> None:
    with pytest.raises(ConfigError, match=rf"model\.depth must be 6n\+2 .*got {depth}$"):
        cifar_resnet(depth)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"arch": "cifar_resnet", "depth": 20, "residual": True, "shortcut": "C",
          "width": 1.0}, "one of A, B"),
        ({"arch": "vgg", "depth": 12, "width": 1.0}, "one of 11, 13, 16, 19"),
        ({"arch": "resnet", "depth": 20}, "model.arch must be one of cifar_resnet, vgg"),
        ({"depth": 20}, "model.arch must be one of"),
        ({"arch": "vgg", "depth": 16, "width": 1.0, "dropout": 0.5},
         "unknown key 'model.dropout'; valid keys in model: arch, depth, width, name"),
        ({"arch": "cifar_resnet", "depth": 20},
         "missing key 'model.residual'; missing key 'model.shortcut'; missing key 'model.width'"),
    ],
)  # fmt: skip
def test_bad_model_config_is_config_error(cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(cfg)


def test_split_batch_norm_equals_two_separate_64_image_halves() -> None:
    """model.bn_batch=64 on a batch of 128 computes what the paper's two GPUs did: each half
    normalised by its own statistics (the outputs of two separate copies of the net, one per half),
    the gradient the mean of the two halves', and the running statistics the first half's copy's."""
    torch.manual_seed(0)
    split = build_model({**resnet_config(8, width=0.5), "bn_batch": 64})
    for module in split.modules():  # BN's identity init would hide a mix-up of weight and bias
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5), nn.init.uniform_(module.bias, -0.5, 0.5)
    halves = [build_model(resnet_config(8, width=0.5)) for _ in range(2)]
    for half in halves:
        half.load_state_dict(split.state_dict())
    images = torch.randn(128, 3, 32, 32) * 2 + 1  # far from BN's initial running mean 0, variance 1
    labels = torch.randint(0, 10, (128,))
    for model in (split, *halves):
        model.train()

    out = split(images)
    out_halves = [half(part) for half, part in zip(halves, images.split(64))]
    torch.testing.assert_close(out, torch.cat(out_halves))
    whole = build_model(resnet_config(8, width=0.5))
    whole.load_state_dict(split.state_dict())
    assert not torch.allclose(whole.train()(images), out, atol=1e-3)  # not plain BN over the 128

    F.cross_entropy(out, labels).backward()
    for half, part_out, part_labels in zip(halves, out_halves, labels.split(64)):
        F.cross_entropy(part_out, part_labels).backward()
    for (name, p), p0, p1 in zip(split.named_parameters(), halves[0].parameters(), halves[1].parameters()):
        torch.testing.assert_close(p.grad, (p0.grad + p1.grad) / 2, msg=name)

    first, second = halves[0].state_dict(), halves[1].state_dict()
    for name, buffer in split.named_buffers():
        assert torch.equal(buffer, first[name]), name  # the first half's running statistics
    moved = [name for name, buffer in split.named_buffers() if name.endswith("running_mean")
             and not torch.allclose(buffer, second[name])]
    assert moved  # and not the second half's, which differ

    split.eval(), halves[0].eval()
    torch.testing.assert_close(split(images), halves[0](images))  # evaluation: plain BN with those statistics


def test_split_batch_norm_leaves_batches_it_does_not_split_alone() -> None:
    torch.manual_seed(0)
    split = build_model({**resnet_config(8, width=0.5), "bn_batch": 64})
    plain = build_model(resnet_config(8, width=0.5))
    plain.load_state_dict(split.state_dict())
    images = torch.randn(32, 3, 32, 32)
    torch.testing.assert_close(split.train()(images), plain.train()(images))
    with pytest.raises(ValueError, match="does not split into BatchNorm groups of 64"):
        split(torch.randn(96, 3, 32, 32))
