"""The newer norm placements (mix, lns, dyt, peri, derf, hybrid) and qk_norm against hand-written formulas,
their schema keys and defaults, and their named configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from resexp.config import compose
from resexp.rundir import run_identity
from resexp.engine.train import train
from resexp.errors import ConfigError
from resexp.models import build_model
from resexp.models.vit import Derf, DyT, ViT
from resexp.views.block import block_steps

DIM = 16
NEW_KEYS = ("mix_ratio", "dyt_alpha", "qk_norm")


def small_vit(placement: str, depth: int = 2, **kwargs) -> ViT:
    # patch 8 on 32x32: 16 patches (17 tokens with cls), cheap on a shared CPU.
    return ViT(depth, DIM, 2, 2.0, 8, "cls", placement, True, "layernorm", **kwargs)


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Random affine parts (and DyT alphas), so every norm is told apart from the others."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, DyT, Derf)):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator))
            if isinstance(module, (DyT, Derf)):
                module.alpha.fill_(0.3 + torch.rand((), generator=generator).item())
            if isinstance(module, Derf):
                module.shift.fill_(torch.randn((), generator=generator).item())


def layernorm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def dyt(x: torch.Tensor, norm: DyT) -> torch.Tensor:
    return norm.weight * torch.tanh(norm.alpha * x) + norm.bias


def derf(x: torch.Tensor, norm: Derf) -> torch.Tensor:
    """Chen et al.'s Derf: gamma * erf(alpha * x + s) + beta, erf(z) = 2/sqrt(pi) * int_0^z exp(-t^2) dt."""
    return norm.weight * torch.special.erf(norm.alpha * x + norm.shift) + norm.bias


def tokens(seed: int = 1) -> torch.Tensor:
    return 2 * torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(seed)) + 0.5


def post_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = layernorm(x + block.attn(x), block.norms_out["attn"])
    return layernorm(h + block.mlp(h), block.norms_out["mlp"])


def pre_block(block: nn.Module, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    h = x + block.attn(layernorm(x, block.norms_in["attn"]) * scale)
    return h + block.mlp(layernorm(h, block.norms_in["mlp"]) * scale)


# One block against its formula.


def test_mix_blocks_match_post_then_pre() -> None:
    torch.manual_seed(0)
    model = small_vit("mix", depth=8, mix_ratio=0.25)
    randomise_norms(model)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model.blocks[1](x), post_block(model.blocks[1], x))  # block 2: Post-LN
        torch.testing.assert_close(model.blocks[2](x), pre_block(model.blocks[2], x))  # block 3: Pre-LN


@pytest.mark.parametrize(
    ("ratio", "post_blocks"), [(0.25, 2), (0.0, 0), (0.5, 4), (0.3, 2), (1.0, 8)]
)  # fmt: skip
def test_mix_switches_from_post_to_pre_at_floor_ratio_times_depth(ratio: float, post_blocks: int) -> None:
    model = small_vit("mix", depth=8, mix_ratio=ratio)
    assert [block.rules["attn"] for block in model.blocks] == ["post"] * post_blocks + ["pre"] * (8 - post_blocks)
    assert all(block.rules["mlp"] == block.rules["attn"] for block in model.blocks)
    for block in model.blocks:
        assert set(block.norms_out if block.rules["attn"] == "post" else block.norms_in) == {"attn", "mlp"}
        assert not (block.norms_in if block.rules["attn"] == "post" else block.norms_out)
    # Pre-LN blocks leave the stream un-normalised: a final norm unless every block is Post-LN.
    assert (model.final_norm is None) == (post_blocks == 8)


def test_mix_ratio_floor_is_exact_for_decimal_ratios() -> None:
    model = ViT(100, 8, 2, 1.0, 32, "mean", "mix", True, "layernorm", mix_ratio=0.29)  # 0.29*100 = 28.999...
    assert sum(block.rules["attn"] == "post" for block in model.blocks) == 29


def test_lns_block_matches_the_formula() -> None:
    torch.manual_seed(0)
    model = small_vit("lns", depth=4)
    randomise_norms(model)
    x = tokens()
    with torch.no_grad():
        for block in model.blocks:
            torch.testing.assert_close(block(x), pre_block(block, x, 1 / math.sqrt(block.layer)))


def test_lns_scales_the_normalised_input_of_block_l_by_one_over_sqrt_l() -> None:
    torch.manual_seed(0)
    model = small_vit("lns", depth=4)
    randomise_norms(model)
    x = tokens()
    attn_inputs: list[torch.Tensor] = []
    for block in model.blocks:
        block.attn.register_forward_pre_hook(lambda module, args: attn_inputs.append(args[0]))
    assert [block.layer for block in model.blocks] == [1, 2, 3, 4]
    with torch.no_grad():
        for layer, block in enumerate(model.blocks, start=1):
            block(x)
            normed = layernorm(x, block.norms_in["attn"])
            torch.testing.assert_close(attn_inputs[-1], normed / math.sqrt(layer))
    # Block 1's scale is 1: lns's first block is exactly Pre-LN.
    torch.manual_seed(0)
    pre = small_vit("pre", depth=4)
    torch.manual_seed(0)
    lns = small_vit("lns", depth=4)
    with torch.no_grad():
        assert torch.equal(pre.blocks[0](x), lns.blocks[0](x))
        assert not torch.allclose(pre.blocks[1](x), lns.blocks[1](x))


@pytest.mark.parametrize("placement", ["dyt", "derf"])
def test_pointwise_norm_block_matches_the_formula(placement: str) -> None:
    """DyT and Derf: the pre rule with each LayerNorm replaced by the pointwise function."""
    formula = {"dyt": dyt, "derf": derf}[placement]
    torch.manual_seed(0)
    model = small_vit(placement)
    randomise_norms(model)
    block, x = model.blocks[0], tokens()
    with torch.no_grad():
        h = x + block.attn(formula(x, block.norms_in["attn"]))
        torch.testing.assert_close(block(x), h + block.mlp(formula(h, block.norms_in["mlp"])))


def test_dyt_replaces_every_layernorm_and_learns_one_alpha_per_dyt() -> None:
    torch.manual_seed(0)
    model = small_vit("dyt", dyt_alpha=0.7, qk_norm=True)
    assert not any(isinstance(m, (nn.LayerNorm, nn.RMSNorm)) for m in model.modules())
    dyts = [m for m in model.modules() if isinstance(m, DyT)]
    # Per block: two pre-norms and qk_norm's two, plus the final norm.
    assert len(dyts) == 2 * 4 + 1 and isinstance(model.final_norm, DyT)
    parameters = set(model.parameters())
    for norm in dyts:
        assert isinstance(norm.alpha, nn.Parameter) and norm.alpha.shape == () and norm.alpha in parameters
        assert norm.alpha.item() == pytest.approx(0.7)
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    assert all(norm.alpha.grad is not None and norm.alpha.grad != 0 for norm in dyts)


def test_dyt_alpha_default() -> None:
    assert all(m.alpha.item() == 0.5 for m in small_vit("dyt").modules() if isinstance(m, DyT))


def test_torch_erf_is_the_error_function() -> None:
    """Derf's erf against its Maclaurin series at one point, so the formula is not torch.erf against itself."""
    z = 0.37
    series = 2 / math.sqrt(math.pi) * sum((-1) ** n * z ** (2 * n + 1) / (math.factorial(n) * (2 * n + 1))
                                          for n in range(12))
    assert torch.erf(torch.tensor(z, dtype=torch.float64)).item() == pytest.approx(series, rel=1e-12)


def test_derf_replaces_every_layernorm_with_the_published_init_and_learns_alpha_and_shift() -> None:
    torch.manual_seed(0)
    model = small_vit("derf", qk_norm=True)
    assert not any(isinstance(m, (nn.LayerNorm, nn.RMSNorm, DyT)) for m in model.modules())
    derfs = [m for m in model.modules() if isinstance(m, Derf)]
    assert len(derfs) == 2 * 4 + 1 and isinstance(model.final_norm, Derf)  # 2 pre-norms + 2 qk norms per block
    parameters = set(model.parameters())
    for norm in derfs:
        assert norm.alpha.item() == 0.5 and norm.shift.item() == 0.0  # zlab-princeton/Derf's defaults
        assert norm.alpha in parameters and norm.shift in parameters and norm.alpha.shape == norm.shift.shape == ()
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    assert all(norm.alpha.grad != 0 and norm.shift.grad != 0 for norm in derfs)


def per_head(z: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, dim = z.shape
    return z.view(batch, length, heads, dim // heads).transpose(1, 2)


def hybrid_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """HybridNorm's attention written out: LayerNorm each head's q, k and v, softmax(q k^T / sqrt(d)) v."""
    heads = attn.heads
    q = layernorm(per_head(attn.q(x), heads), attn.q_norm)
    k = layernorm(per_head(attn.k(x), heads), attn.k_norm)
    v = layernorm(per_head(attn.v(x), heads), attn.v_norm)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    mixed = (weights @ v).transpose(1, 2).reshape(x.shape)
    return attn.out(mixed)


def test_hybrid_block_matches_the_formula() -> None:
    """Zhuo et al.'s HybridNorm: Y = X + Attn_QKV-norm(X), then Norm(Y) + FFN(Norm(Y))."""
    torch.manual_seed(0)
    model = small_vit("hybrid")
    randomise_norms(model)
    block, x = model.blocks[0], tokens()
    assert set(block.norms_in) == {"mlp"} and not block.norms_out
    assert all(norm.normalized_shape == (DIM // 2,) for norm in (block.attn.q_norm, block.attn.k_norm,
                                                                 block.attn.v_norm))
    with torch.no_grad():
        y = x + hybrid_attention(block.attn, x)
        normed = layernorm(y, block.norms_in["mlp"])
        torch.testing.assert_close(block(x), normed + block.mlp(normed), rtol=1e-5, atol=1e-5)
    assert isinstance(model.final_norm, nn.LayerNorm)  # the stream after the last FFN is not normalised


def test_hybrid_without_residual_drops_both_skips() -> None:
    torch.manual_seed(0)
    model = ViT(2, DIM, 2, 2.0, 8, "cls", "hybrid", False, "layernorm")
    randomise_norms(model)
    block, x = model.blocks[0], tokens()
    with torch.no_grad():
        y = hybrid_attention(block.attn, x)
        torch.testing.assert_close(block(x), block.mlp(layernorm(y, block.norms_in["mlp"])), rtol=1e-5, atol=1e-5)


def test_peri_is_sandwich_bit_for_bit() -> None:
    torch.manual_seed(3)
    sandwich = small_vit("sandwich", depth=3)
    torch.manual_seed(3)
    peri = small_vit("peri", depth=3)
    sandwich_state, peri_state = sandwich.state_dict(), peri.state_dict()
    assert list(sandwich_state) == list(peri_state)
    assert all(torch.equal(sandwich_state[k], peri_state[k]) for k in sandwich_state)
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(sandwich(images), peri(images))


# qk_norm.


def attention_by_hand(attn: nn.Module, x: torch.Tensor, normalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention output and its logits q·kᵀ/sqrt(head dim), heads split as (batch, head, token, dim)."""
    batch, count, dim = x.shape
    head_dim = dim // attn.heads

    def split(z: torch.Tensor) -> torch.Tensor:
        return z.view(batch, count, attn.heads, head_dim).transpose(1, 2)

    queries, keys, values = split(attn.q(x)), split(attn.k(x)), split(attn.v(x))
    if normalise:
        queries, keys = layernorm(queries, attn.q_norm), layernorm(keys, attn.k_norm)
    logits = queries @ keys.transpose(-1, -2) / math.sqrt(head_dim)
    mixed = torch.softmax(logits, dim=-1) @ values
    return attn.out(mixed.transpose(1, 2).reshape(batch, count, dim)), logits


@pytest.mark.parametrize("placement", ["pre", "post", "mix"])
def test_qk_norm_normalises_queries_and_keys_per_head(placement: str) -> None:
    torch.manual_seed(0)
    attn = small_vit(placement, qk_norm=True).blocks[0].attn
    assert isinstance(attn.q_norm, nn.LayerNorm) and attn.q_norm.normalized_shape == (DIM // 2,)
    normed: dict[str, torch.Tensor] = {}
    attn.q_norm.register_forward_hook(lambda module, args, out: normed.update(q=out))
    attn.k_norm.register_forward_hook(lambda module, args, out: normed.update(k=out))
    x = tokens()
    with torch.no_grad():
        got = attn(x)
        expected, logits = attention_by_hand(attn, x, normalise=True)
        _, raw_logits = attention_by_hand(attn, x, normalise=False)
    torch.testing.assert_close(got, expected)
    assert (logits - raw_logits).abs().max() > 0.1
    for name in ("q", "k"):  # (batch, head, token, head dim); fresh LN: zero mean, unit variance per head
        projected = getattr(attn, name)(x).view(2, 5, 2, DIM // 2).transpose(1, 2)
        raw_var = projected.var(-1, unbiased=False)
        assert normed[name].shape == (2, 2, 5, DIM // 2)
        torch.testing.assert_close(normed[name].mean(-1), torch.zeros(2, 2, 5), atol=1e-5, rtol=0)
        # Unit variance up to LN's eps: var / (var + eps), the small init's q and k have var ~ 0.01.
        torch.testing.assert_close(normed[name].var(-1, unbiased=False), raw_var / (raw_var + attn.q_norm.eps))
        assert torch.all((normed[name].var(-1, unbiased=False) - 1).abs() < 0.01)


def test_qk_norm_changes_the_model_and_follows_the_norm_type() -> None:
    images = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    plain = small_vit("pre")
    torch.manual_seed(0)
    normed = small_vit("pre", qk_norm=True)
    assert plain.blocks[0].attn.q_norm is None
    assert not torch.allclose(plain(images), normed(images))
    rms = ViT(1, DIM, 2, 2.0, 8, "cls", "pre", True, "rmsnorm", qk_norm=True).blocks[0].attn
    assert isinstance(rms.q_norm, nn.RMSNorm) and isinstance(rms.k_norm, nn.RMSNorm)
    assert isinstance(small_vit("dyt", qk_norm=True).blocks[0].attn.k_norm, DyT)


# Schema, identity, configs.


def vit_config(**keys) -> dict:
    return {"arch": "vit", "depth": 2, "dim": DIM, "heads": 2, "mlp_ratio": 2.0, "patch_size": 8, "pool": "cls",
            "norm_placement": "mix", "residual": True, "norm": "layernorm", **keys}


def test_schema_refuses_bad_mix_ratio_and_dyt_alpha_in_one_line() -> None:
    with pytest.raises(ConfigError) as error:
        build_model(vit_config(mix_ratio=1.5, dyt_alpha=0))
    message = str(error.value)
    assert "\n" not in message
    assert "model.mix_ratio must be a number in [0, 1]; got 1.5" in message
    assert "model.dyt_alpha must be a positive number; got 0" in message
    for bad in ({"mix_ratio": -0.1}, {"dyt_alpha": -1.0}, {"qk_norm": "yes"}):
        with pytest.raises(ConfigError, match=f"model.{next(iter(bad))} must be"):
            build_model(vit_config(**bad))
    build_model(vit_config(mix_ratio=0, dyt_alpha=1e-3))  # the edges that are allowed


def test_new_keys_have_defaults_in_the_composed_config() -> None:
    model = compose(["model=vit_pre"]).model
    assert (model.mix_ratio, model.dyt_alpha, model.qk_norm) == (0.25, 0.5, False)


def test_old_vit_config_keeps_its_run_identity() -> None:
    new = OmegaConf.to_container(compose(["model=vit_pre"]), resolve=True)
    old = OmegaConf.to_container(compose(["model=vit_pre"]), resolve=True)
    for key in NEW_KEYS:
        del old["model"][key]
    assert run_identity(old) == run_identity(new)
    assert run_identity(old)["model"]["qk_norm"] is False
    changed = OmegaConf.to_container(compose(["model=vit_pre", "model.qk_norm=true"]), resolve=True)
    assert run_identity(changed) != run_identity(old)
    # And an old config still builds the same model: the constructor's defaults are the schema's.
    torch.manual_seed(0)
    old_model = build_model(old["model"])
    torch.manual_seed(0)
    new_model = build_model(new["model"])
    images = torch.randn(1, 3, 32, 32)
    assert torch.equal(old_model(images), new_model(images))


@pytest.mark.parametrize("placement", ["mix", "lns", "dyt", "peri", "derf", "hybrid"])
def test_named_config_builds_and_trains(placement: str, tmp_path: Path) -> None:
    cfg = compose([f"model=vit_{placement}", "data=synthetic", "data.train_size=256", "data.test_size=64",
                   "trainer.batch_size=32", "trainer.max_iters=2", "trainer.eval_every=2", "trainer.log_every=1",
                   "trainer.progress=none", "model.dim=32", "model.heads=2", "model.depth=4", "model.patch_size=8",
                   f"run.root={tmp_path}"])  # fmt: skip
    assert (cfg.model.name, cfg.model.norm_placement, cfg.optim.name) == (f"vit_{placement}", placement, "adamw")
    summary = train(cfg)
    assert summary.status == "finished" and summary.iterations == 2 and summary.diverged_at is None
    assert 0 <= summary.test_error <= 100


# The single-block view shares the rule function.


def test_block_view_new_placements() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    pre = dict(block_steps("pre", x=x.tolist()))
    lns = dict(block_steps("lns", x=x.tolist()))
    torch.testing.assert_close(lns["LN(x)/√l"], pre["LN(x)"])  # l = 1
    torch.testing.assert_close(lns["sum"], pre["sum"])
    assert dict(block_steps("mix", x=x.tolist())).keys() == pre.keys()  # floor(0.25 * 1) = 0: Pre-LN
    post = dict(block_steps("post", x=x.tolist(), blocks=4))
    mix = dict(block_steps("mix", x=x.tolist(), blocks=4))  # floor(0.25 * 4) = 1: block 1 is Post-LN
    assert mix.keys() == post.keys() and all(torch.equal(mix[k], post[k]) for k in post)
    steps = dict(block_steps("dyt", x=x.tolist()))
    torch.testing.assert_close(steps["DyT(x)"], torch.tanh(0.5 * x))
    steps = dict(block_steps("derf", x=x.tolist()))
    torch.testing.assert_close(steps["Derf(x)"], torch.erf(0.5 * x))
    hybrid = dict(block_steps("hybrid", x=x.tolist()))
    assert list(hybrid) == ["input x", "LN(x)", "G(...)", "LN(x) + G(LN(x))"]
    torch.testing.assert_close(hybrid["LN(x)"], pre["LN(x)"])
    torch.testing.assert_close(hybrid["LN(x) + G(LN(x))"], pre["LN(x)"] + hybrid["G(...)"])
    sandwich, peri = block_steps("sandwich", x=x.tolist()), block_steps("peri", x=x.tolist())
    assert [n for n, _ in sandwich] == [n for n, _ in peri]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(sandwich, peri))
