"""The ViT and its norm placements against hand-written formulas, DeepNet's constants and
init, and the residual-stream probes."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from resexp.config import compose
from resexp.engine.probes import block_grad_norms, skip_loss_delta, stream_probes, supports_probes
from resexp.errors import ConfigError, ResexpError
from model_oracle import count_macs, count_params
from resexp.model_config import PLACEMENTS
from resexp.model_size import model_size
from resexp.models import build_model
from resexp.models.vit import Block, ViT, deepnorm_alpha, deepnorm_beta, residual_step

MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
DIM = 8


def small_vit(placement: str = "pre", residual: bool = True, depth: int = 2, dim: int = 16,
              pool: str = "cls", norm: str = "layernorm", heads: int = 2) -> ViT:  # fmt: skip
    # patch 8 on 32x32: 16 patches, so the tests stay cheap on a shared CPU.
    return ViT(depth, dim, heads, 2.0, 8, pool, placement, residual, norm)


def vit_config(placement: str = "pre", residual: bool = True, depth: int = 2, dim: int = 16,
               pool: str = "cls", norm: str = "layernorm", heads: int = 2) -> dict:  # fmt: skip
    """small_vit's arguments as a model config, as build_model (and the schema) sees them."""
    return {"arch": "vit", "depth": depth, "dim": dim, "heads": heads, "mlp_ratio": 2.0, "patch_size": 8,
            "pool": pool, "norm_placement": placement, "residual": residual, "norm": norm}


def random_layernorm(generator: torch.Generator) -> nn.LayerNorm:
    """A LayerNorm with a random affine part, so norm_in and norm_out are told apart."""
    norm = nn.LayerNorm(DIM)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(DIM, generator=generator))
        norm.bias.copy_(torch.randn(DIM, generator=generator))
    return norm


def layernorm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm written out: standardise over the last dim, then the affine part."""
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


# The rules as the reference states them, with the skip term s = x (residual) or 0 (not).
FORMULAS: dict[str, Callable[..., torch.Tensor]] = {
    "post": lambda x, s, G, n_in, n_out, alpha, gate: layernorm(s + G(x), n_out),
    "pre": lambda x, s, G, n_in, n_out, alpha, gate: s + G(layernorm(x, n_in)),
    "sandwich": lambda x, s, G, n_in, n_out, alpha, gate: s + layernorm(G(layernorm(x, n_in)), n_out),
    "deepnorm": lambda x, s, G, n_in, n_out, alpha, gate: layernorm(alpha * s + G(x), n_out),
    "rezero": lambda x, s, G, n_in, n_out, alpha, gate: s + gate * G(x),
    "none": lambda x, s, G, n_in, n_out, alpha, gate: s + G(x),
}
# At residual_step's defaults (block 1, no Post-LN blocks) mix, lns and dyt are the pre rule
# (tests/test_vit_placements.py checks them per block); peri is sandwich by name.
FORMULAS.update({"mix": FORMULAS["pre"], "lns": FORMULAS["pre"], "dyt": FORMULAS["pre"], "peri": FORMULAS["sandwich"],
                 "derf": FORMULAS["pre"]})
# hybrid's MLP step (residual_step's default sublayer): the skip leaves from LN(x), not from x.
FORMULAS["hybrid"] = lambda x, s, G, n_in, n_out, alpha, gate: (layernorm(x, n_in) if s is x else s) + G(
    layernorm(x, n_in))


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_residual_step_matches_the_rule(placement: str, residual: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(2, 5, DIM, generator=generator) + 1
    weight = torch.randn(DIM, DIM, generator=generator) / math.sqrt(DIM)

    def sublayer(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ weight.T) + 0.5  # non-linear, non-zero mean: a real G

    norm_in, norm_out = random_layernorm(generator), random_layernorm(generator)
    alpha, gate = 1.7, torch.tensor(0.3)
    with torch.no_grad():
        got = residual_step(x, sublayer, placement, residual, norm_in, norm_out, alpha, gate)
        skip = x if residual else torch.zeros_like(x)
        expected = FORMULAS[placement](x, skip, sublayer, norm_in, norm_out, alpha, gate)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_residual_step_rejects_unknown_placement() -> None:
    with pytest.raises(ConfigError, match="one of post, pre, sandwich, deepnorm, rezero, none, mix, lns, dyt, peri, "
                                          "derf, hybrid; got 'mid'"):
        residual_step(torch.zeros(1, DIM), nn.Identity(), "mid")


@pytest.mark.parametrize("n", [1, 2, 6, 12, 48, 100])
def test_deepnorm_constants(n: int) -> None:
    assert deepnorm_alpha(n) == pytest.approx((2 * n) ** 0.25, rel=1e-12)
    assert deepnorm_beta(n) == pytest.approx((8 * n) ** -0.25, rel=1e-12)


def test_deepnorm_constants_for_six_layers() -> None:
    assert deepnorm_alpha(6) == pytest.approx(12**0.25) == pytest.approx(1.8612097)
    assert deepnorm_beta(6) == pytest.approx(48**-0.25) == pytest.approx(0.3799178)
    model = small_vit("deepnorm", depth=6, dim=8)
    assert all(block.alpha == pytest.approx(12**0.25) for block in model.blocks)
    # Other placements do not scale the skip term.
    assert all(block.alpha == 1.0 for block in small_vit("post", depth=6, dim=8).blocks)


def test_deepnorm_alpha_multiplies_the_skip_term_not_the_sublayer() -> None:
    """x <- LN(α·x + G(x)); the wrong variant some code uses, LN(x + α·G(x)), must differ."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, DIM, generator=generator)
    offset = torch.randn(DIM, generator=generator)

    def sublayer(z: torch.Tensor) -> torch.Tensor:
        return 0.5 * z + offset

    norm = nn.LayerNorm(DIM)
    alpha = deepnorm_alpha(6)
    with torch.no_grad():
        got = residual_step(x, sublayer, "deepnorm", norm_out=norm, alpha=alpha)
        right = F.layer_norm(alpha * x + sublayer(x), (DIM,))
        wrong = F.layer_norm(x + alpha * sublayer(x), (DIM,))
    torch.testing.assert_close(got, right)
    assert (got - wrong).abs().max() > 0.1


def xavier_std(linear: nn.Linear, gain: float) -> float:
    return gain * math.sqrt(2.0 / (linear.in_features + linear.out_features))


def test_deepnorm_init_is_deepnet_xavier_with_beta() -> None:
    depth = 3
    beta = deepnorm_beta(depth)
    torch.manual_seed(0)
    model = ViT(depth, 256, 4, 2.0, 8, "cls", "deepnorm", True, "layernorm")
    for block in model.blocks:
        gains = {block.attn.q: 1.0, block.attn.k: 1.0, block.attn.v: beta, block.attn.out: beta,
                 block.mlp.fc1: beta, block.mlp.fc2: beta}  # fmt: skip
        for linear, gain in gains.items():
            # 65k+ samples: the std estimate is good to about 0.3%.
            assert linear.weight.std().item() == pytest.approx(xavier_std(linear, gain), rel=0.03)
            assert abs(linear.weight.mean().item()) < 0.05 * xavier_std(linear, gain)
            assert torch.count_nonzero(linear.bias) == 0
    # β really is below 1 here, so the test tells gain β from gain 1.
    assert beta == pytest.approx(24**-0.25) and beta < 0.5


@pytest.mark.parametrize("placement", ["pre", "post", "sandwich", "rezero"])
def test_other_placements_use_timm_init(placement: str) -> None:
    torch.manual_seed(0)
    model = ViT(2, 256, 4, 2.0, 8, "cls", placement, True, "layernorm")
    for block in model.blocks:
        for weight in block.sublayer_weights():
            assert weight.std().item() == pytest.approx(0.02, rel=0.03)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert torch.count_nonzero(module.bias) == 0
        elif isinstance(module, nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)


def test_rezero_block_is_the_identity_at_init() -> None:
    torch.manual_seed(0)
    model = small_vit("rezero", depth=3)
    x = torch.randn(2, 5, 16)
    for block in model.blocks:
        assert all(gate.item() == 0 for gate in block.gates.values())
        assert torch.equal(block(x), x)
    probes = stream_probes(model, torch.randn(2, 3, 32, 32))
    assert torch.all(probes["rel_update"] == 0)
    assert torch.all(probes["stream_norm"] == probes["stream_norm"][0])
    assert torch.all(probes["angular_distance"] == 0)  # output == input: exactly no angle
    assert torch.all(skip_loss_delta(model, torch.randn(2, 3, 32, 32), torch.tensor([1, 7])) == 0)


def test_rezero_without_residual_is_rejected() -> None:
    with pytest.raises(ConfigError, match="residual=false cannot be used with norm_placement=rezero"):
        build_model(vit_config("rezero", residual=False))


def expected_params(placement: str, pool: str, norm: str, depth: int = 2, dim: int = 16, heads: int = 2) -> int:
    hidden, tokens = 2 * dim, 16 + (pool == "cls")

    def norm_params(width: int) -> int:
        return {"dyt": 2 * width + 1, "derf": 2 * width + 2}.get(placement, 2 * width if norm == "layernorm" else width)

    norms_per_block = {"post": 2, "pre": 2, "sandwich": 4, "deepnorm": 2, "rezero": 0, "none": 0,
                       "mix": 2, "lns": 2, "dyt": 2, "peri": 4, "derf": 2, "hybrid": 1}  # fmt: skip
    block = 4 * (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
    block += norms_per_block[placement] * norm_params(dim) + (2 if placement == "rezero" else 0)
    block += 3 * norm_params(dim // heads) if placement == "hybrid" else 0  # its q, k and v norms
    final_norm = norm_params(dim) if placement not in ("post", "deepnorm", "rezero", "none") else 0
    embedding = 3 * dim * 8 * 8 + dim + tokens * dim + (dim if pool == "cls" else 0)
    return embedding + depth * block + final_norm + dim * 10 + 10


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_shapes_params_and_final_norm(placement: str, pool: str, norm: str) -> None:
    model = small_vit(placement, pool=pool, norm=norm)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    assert count_params(model) == expected_params(placement, pool, norm)
    assert (model.final_norm is not None) == (placement not in ("post", "deepnorm", "rezero", "none"))
    assert (model.cls_token is not None) == (pool == "cls")
    norm_type = nn.LayerNorm if norm == "layernorm" else nn.RMSNorm
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))]
    assert all(type(m) is norm_type for m in norms)


def test_mean_pool_averages_the_patch_tokens() -> None:
    torch.manual_seed(0)
    model = small_vit("post", pool="mean").eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = model.patch_embed(images).flatten(2).transpose(1, 2) + model.pos_embed
    for block in model.blocks:
        tokens = block(tokens)
    torch.testing.assert_close(model(images), model.head(tokens.mean(dim=1)))


def test_macs_include_attention_products() -> None:
    dim, hidden, tokens, depth = 16, 32, 17, 2
    patch_embed = 16 * dim * 3 * 8 * 8
    per_block = tokens * (4 * dim * dim + 2 * dim * hidden) + 2 * tokens * tokens * dim
    expected = patch_embed + depth * per_block + dim * 10
    assert model_size(vit_config(depth=depth)).macs == count_macs(small_vit(depth=depth)) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"placement": "middle"}, "model.norm_placement must be one of post, pre, sandwich, deepnorm, rezero, none"),
        ({"pool": "max"}, "model.pool must be one of cls, mean; got 'max'"),
        ({"norm": "batchnorm"}, "model.norm must be one of layernorm, rmsnorm; got 'batchnorm'"),
        ({"heads": 3}, "model.dim must be divisible by model.heads"),
        ({"depth": 0}, "model.depth must be a positive integer"),
    ],
)  # fmt: skip
def test_bad_values_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(vit_config(**kwargs))


def test_base_yaml_builds() -> None:
    cfg = OmegaConf.load(MODEL_CONFIGS / "base" / "vit.yaml")
    assert (cfg.depth, cfg.dim, cfg.heads, cfg.patch_size, cfg.pool) == (12, 192, 3, 4, "cls")
    assert (cfg.norm_placement, cfg.residual, cfg.norm) == ("pre", True, "layernorm")
    cfg.depth, cfg.dim = 1, 12
    assert build_model(cfg)(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    ("name", "placement", "residual"),
    [("vit_post", "post", True), ("vit_pre", "pre", True), ("vit_sandwich", "sandwich", True),
     ("vit_deepnorm", "deepnorm", True), ("vit_rezero", "rezero", True), ("vit_plain", "post", False)],
)  # fmt: skip
def test_named_configs(name: str, placement: str, residual: bool) -> None:
    cfg = compose([f"model={name}", "model.depth=2", "model.dim=12"]).model
    assert (cfg.arch, cfg.name, cfg.norm_placement, cfg.residual) == ("vit", name, placement, residual)
    model = build_model(cfg)
    assert isinstance(model, ViT) and len(model.blocks) == 2
    assert all(block.placement == placement and block.residual == residual for block in model.blocks)


def test_plain_twin_is_layernorm_of_the_sublayer() -> None:
    """vit_plain's block: x <- LN(G(x)) per sublayer, no skip anywhere."""
    torch.manual_seed(0)
    block = small_vit("post", residual=False).blocks[0]
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        h = F.layer_norm(block.attn(x), (16,))
        expected = F.layer_norm(block.mlp(h), (16,))
        torch.testing.assert_close(block(x), expected)


def test_compose_deepnorm_with_depth_override() -> None:
    cfg = compose(["model=vit_deepnorm", "model.depth=48"]).model
    assert cfg.depth == 48 and cfg.norm_placement == "deepnorm"


# Probes.


def embedded_tokens(model: ViT, images: torch.Tensor) -> torch.Tensor:
    x = model.patch_embed(images).flatten(2).transpose(1, 2)
    x = torch.cat([model.cls_token.expand(len(x), -1, -1), x], dim=1)
    return x + model.pos_embed


def token_norm(x: torch.Tensor) -> torch.Tensor:
    return x.norm(dim=-1).mean()


def test_stream_probes_shapes_and_device() -> None:
    model = small_vit(depth=3)
    probes = stream_probes(model, torch.randn(2, 3, 32, 32))
    assert set(probes) == {"stream_norm", "rel_update", "angular_distance"}
    for values in probes.values():
        assert values.shape == (3,) and values.dtype == torch.float32 and values.device.type == "cpu"


@pytest.mark.parametrize("placement", ["pre", "deepnorm"])
def test_stream_probes_match_manual_computation(placement: str) -> None:
    torch.manual_seed(0)
    model = small_vit(placement, depth=2)
    images = torch.randn(2, 3, 32, 32)
    alpha = deepnorm_alpha(2) if placement == "deepnorm" else 1.0
    stream_norms, rel_updates = [], []
    with torch.no_grad():
        x = embedded_tokens(model, images)
        for block in model.blocks:
            ratios = []
            for name in ("attn", "mlp"):
                sublayer = getattr(block, name)
                if placement == "pre":
                    update = sublayer(F.layer_norm(x, (16,)))
                    ratios.append(token_norm(update) / token_norm(x))
                    x = x + update
                else:
                    update = sublayer(x)
                    ratios.append(token_norm(update) / token_norm(alpha * x))
                    x = F.layer_norm(alpha * x + update, (16,))
            stream_norms.append(token_norm(x))
            rel_updates.append(sum(ratios) / 2)
    probes = stream_probes(model, images)
    torch.testing.assert_close(probes["stream_norm"], torch.stack(stream_norms))
    torch.testing.assert_close(probes["rel_update"], torch.stack(rel_updates))


def test_rel_update_without_residual_divides_by_the_input() -> None:
    torch.manual_seed(0)
    model = small_vit("pre", residual=False, depth=1)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        x = embedded_tokens(model, images)
        block = model.blocks[0]
        attn_update = block.attn(F.layer_norm(x, (16,)))
        mlp_update = block.mlp(F.layer_norm(attn_update, (16,)))
        attn_ratio = token_norm(attn_update) / token_norm(x)
        mlp_ratio = token_norm(mlp_update) / token_norm(attn_update)
        expected = (attn_ratio + mlp_ratio) / 2
    torch.testing.assert_close(stream_probes(model, images)["rel_update"], expected.reshape(1))


def hand_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """arccos(cos_sim) / pi per vector (last dim), averaged; in float64."""
    cos = F.cosine_similarity(a.double(), b.double(), dim=-1).clamp(-1, 1)
    return (torch.arccos(cos) / math.pi).mean().item()


def test_angular_distance_matches_hand_computation() -> None:
    torch.manual_seed(0)
    model = small_vit("pre", depth=2).train()
    images = torch.randn(2, 3, 32, 32)
    expected = []
    with torch.no_grad():
        x = embedded_tokens(model, images)
        for block in model.blocks:
            y = x + block.attn(F.layer_norm(x, (16,)))
            y = y + block.mlp(F.layer_norm(y, (16,)))
            expected.append(hand_angle(x, y))
            x = y
    probes = stream_probes(model, images)
    assert probes["angular_distance"].tolist() == pytest.approx(expected, rel=1e-4)
    assert all(0 < a < 0.5 for a in expected)
    assert model.training


def test_skip_loss_delta_matches_a_hand_built_model() -> None:
    torch.manual_seed(0)
    model = small_vit("pre", depth=3).train()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    blocks = list(model.blocks)
    with torch.no_grad():
        def loss(kept: list[Block]) -> float:
            x = embedded_tokens(model, images)
            for block in kept:
                x = block(x)
            return F.cross_entropy(model.head(model.final_norm(x)[:, 0]), labels).item()
        expected = [loss(blocks[:i] + blocks[i + 1:]) - loss(blocks) for i in range(3)]
    delta = skip_loss_delta(model, images, labels)
    assert delta.shape == (3,) and delta.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert all(abs(d) > 1e-5 for d in expected)
    assert list(model.blocks) == blocks and all(m.training for m in model.modules())  # restored


@pytest.mark.parametrize("training", [True, False])
def test_recording_is_switched_off_and_mode_restored(training: bool) -> None:
    model = small_vit().train(training)
    stream_probes(model, torch.randn(2, 3, 32, 32))
    assert all(not block.recording and block.records == {} for block in model.blocks)
    assert all(module.training == training for module in model.modules())
    # And a normal forward records nothing.
    model(torch.randn(1, 3, 32, 32))
    assert all(block.records == {} for block in model.blocks)


def test_block_grad_norms_match_manual_computation() -> None:
    torch.manual_seed(0)
    model = small_vit(depth=3)
    assert block_grad_norms(model).tolist() == [0.0, 0.0, 0.0]  # before any backward
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    expected = []
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        matrices = [attn.q, attn.k, attn.v, attn.out, mlp.fc1, mlp.fc2]
        expected.append(torch.sqrt(sum((m.weight.grad**2).sum() for m in matrices)))
    got = block_grad_norms(model)
    assert got.shape == (3,) and torch.all(got > 0)
    torch.testing.assert_close(got, torch.stack(expected))


def test_pre_ln_stream_grows_with_depth_post_ln_does_not() -> None:
    """The reference's claim: Pre-LN's residual stream norm grows with depth at init; under
    Post-LN every block ends in a LayerNorm, so each token's norm stays at sqrt(dim)."""
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    pre = stream_probes(small_vit("pre", depth=12, dim=128), images)["stream_norm"]
    assert torch.all(pre[1:] > pre[:-1]) and pre[-1] > 1.02 * pre[0]
    torch.manual_seed(0)
    post = stream_probes(small_vit("post", depth=12, dim=128), images)["stream_norm"]
    torch.testing.assert_close(post, torch.full((12,), math.sqrt(128)), rtol=1e-4, atol=0)


def test_probes_need_blocks() -> None:
    vgg = build_model({"arch": "vgg", "depth": 11, "width": 0.25})
    assert supports_probes(small_vit()) and not supports_probes(vgg)
    with pytest.raises(ResexpError, match="no blocks to probe"):
        stream_probes(vgg, torch.randn(1, 3, 32, 32))
    with pytest.raises(ResexpError, match="no blocks to probe"):
        block_grad_norms(vgg)
    assert isinstance(small_vit().blocks[0], Block)
