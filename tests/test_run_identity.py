"""Run identity across schema versions: a run written before a key with a default existed
(model.zero_pad) is the same run as one that sets the default, so it resumes and groups with it."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from resexp.config import compose
from resexp.rundir import identity_changes, run_identity
from resexp.engine.checkpoint import save_checkpoint
from resexp.engine.train import train
from resexp.errors import ResexpError
from resexp.runs import Run, group_runs
from resexp.rundir import CHECKPOINT, RunDir, load_checkpoint

TINY = ["model=resnet20", "data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=0.25",
        "trainer.batch_size=32", "trainer.eval_every=2", "trainer.log_every=2", "trainer.progress=none"]


def without_zero_pad(cfg) -> dict:
    """The config as resexp wrote it before model.zero_pad existed."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    del plain["model"]["zero_pad"]
    return plain


def test_a_config_without_zero_pad_is_the_same_run_as_zero_pad_end():
    new = compose(["model=resnet56", "model.zero_pad=end"])
    old = without_zero_pad(new)
    assert run_identity(old) == run_identity(new)
    assert identity_changes(run_identity(old), run_identity(new)) == []
    split = run_identity(compose(["model=resnet56", "model.zero_pad=split"]))
    assert identity_changes(run_identity(old), split) == ['model.zero_pad ("end" there, "split" here)']


def test_reports_group_old_and_new_runs_together(tmp_path):
    summary = {"status": "finished", "eval_split": "test"}
    old = Run(tmp_path / "old", without_zero_pad(compose(["model=resnet20", "seed=0"])), summary)
    new = Run(tmp_path / "new", compose(["model=resnet20", "seed=1"]), summary)
    assert list(group_runs([old, new]).items()) == [("ResNet-20", [old, new])]


def test_a_run_written_without_zero_pad_resumes(tmp_path):
    cfg = compose([*TINY, "trainer.max_iters=2", f"run.root={tmp_path}"])
    train(cfg)
    run_dir = tmp_path / "resnet20_synthetic_seed0"
    # Rewrite the run as an older resexp left it: no zero_pad in config.yaml or the checkpoint.
    OmegaConf.save(OmegaConf.create(without_zero_pad(cfg)), run_dir / "config.yaml")
    state = load_checkpoint(run_dir / CHECKPOINT, torch.device("cpu"))
    identity = json.loads(state["run_identity"])
    del identity["model"]["zero_pad"]
    save_checkpoint({**state, "run_identity": json.dumps(identity, sort_keys=True)}, run_dir / CHECKPOINT)

    longer = compose([*TINY, "trainer.max_iters=4", f"run.root={tmp_path}"])
    assert RunDir(run_dir).check(longer) is None  # no refusal: it continues from the checkpoint
    summary = train(longer)
    assert (summary.status, summary.iterations) == ("finished", 4)
    assert [segment.start for segment in summary.segments] == [0, 2]

    with pytest.raises(ResexpError, match="model.zero_pad"):
        RunDir(run_dir).check(compose([*TINY, "model.zero_pad=split", "trainer.max_iters=6",
                                        f"run.root={tmp_path}"]))
