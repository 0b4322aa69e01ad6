"""A sweep stops when it is told: real processes, a real joblib launcher (two runs at once on the
CPU, three runs), signals while the first two train."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SWEEP = ["model=plain20,resnet20,plain32", "data=synthetic",
         "data.train_size=512", "data.test_size=64", "model.width=0.25", "trainer.batch_size=32",
         "trainer.max_iters=100000", "trainer.log_every=2", "trainer.eval_every=100000", "run.sweep=sig"]
JOBLIB = ["hydra/launcher=joblib", "hydra.sweeper.cpu_runs=2"]
STOP_BOUND_S = 30  # a step and a checkpoint of these tiny runs take well under a second


def start(root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "resexp.cli", "sweep", *SWEEP, f"run.root={root}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}


def wait_until_two_train(sweep_dir: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        training = [s for s in summaries(sweep_dir).values() if s.get("iterations", 0) >= 2]
        if len(training) == 2:
            return
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)


def processes_of(sweep_pid: int) -> list[int]:
    """Live processes started for the sweep (their environment names its control folder)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"RESEXP_SWEEP_CONTROL={sweep_pid}:".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def check_stopped(sweep_dir: Path, signal_name: str, reason: str) -> None:
    runs = summaries(sweep_dir)
    assert len(runs) == 2  # the queued third run never started
    for name, summary in runs.items():
        assert summary["status"] == "stopped" and reason in summary["stopped_by"], (name, summary)
        assert summary["checkpoint_iteration"] == summary["iterations"] >= 2
        assert (sweep_dir / name / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("signal_number, to_group", [
    (signal.SIGTERM, False),  # kill, a scheduler
    (signal.SIGINT, True),  # Ctrl-C: the terminal signals the whole process group
    (signal.SIGHUP, False),  # the terminal closed
])
def test_a_signal_stops_every_run_and_the_same_command_resumes_the_unfinished_ones(tmp_path, signal_number,
                                                                                   to_group):
    sweep_dir = tmp_path / "sweeps" / "sig"
    process = start(tmp_path, *JOBLIB)
    wait_until_two_train(sweep_dir, process)
    signalled = time.monotonic()
    if to_group:
        os.killpg(process.pid, signal_number)
    else:
        process.send_signal(signal_number)
    out, err = process.communicate(timeout=STOP_BOUND_S + 60)
    took = time.monotonic() - signalled
    name = signal.Signals(signal_number).name
    assert process.returncode == 128 + signal_number, err
    assert took < STOP_BOUND_S, took
    assert f"resexp: sweep: {name}: no queued run will start; 2 running run(s) save a checkpoint" in err
    assert "3 runs: 2 stopped, 1 not started" in out
    assert f"stopped by {name}; the same command resumes its 3 unfinished run(s)" in err
    check_stopped(sweep_dir, name, name)
    assert processes_of(process.pid) == []  # no worker, idle or training, outlives the sweep
    plan = subprocess.run([sys.executable, "-m", "resexp.cli", "sweep", *SWEEP, *JOBLIB, f"run.root={tmp_path}",
                           "--dry-run"], capture_output=True, text=True)
    actions = sorted(line.split()[0] for line in plan.stdout.splitlines()[:3])
    assert actions == ["resume", "resume", "start"], plan.stdout


def test_kill_9_of_the_sweep_leaves_no_worker_training_on(tmp_path):
    sweep_dir = tmp_path / "sweeps" / "sig"
    process = start(tmp_path, *JOBLIB)
    wait_until_two_train(sweep_dir, process)
    process.kill()
    process.wait()
    deadline = time.monotonic() + STOP_BOUND_S
    while processes_of(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(process.pid) == []
    check_stopped(sweep_dir, "", f"sweep process {process.pid} gone")


def test_a_signal_stops_a_sweep_of_runs_one_after_another(tmp_path):
    """The basic launcher trains in the sweep's own process: the run checkpoints, the rest never start."""
    process = start(tmp_path, "hydra/launcher=basic")
    sweep_dir = tmp_path / "sweeps" / "sig"
    deadline = time.monotonic() + 180
    while not any(s.get("iterations", 0) >= 2 for s in summaries(sweep_dir).values()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=STOP_BOUND_S + 60)
    assert process.returncode == 143, err
    assert "3 runs: 1 stopped, 2 not started" in out
    [summary] = summaries(sweep_dir).values()
    assert summary["status"] == "stopped" and summary["stopped_by"] == "SIGTERM"


def test_joblib_gets_no_more_processes_than_runs_and_takes_them_in_order():
    """An idle worker has no handler of ours: a Ctrl-C would kill it and break joblib's pool."""
    from resexp.sweep.launch import prepare_sweep

    plan = prepare_sweep(["model=plain20,resnet56", "data=synthetic", "hydra/launcher=joblib", "hydra.sweeper.cpu_runs=3"])
    assert plan.settings["n_jobs"] == 2 and plan.settings["batch_size"] == 1
    assert [job.run_dir.name for job in plan.jobs] == ["model=resnet56", "model=plain20"]  # the longest first
