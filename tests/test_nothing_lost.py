"""Nothing lost under a fault: a second Ctrl-C, a checkpoint holding impossible values, a full disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

import resexp.engine.train as train_module
from resexp.cli import app
from resexp.engine.stopping import StopSignal
from test_failures import finished, snapshot  # noqa: F401,F811 (finished: the fixture of a finished run)

TINY = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=0.25", "trainer.batch_size=32",
        "trainer.log_every=2", "trainer.eval_every=4", "trainer.progress=none"]
RUN = "resnet20_synthetic_seed0"


def steps(run: Path, tag: str = "train/loss") -> list[int]:
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


# ---- a second signal ----

def test_a_second_signal_waits_for_the_checkpoint_being_saved_and_interrupts_otherwise():
    stop = StopSignal()
    stop._handle(signal.SIGINT, None)
    assert stop.reason == "SIGINT" and stop.stopping
    with stop.saving_checkpoint():
        stop._handle(signal.SIGINT, None)  # during the save: no interruption
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)
    paired = StopSignal()  # SLURM sends USR2 and TERM together: the second must not interrupt the save
    paired._handle(signal.SIGUSR2, None)
    paired._handle(signal.SIGTERM, None)
    assert paired.reason == "SIGUSR2"


def interrupt_at(iteration: int, monkeypatch) -> None:
    """A second Ctrl-C arriving mid-step at `iteration` (the first one is not needed for this path)."""
    real = train_module.learning_rate

    def learning_rate(cfg, at, *rest):
        if at == iteration:
            raise KeyboardInterrupt
        return real(cfg, at, *rest)

    monkeypatch.setattr(train_module, "learning_rate", learning_rate)


@pytest.mark.parametrize("checkpoint_every, kept", [(4, 4), (1000, None)])
def test_an_interrupted_run_says_what_is_on_disk_and_its_rerun_writes_each_point_once(tmp_path, monkeypatch,
                                                                                      checkpoint_every, kept):
    args = ["train", *TINY, "trainer.max_iters=10", f"trainer.checkpoint_every={checkpoint_every}",
            f"run.root={tmp_path}"]
    with monkeypatch.context() as patch:
        interrupt_at(6, patch)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 130
    [line] = result.stderr.strip().splitlines()
    run = tmp_path / RUN
    if kept:
        assert line.endswith(f"the last checkpoint is at iteration {kept}: the same command resumes from there")
        assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["iteration"] == kept
    else:
        assert line.endswith("no checkpoint was saved: the same command starts the run again")
        assert not (run / "checkpoints" / "last.pt").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["checkpoint_iteration"] == kept
    assert steps(run) == [2, 4, 6]  # written before the interruption
    rerun = CliRunner().invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    assert steps(run) == [2, 4, 6, 8, 10]  # each step once: what the stopped process wrote past its checkpoint is purged


# ---- a checkpoint that fits the run but holds nonsense ----

def forge(state: dict, change: str) -> None:
    if change == "negative iteration":
        state["iteration"] = -7
    elif change == "momentum of another shape":
        first = next(iter(state["optimizer"]["state"]))
        state["optimizer"]["state"][first]["momentum_buffer"] = torch.zeros(3)
    elif change == "batch order not a permutation":
        state["batcher"]["order"] = torch.zeros_like(state["batcher"]["order"])
    elif change == "batcher past its data":
        state["batcher"]["position"] = 10**6
    elif change == "infinite wall time":
        state["wall_time"] = float("nan")


@pytest.mark.parametrize("change", ["negative iteration", "momentum of another shape", "batch order not a permutation",
                                    "batcher past its data", "infinite wall time"])
def test_a_checkpoint_with_impossible_values_is_refused_and_nothing_changes(finished, tmp_path, change):
    root = tmp_path / "root"
    shutil.copytree(finished, root)
    path = root / RUN / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    forge(state, change)
    torch.save(state, path)
    before = snapshot(root)
    result = CliRunner().invoke(app, ["train", *TINY, "trainer.max_iters=30", f"run.root={root}"])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"resexp: error: {path} holds values no run can have (")
    assert snapshot(root) == before  # summary, config, events and checkpoint as they were


# ---- a full disk ----

def full_disk(tmp_path: Path, size: str):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    return mount


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="mounts a 3.5 MB tmpfs: Linux, root")
def test_a_full_disk_keeps_the_previous_checkpoint_says_so_and_the_run_resumes_after(tmp_path):
    disk = full_disk(tmp_path, "3500k")  # one plain-20 checkpoint (2.2 MB) fits, a second beside it does not
    try:
        full_width = [o for o in TINY if not o.startswith("model.width=")]
        args = ["train", "model=plain20", *full_width, "trainer.max_iters=8", "trainer.checkpoint_every=4",
                f"run.root={disk}"]
        result = subprocess.run([sys.executable, "-m", "resexp.cli", *args], capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        path = disk / "plain20_synthetic_seed0" / "checkpoints" / "last.pt"
        assert line.startswith(f"resexp: error: no space left on device: {path} needs about 2.1 MiB, ")
        assert "MiB free; the previous checkpoint is intact" in line
        assert torch.load(path, weights_only=True)["iteration"] == 4
        summary = json.loads((path.parent.parent / "summary.json").read_text())
        assert summary["status"] == "failed" and summary["error"].startswith("no space left on device")
        assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        again = subprocess.run([sys.executable, "-m", "resexp.cli", *args], capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        assert json.loads((path.parent.parent / "summary.json").read_text())["status"] == "finished"
    finally:
        subprocess.run(["umount", str(disk)])


def test_torch_s_own_write_failure_is_recognised_as_a_full_disk(tmp_path, monkeypatch):
    """torch reports a full disk as a RuntimeError of its zip writer, not as an OSError."""
    import resexp.engine.checkpoint as checkpoint

    def zip_writer_fails(state, f):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1024 vs 980")

    monkeypatch.setattr(checkpoint.torch, "save", zip_writer_fails)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(checkpoint.ResexpError, match=r"no space left on device: .* 0.0 MiB free; no checkpoint"):
        checkpoint.save_checkpoint({"w": torch.zeros(1000)}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 0, 10**9))
    with pytest.raises(RuntimeError, match="inline_container"):  # with room to spare it is not a full disk
        checkpoint.save_checkpoint({"w": torch.zeros(1000)}, tmp_path / "last.pt")
