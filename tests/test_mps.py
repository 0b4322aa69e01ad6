"""CUDA MPS for several runs per GPU: started privately, only where it helps and disturbs nothing,
and stopped afterwards. A fake nvidia-cuda-mps-control on PATH records what it is asked."""

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from resexp.sweep import mps


@pytest.fixture
def fake_control(tmp_path, monkeypatch):
    """A control binary that logs each call's arguments, stdin and pipe directory; exit code
    from $FAKE_MPS_EXIT."""
    log = tmp_path / "calls.log"
    script = tmp_path / "bin" / mps.CONTROL
    script.parent.mkdir()
    script.write_text(f"""#!/bin/sh
input=""
[ "$#" -eq 0 ] && input=$(cat)
echo "args=$* stdin=$input pipe=$CUDA_MPS_PIPE_DIRECTORY" >> {log}
[ -n "$FAKE_MPS_EXIT" ] && echo "no GPU for MPS" >&2 && exit "$FAKE_MPS_EXIT"
exit 0
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.delenv("CUDA_MPS_LOG_DIRECTORY", raising=False)
    monkeypatch.setattr(mps, "DEFAULT_PIPE_DIR", tmp_path / "no-system-mps")
    return log


def test_a_private_daemon_serves_the_runs_and_is_stopped_after(fake_control):
    messages = []
    with mps.cuda_mps(3, gpus=1, notify=messages.append, check=lambda env: None) as started:
        assert started
        pipe = os.environ["CUDA_MPS_PIPE_DIRECTORY"]  # what the processes started here inherit
        assert Path(pipe).is_dir() and Path(os.environ["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
        assert fake_control.read_text().splitlines() == [f"args=-d stdin= pipe={pipe}"]
    assert fake_control.read_text().splitlines()[1] == f"args= stdin=quit pipe={pipe}"
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ and not Path(pipe).exists()
    assert messages == [f"CUDA MPS started for 3 runs per GPU (pipe directory {pipe})"]


@pytest.mark.parametrize("runs, gpus, running", [(1, 1, False), (3, 0, False), (3, 1, True)])
def test_nothing_is_started_where_it_cannot_help_or_one_already_runs(fake_control, monkeypatch, runs, gpus, running):
    if running:
        monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/somebody/elses")
    with mps.cuda_mps(runs, gpus) as started:
        assert not started
    assert not fake_control.exists()


def test_a_daemon_that_does_not_start_is_one_line_and_the_runs_go_on(fake_control, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_EXIT", "1")
    messages = []
    with mps.cuda_mps(3, gpus=1, notify=messages.append, check=lambda env: None) as started:
        assert not started and "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
        assert os.environ[mps.FAILED_ENV] == "no GPU for MPS"  # what the processes started here inherit
        calls = len(fake_control.read_text().splitlines())
        with mps.cuda_mps(3, gpus=1, notify=messages.append, check=lambda env: None) as again:  # a sweep inside
            assert not again
        assert len(fake_control.read_text().splitlines()) == calls  # it did not try again
    assert mps.FAILED_ENV not in os.environ
    assert messages == ["CUDA MPS did not start (no GPU for MPS); the 3 runs per GPU share it by time slicing"]


def test_a_daemon_no_cuda_client_can_use_is_stopped_again(fake_control):
    """-d succeeds before any MPS server exists; the first client shows whether one can start."""
    messages = []
    with mps.cuda_mps(3, gpus=1, notify=messages.append, check=lambda env: "all CUDA-capable devices are busy") \
            as started:
        assert not started and "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
    calls = fake_control.read_text().splitlines()
    assert [c.split(" pipe=")[0] for c in calls] == ["args=-d stdin=", "args= stdin=quit"]
    assert messages == ["CUDA MPS did not start (all CUDA-capable devices are busy); "
                        "the 3 runs per GPU share it by time slicing"]


def test_the_client_check_reports_why_cuda_fails():
    # no GPU on this machine: the real check must say why, in one line
    reason = mps.client_works({})
    assert reason is not None and "\n" not in reason


def test_a_joblib_sweep_asks_for_mps_with_its_runs_per_gpu(monkeypatch):
    from resexp.sweep import launch, plan

    asked = []

    @contextmanager
    def record(runs_at_once, gpus):
        asked.append((runs_at_once, gpus))
        yield False

    monkeypatch.setattr(launch, "cuda_mps", record)
    monkeypatch.setattr(launch, "launch", lambda launcher, plan, jobs: None)
    monkeypatch.setattr(launch, "count_outcomes", lambda jobs, stopped: {})  # no run trained
    monkeypatch.setattr(launch, "visible_gpus", lambda: 1)
    monkeypatch.setattr(plan, "visible_gpus", lambda: 1)
    launch.multirun(["sweep=figure6", "data=synthetic"])  # joblib, 6 per GPU
    launch.multirun(["sweep=figure6", "data=synthetic", "hydra.sweeper.runs_per_gpu=5"])
    launch.multirun(["sweep=figure6", "data=synthetic", "hydra.sweeper.mps=false"])
    launch.multirun(["sweep=figure6", "data=synthetic", "hydra/launcher=basic"])  # one at a time
    assert asked == [(6, 1), (5, 1), (1, 1), (1, 1)]
