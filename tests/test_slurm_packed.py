"""Packed SLURM jobs on the one-node cluster `.ci/run` starts (scripts/slurm_local.sh): several
runs per job, counted from SLURM itself, and a pre-empted job (submitit's USR2) that requeues and
resumes its runs to the same bits as an uninterrupted sweep."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.skipif(not (os.environ.get("SLURM_CONF") and shutil.which("sbatch")),
                                reason="no SLURM here: start one with scripts/slurm_local.sh start")

TINY = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=0.25", "trainer.batch_size=32",
        "trainer.eval_every=2", "trainer.log_every=2", "trainer.precision=fp32", "trainer.deterministic=true"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10", "hydra.sweeper.cpu_runs=2"]


def resexp(*args):
    return subprocess.run([sys.executable, "-m", "resexp.cli", *args], capture_output=True, text=True)


@pytest.fixture
def start_sweep():
    """Starts `resexp sweep ARGS` in the background; killed at teardown if a test fails before it ends."""
    started = []

    def start(*args):
        started.append(subprocess.Popen([sys.executable, "-m", "resexp.cli", "sweep", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return started[-1]
    yield start
    for sweep in started:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()


def slurm_tasks(folder):
    """The jobs (array tasks as JOB_TASK) SLURM knows, running or ended within MinJobAge, that were
    submitted from folder."""
    listing = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True).stdout
    fields = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in listing.splitlines()]
    return sorted(f"{f['ArrayJobId']}_{f['ArrayTaskId']}" if "ArrayTaskId" in f else f["JobId"] for f in fields
                  if f.get("Command", "").startswith(str(folder)))


def test_four_runs_two_per_job_are_two_slurm_jobs_then_all_skipped(tmp_path):
    args = ["sweep", "model=plain20,resnet20", "seed=0,1", *TINY, "trainer.max_iters=4", *SLURM,
            f"run.root={tmp_path}", "run.sweep=packed"]
    planned = resexp(*args, "--dry-run")
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "4 runs in 2 jobs, up to 2 at once in each (on its CPUs)" in planned.stdout
    assert len([line for line in planned.stdout.splitlines() if line.startswith("job ")]) == 2
    result = resexp(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweeps" / "packed"
    assert len(slurm_tasks(sweep)) == 2  # from SLURM: two array tasks of one submission
    for run in sorted(sweep.glob("model=*")):
        assert json.loads((run / "summary.json").read_text())["status"] == "finished", run
    assert "4 runs: 4 finished" in result.stdout
    again = resexp(*args)
    assert again.returncode == 0 and "4 runs: 4 skipped (already done)" in again.stdout, again.stderr[-2000:]
    assert len(slurm_tasks(sweep)) == 2  # nothing submitted


def test_a_preempted_packed_job_requeues_and_its_runs_end_as_if_never_stopped(tmp_path, start_sweep):
    runs = ["model=plain20,resnet20", *TINY, "trainer.max_iters=40", "trainer.checkpoint_every=1000"]
    reference = resexp("sweep", *runs, "hydra/launcher=joblib", "hydra.sweeper.cpu_runs=2",
                       f"run.root={tmp_path / 'reference'}", "run.sweep=s")
    assert reference.returncode == 0, reference.stderr[-2000:]
    sweep_dir = tmp_path / "slurm" / "sweeps" / "s"
    sweep = start_sweep(*runs, *SLURM, f"run.root={tmp_path / 'slurm'}", "run.sweep=s")
    deadline = time.monotonic() + 180
    names = ("model=plain20", "model=resnet20")
    while True:  # both runs of the one job are training
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        summaries = [sweep_dir / name / "summary.json" for name in names]
        states = [json.loads(s.read_text()) if s.is_file() else {} for s in summaries]
        if all(s.get("status") == "running" and 4 <= s.get("iterations", 0) < 30 for s in states):
            break
        time.sleep(0.2)
    [task] = slurm_tasks(sweep_dir)
    subprocess.run(["scancel", "--signal=USR2", task], check=True)  # as SLURM pre-empts: submitit's signal
    while sweep.poll() is None and time.monotonic() < deadline + 120:
        # SLURM holds a requeued job back (BeginTime, about 2 min): release it now, as a busy
        # cluster's scheduler would start it whenever a node frees.
        state = subprocess.run(["squeue", "-h", "-j", task, "-o", "%T %r"], capture_output=True, text=True).stdout
        if state.split() == ["PENDING", "BeginTime"]:
            # Not within the second of the requeue: slurmd refuses a credential made in the second
            # the old one was revoked ("Job credential revoked"; seen in CI at 0.4 s), and the job ends.
            time.sleep(1.5)
            subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=True)
            break
        time.sleep(0.5)
    out, err = sweep.communicate(timeout=400)
    assert sweep.returncode == 0, err[-3000:]
    assert "2 runs: 2 finished" in out
    log = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob(f"{task}/*_log.*"))
    assert "Requeued job" in log
    for name in names:
        summary = json.loads((sweep_dir / name / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["iterations"] == 40
        assert len(summary["segments"]) == 2, summary["segments"]  # stopped at the USR2, resumed after the requeue
        resumed = torch.load(sweep_dir / name / "checkpoints" / "last.pt", weights_only=False)["model"]
        straight = torch.load(tmp_path / "reference" / "sweeps" / "s" / name / "checkpoints" / "last.pt",
                              weights_only=False)["model"]
        assert resumed.keys() == straight.keys()
        assert all(torch.equal(resumed[k], straight[k]) for k in resumed), name


def test_a_cancelled_packed_job_ends_the_sweep_and_names_both_its_runs(tmp_path, start_sweep):
    """scancel sends SIGTERM before it kills: the job hands it to its runs, which checkpoint."""
    sweep_dir = tmp_path / "sweeps" / "cancel"
    sweep = start_sweep("model=plain20,resnet20", *TINY, "trainer.max_iters=400", *SLURM, f"run.root={tmp_path}",
                        "run.sweep=cancel")
    deadline = time.monotonic() + 180
    names = ("model=plain20", "model=resnet20")
    while True:  # both runs of the one job are training
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        states = [json.loads(s.read_text()) if s.is_file() else {}
                  for s in (sweep_dir / name / "summary.json" for name in names)]
        if all(s.get("status") == "running" for s in states):
            break
        time.sleep(0.2)
    [job] = slurm_tasks(sweep_dir)
    subprocess.run(["scancel", job], check=True)
    out, err = sweep.communicate(timeout=240)
    assert sweep.returncode == 2, err[-3000:]
    assert ("resexp: error: 2 of 2 runs were stopped (SIGTERM: a SLURM job gets SIGTERM when cancelled or "
            "pre-empted): model=plain20, model=resnet20; the same command resumes them") in err.splitlines(), err
    for name in names:
        summary = json.loads((sweep_dir / name / "summary.json").read_text())
        assert summary["status"] == "stopped" and (sweep_dir / name / "checkpoints" / "last.pt").is_file()

