"""Config composition and the CLI's one-line errors for bad input."""

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

from resexp.cli import app
from resexp.cli_support import complete_override
from resexp.config import GROUPS, compose, group_choices, load_model_config
from resexp.rundir import flatten_keys
from resexp.errors import ConfigError


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["model=foo"], "unknown model 'foo'; choose from: plain20, plain32"),
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
    assert group_choices("model")[:5] == ["plain20", "plain32", "plain44", "plain56", "plain110"]
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


@pytest.mark.parametrize("overrides", [["model=plain56", "data=synthetic", "optim.lr=0.05", "seed=3"],
                                       ["model=vit_pre", "optim=adamw", "trainer.max_iters=100"]])
def test_train_cfg_job_prints_a_config_that_composes_back(overrides, tmp_path):
    result = CliRunner().invoke(app, ["train", *overrides, f"run.root={tmp_path}", "--cfg", "job"])
    assert result.exit_code == 0, result.output
    printed = OmegaConf.create(result.output)
    composed = compose([*overrides, f"run.root={tmp_path}"])
    assert OmegaConf.to_container(printed) == OmegaConf.to_container(composed, resolve=True)
    # The printed YAML, turned back into key=value overrides, composes to the same config.
    again = compose([*(o for o in overrides if o.split("=")[0] in GROUPS),
                     *(f"{k}={json.dumps(v)}" for k, v in flatten_keys(OmegaConf.to_container(printed)).items())])
    assert OmegaConf.to_container(again, resolve=True) == OmegaConf.to_container(printed)
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("value", ["é", "it's", "a&b"])
def test_a_value_that_needs_quotes_names_the_quoted_form_and_that_form_composes(value, tmp_path):
    refused = CliRunner().invoke(app, ["train", f"run.name={value}", "--cfg", "job"])
    line = refused.stderr.strip()
    assert refused.exit_code == 2 and "\n" not in line and line.startswith(f"resexp: error: cannot read override "
                                                                           f"'run.name={value}'")
    quoted = line.split("quote the value inside the argument: ")[1].rsplit(" (in a shell: ", 1)[0]
    printed = CliRunner().invoke(app, ["train", quoted, f"run.root={tmp_path}/a b", "--cfg", "job"])
    assert printed.exit_code == 0, printed.output
    run = OmegaConf.create(printed.output).run  # spaces need no quotes: Hydra keeps those inside a value
    assert (run.name, run.dir) == (value, f"{tmp_path}/a b/{value}")


def test_train_cfg_all_adds_the_hydra_settings_and_bad_part_is_one_line():
    result = CliRunner().invoke(app, ["train", "model=plain20", "--cfg", "all"])
    assert result.exit_code == 0, result.output
    printed = OmegaConf.create(result.output)
    assert set(printed.hydra) == {"sweep", "sweeper", "launcher"} and printed.model.name == "plain20"
    assert printed.hydra.sweep.dir.endswith("sweeps/adhoc")
    bad = CliRunner().invoke(app, ["train", "--cfg", "every"])
    assert bad.exit_code == 2 and "unknown --cfg 'every'; choose from: job, all" in bad.output


@pytest.mark.parametrize("typed, incomplete, expected", [
    ([], "model=resnet1", ["model=resnet110", "model=resnet1202"]),
    ([], "model=plain20,resnet5", ["model=plain20,resnet56"]),  # the last item of a sweep
    ([], "trainer.precision=", ["trainer.precision=auto", "trainer.precision=fp32", "trainer.precision=bf16",
                                "trainer.precision=fp16"]),
    ([], "model.residual=t", ["model.residual=true"]),
    ([], "hydra/launcher=sub", ["hydra/launcher=submitit_local", "hydra/launcher=submitit_slurm"]),
    (["model=vit_pre"], "model.norm", ["model.norm_placement=", "model.norm="]),  # keys of the chosen model
    ([], "trainer.max_it", ["trainer.max_iters="]),
    ([], "sweep=fig", ["sweep=figure6", "sweep=figure6_seeds"]),
])
def test_completion_of_overrides(typed, incomplete, expected):
    assert complete_override(typed, incomplete) == expected


def test_shell_completion_through_the_bash_protocol():
    """What the script `resexp --install-completion bash` installs asks: bash splits at '='."""
    def complete(words, cword):
        env = {**os.environ, "_RESEXP_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        done = subprocess.run([sys.executable, "-c", "from resexp.cli import app; app(prog_name='resexp')"],
                              env=env, capture_output=True, text=True)
        return done.stdout.split()

    assert complete("resexp train model = resnet5", 4) == ["resnet56"]
    assert "resnet56" in complete("resexp train model =", 3)
    assert complete("resexp train trainer.graph =", 3) == ["auto", "always", "never"]
    assert complete("resexp sweep fig", 2) == ["figure6", "figure6_seeds"]
    assert complete("resexp sta", 1) == ["status"]


def test_paper_presets_split_batch_norm_into_64_image_halves_and_others_do_not():
    for preset in ("figure6", "figure6_seeds", "table6"):
        cfg = compose([f"sweep={preset}", "model=resnet56"])
        assert (cfg.model.bn_batch, cfg.trainer.batch_size) == (64, 128), preset
    assert compose(["model=resnet56"]).model.bn_batch is None
    assert compose(["sweep=demo", "model=resnet56"]).model.bn_batch is None
    with pytest.raises(ConfigError, match=r"trainer.batch_size must be a multiple of model.bn_batch=48 .*got 128"):
        compose(["model=resnet20", "model.bn_batch=48"])
