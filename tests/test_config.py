"""Config composition and the CLI's one-line errors for bad input."""

import subprocess
import sys

import pytest

from resexp.config import compose, group_choices, load_model_config
from resexp.errors import ConfigError


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["model=foo"], "unknown model 'foo'; choose from: plain110, plain20"),
        (["data=imagenet"], "unknown data 'imagenet'; choose from: cifar10, cifar100, fashion_mnist, synthetic"),
        (["trainer.foo=1"], "unknown key 'trainer.foo'; valid keys in trainer: batch_size"),
        (["trainer.max_iters=abc"], "trainer.max_iters must be a positive integer; got 'abc'"),
        (["model.residual=maybe"], "model.residual must be true or false"),
        (["optim.lr=fast"], "optim.lr must be a number"),
        (["foo"], "overrides look like key=value"),
    ],
)
def test_bad_overrides_raise_one_line_errors(overrides, fragment):
    with pytest.raises(ConfigError) as error:
        compose(overrides)
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_named_models_and_value_overrides():
    assert group_choices("model")[:5] == ["plain110", "plain20", "plain32", "plain44", "plain56"]
    cfg = compose(["model=plain56", "optim.lr=0.05", "trainer.max_iters=2000", "data=synthetic"])
    assert (cfg.model.depth, cfg.model.residual, cfg.model.shortcut) == (56, False, "A")
    assert cfg.optim.lr == 0.05 and cfg.trainer.max_iters == 2000 and cfg.data.name == "synthetic"
    assert compose(["model=resnet20", "model.depth=86"]).model.depth == 86
    assert load_model_config("resnet1202").depth == 1202


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "resexp.cli", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["model=plain57"], "unknown model 'plain57'; choose from:"),
        (["model.depth=21", "data=synthetic"], "6n+2"),
        (["model.shortcut=C", "data=synthetic"], "shortcut"),
        (["trainer.batch_size=1.5"], "trainer.batch_size must be a positive integer; got 1.5"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_no_traceback(args, fragment, tmp_path):
    result = _cli("train", *args, f"run.root={tmp_path}")
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_missing_cifar_says_where_to_put_it(tmp_path):
    result = _cli("train", f"data.root={tmp_path}/nowhere", "data.download=false", f"run.root={tmp_path}")
    assert result.returncode == 2
    assert f"{tmp_path}/nowhere" in result.stderr and "cifar-10" in result.stderr.lower()
    assert "Traceback" not in result.stderr
