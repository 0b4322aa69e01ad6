"""`resexp block`: one block's steps against hand computation, the chart and the CLI's errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from resexp.cli import app
from resexp.errors import ConfigError
from resexp.views.block import block_steps, draw_block

X = [1.0, 2.0, 3.0, 4.0]


def seeded_sublayer(dim: int = 4, seed: int = 42) -> tuple[torch.Tensor, torch.Tensor]:
    """The W and b block_steps documents: W ~ N(0, 1/dim), then b ~ N(0, 0.1²), from seed."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(dim, dim, generator=generator) / math.sqrt(dim)
    return weight, 0.1 * torch.randn(dim, generator=generator)


def layernorm(v: torch.Tensor) -> torch.Tensor:
    return (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + 1e-5)


def assert_steps(steps: list[tuple[str, torch.Tensor]], expected: list[tuple[str, torch.Tensor]]) -> None:
    assert [name for name, _ in steps] == [name for name, _ in expected]
    for (name, got), (_, want) in zip(steps, expected):
        torch.testing.assert_close(got, want, msg=name)


def test_pre_steps_by_hand() -> None:
    weight, bias = seeded_sublayer()
    x = torch.tensor(X)
    normed = layernorm(x)
    g = weight @ normed + bias
    assert_steps(block_steps("pre", x=X), [("input x", x), ("LN(x)", normed), ("G(...)", g), ("sum", x + g)])


def test_post_steps_by_hand() -> None:
    weight, bias = seeded_sublayer()
    x = torch.tensor(X)
    g = weight @ x + bias
    expected = [("input x", x), ("G(...)", g), ("sum", x + g), ("LN(sum)", layernorm(x + g))]
    assert_steps(block_steps("post", x=X), expected)


def test_sandwich_steps_by_hand() -> None:
    weight, bias = seeded_sublayer()
    x = torch.tensor(X)
    normed = layernorm(x)
    g = weight @ normed + bias
    expected = [("input x", x), ("LN(x)", normed), ("G(...)", g), ("LN_out(G)", layernorm(g)),
                ("sum", x + layernorm(g))]  # fmt: skip
    assert_steps(block_steps("sandwich", x=X), expected)


@pytest.mark.parametrize("blocks", [1, 6])
def test_deepnorm_steps_scale_the_skip_term(blocks: int) -> None:
    weight, bias = seeded_sublayer()
    x = torch.tensor(X)
    g = weight @ x + bias
    alpha = (2 * blocks) ** 0.25
    total = alpha * x + g
    expected = [("input x", x), ("G(...)", g), ("α·x + G(x)", total), ("LN(sum)", layernorm(total))]
    assert_steps(block_steps("deepnorm", x=X, blocks=blocks), expected)


def test_seed_draws_w_b_and_then_x() -> None:
    weight, bias = seeded_sublayer(dim=3, seed=7)
    generator = torch.Generator().manual_seed(7)
    for shape in ((3, 3), (3,)):  # W, then b: x comes third from the same generator
        torch.randn(shape, generator=generator)
    x = torch.randn(3, generator=generator)
    steps = dict(block_steps("post", dim=3, seed=7))
    torch.testing.assert_close(steps["input x"], x)
    torch.testing.assert_close(steps["G(...)"], weight @ x + bias)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"placement": "rezero"}, "placement must be one of pre, post, sandwich, deepnorm, mix, lns, dyt, peri, derf, hybrid; got 'rezero'"),
        ({"placement": "pre", "x": [1.0, 2.0]}, r"x must have 4 values"),
        ({"placement": "pre", "dim": 1}, "--dim must be an integer from 2 to 32"),
        ({"placement": "deepnorm", "blocks": 0}, "--blocks must be a positive integer"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        block_steps(**kwargs)


def test_draw_block_writes_a_png(tmp_path: Path) -> None:
    path = draw_block(block_steps("sandwich"), "sandwich", tmp_path / "sub" / "block.png")
    assert path == tmp_path / "sub" / "block.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_steps_and_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "block_post.png"
    result = CliRunner().invoke(app, ["block", "--placement", "post", "--x", "1,2,3,4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and f"wrote {out}" in result.output
    for name in ("input x", "G(...)", "sum", "LN(sum)"):
        assert name in result.output
    # LN(sum) has mean 0 and variance 1 (up to eps): its norm, the last column, is 2 for dim 4.
    normed_row = next(line for line in result.output.splitlines() if "LN(sum)" in line)
    assert normed_row.rstrip(" │").endswith("2.0000")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--placement", "rezero"], "placement must be one of pre, post, sandwich, deepnorm, mix, lns, dyt, peri, derf, hybrid; got 'rezero'"),
        (["--x", "1,2,3"], "--x has 3 values but --dim is 4"),
        (["--x", "1,two,3,4"], "--x must be 4 comma-separated numbers"),
        (["--x", "1,2,3,4", "--seed", "1"], "give --seed or --x, not both"),
        (["--dim", "3", "--x", "1,2,3,4"], "--x has 4 values but --dim is 3"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["block", *args, "-o", str(tmp_path / "b.png")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resexp: error: ") and message in lines[0], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "b.png").exists()
