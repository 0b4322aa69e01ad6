"""Know before you launch, see while it runs: `sweep --dry-run` and `status` on a sweep directory
with one finished, one stopped and one missing run, trained for real on the synthetic set."""

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from resexp.cli import app
from resexp.engine import train as train_module
from resexp.files import write_json
from resexp.engine.train import train
from resexp.views.status import run_statuses, status_text
from resexp.sweep.launch import prepare_sweep
from resexp.sweep.plan import dry_run as plan_lines

TINY = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=0.25", "trainer.batch_size=32",
        "trainer.max_iters=6", "trainer.eval_every=3", "trainer.log_every=1", "trainer.checkpoint_every=2",
        "trainer.progress=none"]
STOP_AT = 3  # the stopped run receives SIGTERM during its 3rd step: checkpoint and summary at 3


def tree(root):
    """Every path under root with its size and mtime: what "creates nothing" compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """plain20 finished, resnet20 stopped by SIGTERM at iteration 3, plain56 never started."""
    root = tmp_path_factory.mktemp("runs")
    args = ["model=plain20,resnet20,plain56", *TINY, f"run.root={root}", "run.sweep=s"]
    jobs = {job.run_dir.name: job for job in prepare_sweep(args).jobs}
    train(jobs["model=plain20"].cfg)

    real_learning_rate = train_module.learning_rate
    def terminate_during(cfg, iteration, *rest):  # noqa: E306 - sends SIGTERM as a scheduler would
        if iteration == STOP_AT - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_learning_rate(cfg, iteration, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "learning_rate", terminate_during)
        with pytest.raises(SystemExit) as stop:  # the default SIGTERM handler's exit, 128 + 15
            train(jobs["model=resnet20"].cfg)
    assert stop.value.code == 143
    return root / "sweeps" / "s", args


def test_dry_run_lists_skip_resume_and_start_and_creates_nothing(sweep_dir):
    directory, args = sweep_dir
    before = tree(directory.parent.parent)
    lines = plan_lines(prepare_sweep(args))
    assert tree(directory.parent.parent) == before  # no run directory, no Hydra record, no lock
    by_run = {line.split()[-1]: line for line in lines[:3]}
    assert by_run[str(directory / "model=plain20")].startswith("skip (finished at 6)")
    assert by_run[str(directory / "model=resnet20")].startswith(f"resume at {STOP_AT} ")
    assert by_run[str(directory / "model=plain56")].startswith("start ")
    assert lines[3].startswith("every run: data=synthetic data.train_size=256")
    assert "model=" not in lines[3]  # the swept key names each run; it is not common
    assert lines[4] == "launcher basic: one run after another, in this process"
    assert lines[5] == "3 runs: 1 start, 1 resume, 1 skip; nothing launched (--dry-run)"
    # launch order: the most work left first (plain-56 from 0, ResNet-20 from 3, plain-20 done)
    assert [line.split()[-1].rsplit("/", 1)[1] for line in lines[:3]] == [
        "model=plain56", "model=resnet20", "model=plain20"]


def test_dry_run_shows_the_launcher_settings(sweep_dir):
    _, args = sweep_dir
    slurm = plan_lines(prepare_sweep([*args, "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90"]))
    assert ("launcher slurm: partition=gpu, gpus_per_node=1, cpus_per_task=8, mem_gb=32, timeout_min=90, "
            "array_parallelism=16, max_num_timeout=5, account=(default), qos=(default)") in slurm
    joblib = plan_lines(prepare_sweep([*args, "hydra/launcher=joblib", "hydra.sweeper.cpu_runs=2"]))
    assert "launcher joblib: n_jobs=2; no GPU visible" in joblib


def test_sweep_cli_dry_run(sweep_dir):
    directory, args = sweep_dir
    result = CliRunner().invoke(app, ["sweep", *args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"resume at {STOP_AT}" in result.output and "nothing launched (--dry-run)" in result.output
    assert not (directory / "model=plain56").exists() and not (directory / "multirun.yaml").exists()


def test_status_rows_follow_the_summaries(sweep_dir):
    directory, _ = sweep_dir
    statuses = {s.path.name: s for s in run_statuses(directory)}
    assert set(statuses) == {"model=plain20", "model=resnet20"}  # the missing run has no directory yet
    finished, stopped = statuses["model=plain20"], statuses["model=resnet20"]
    summary = json.loads((directory / "model=plain20" / "summary.json").read_text())
    assert (finished.status, finished.iteration, finished.max_iters) == ("finished", 6, 6)
    assert finished.train_error == summary["train_error"] and finished.eval_error == summary["test_error"]
    assert finished.eta_s is None and finished.device.startswith("cpu")
    assert (stopped.status, stopped.iteration, stopped.max_iters) == ("stopped", STOP_AT, 6)
    assert stopped.note == "by SIGTERM; the same command resumes it"
    text = status_text(list(statuses.values()), directory, datetime.now(timezone.utc)).splitlines()
    assert text[0].split() == ["run", "status", "iteration", "it/s", "ETA", "train", "err", "eval", "err",
                               "device", "updated"]
    assert text[1].split()[:3] == ["model=plain20", "finished", "6/6"]
    assert f"{summary['train_error']:.2f}%" in text[1] and f"{summary['test_error']:.2f}% test" in text[1]
    assert text[2].split()[:3] == ["model=resnet20", "stopped", f"{STOP_AT}/6"]
    assert text[-1] == "2 runs: 1 finished, 1 stopped"


def test_status_of_running_runs_eta_and_dead_process(sweep_dir, tmp_path):
    directory, _ = sweep_dir
    summary = json.loads((directory / "model=resnet20" / "summary.json").read_text())
    updated = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    running = {**summary, "status": "running", "iterations": 3, "max_iters": 6, "iters_per_s": 2.0,
               "updated": updated.isoformat()}
    alive, dead = tmp_path / "alive", tmp_path / "dead"
    for run_dir in (alive, dead):
        run_dir.mkdir()
        write_json(run_dir / "summary.json", running)
    (alive / ".lock").write_text(f"{os.getpid()}\n")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (dead / ".lock").write_text(gone.stdout)
    now = updated + timedelta(seconds=0.5)
    statuses = {s.path.name: s for s in run_statuses(tmp_path, now)}
    assert statuses["alive"].status == "running"
    assert statuses["alive"].eta_s == pytest.approx((6 - 3) / 2.0 - 0.5)  # less the time since the update
    assert statuses["dead"].status == "dead" and f"process {gone.stdout.strip()} is gone" in statuses["dead"].note


def test_status_cli_plain_text_watch_and_bad_directory(sweep_dir, tmp_path, monkeypatch):
    directory, _ = sweep_dir
    result = CliRunner().invoke(app, ["status", str(directory)])
    assert result.exit_code == 0 and "model=resnet20  stopped" in result.output
    assert "│" not in result.output  # not a terminal: plain columns, no box drawing

    def interrupt(seconds):
        raise KeyboardInterrupt
    monkeypatch.setattr("time.sleep", interrupt)
    watched = CliRunner().invoke(app, ["status", str(directory), "--watch", "--interval", "1"])
    assert watched.exit_code == 0 and watched.output.count("2 runs: 1 finished, 1 stopped") == 1

    empty = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert empty.exit_code == 2 and "no runs under" in empty.output


def test_summary_is_rewritten_at_every_log_point(tmp_path, monkeypatch):
    from resexp.config import compose

    import resexp.rundir as rundir_module

    writes = []
    real_write = rundir_module.write_json
    def record(path, data):  # noqa: E306
        writes.append((data["iterations"], "iters_per_s" in data, data.get("checkpoint_iteration")))
        real_write(path, data)
    monkeypatch.setattr(rundir_module, "write_json", record)
    train(compose(["model=plain20", *TINY, "trainer.log_every=2", f"run.root={tmp_path}"]))
    logged = [(it, speed) for it, speed, _ in writes]
    assert (2, True) in logged and (4, True) in logged and logged[-1] == (6, True)
    assert writes[0][0] == 0 and writes[0][2] is None  # the first write, before any step
    assert any(checkpoint == 2 for _, _, checkpoint in writes)  # written after each checkpoint


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """mkstemp creates 0600 files: summary.json must stay readable by the group, as any file would."""
    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "summary.json", {"status": "running"})
    finally:
        os.umask(previous)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644
