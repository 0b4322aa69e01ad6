"""Sweeps through real Hydra launchers (joblib, submitit_local, and SLURM when one runs here),
then the figure and table from their logs."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

TINY = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=0.25",
        "trainer.batch_size=32", "trainer.max_iters=4", "trainer.eval_every=2", "trainer.log_every=2"]
MODELS = "model=plain20,plain56,resnet20,resnet56"


def resexp(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "resexp.cli", *args], capture_output=True, text=True, **kwargs)


def check_sweep(sweep_dir, out_dir):
    runs = sorted(p for p in sweep_dir.iterdir() if (p / "summary.json").is_file())
    assert [p.name for p in runs] == [f"model={m}" for m in ("plain20", "plain56", "resnet20", "resnet56")]
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["iterations"] == 4, run
        assert list((run / "tb").glob("events.out.tfevents.*")), run
    figure = resexp("figure", str(sweep_dir), "-o", str(out_dir / "figure6.png"))
    assert figure.returncode == 0, figure.stderr
    assert (out_dir / "figure6.png").stat().st_size > 10_000 and (out_dir / "figure6.pdf").is_file()
    table = resexp("table", str(sweep_dir), "-o", str(out_dir))
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader((out_dir / "table6.csv").open()))
    assert [r["model"] for r in rows] == ["plain-20", "plain-56", "ResNet-20", "ResNet-56"]
    for row, run in zip(rows, runs):
        summary = json.loads((run / "summary.json").read_text())
        assert float(row["test_error_best"]) == pytest.approx(summary["test_error"])
        assert float(row["train_error_final"]) == pytest.approx(summary["train_error"])
    return runs


def test_joblib_sweep_runs_in_parallel_processes_then_skips_finished_runs(tmp_path):
    args = ["sweep", MODELS, *TINY, "hydra/launcher=joblib", "launcher.cpu_runs=2",
            f"run.root={tmp_path}", "run.sweep=jl"]
    result = resexp(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    runs = check_sweep(tmp_path / "sweeps" / "jl", tmp_path)
    for run in runs:  # two runs at once print lines, not two progress bars over each other
        assert "progress: lines" in (run / "config.yaml").read_text()
    stamps = {run: (run / "checkpoints" / "last.pt").stat().st_mtime_ns for run in runs}
    again = resexp(*args)  # a re-launched sweep leaves finished runs alone
    assert again.returncode == 0
    assert stamps == {run: (run / "checkpoints" / "last.pt").stat().st_mtime_ns for run in runs}


def test_submitit_local_sweep(tmp_path):
    result = resexp("sweep", MODELS, *TINY, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                    f"run.root={tmp_path}", "run.sweep=sl")
    assert result.returncode == 0, result.stderr[-2000:]
    check_sweep(tmp_path / "sweeps" / "sl", tmp_path)


@pytest.mark.skipif(not (os.environ.get("SLURM_CONF") and shutil.which("sbatch")),
                    reason="no SLURM here: start one with scripts/slurm_local.sh start")
def test_slurm_sweep_on_a_real_cluster(tmp_path):
    result = resexp("sweep", MODELS, *TINY, "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10",
                    "hydra.launcher.cpus_per_task=1", f"run.root={tmp_path}", "run.sweep=slurm")
    assert result.returncode == 0, result.stderr[-2000:]
    check_sweep(tmp_path / "sweeps" / "slurm", tmp_path)
    assert list((tmp_path / "sweeps" / "slurm" / ".submitit").glob("*/*_log.out"))


def test_bad_sweep_value_is_one_line_exit_2(tmp_path):
    result = resexp("sweep", "model=plain20,plain57", *TINY, f"run.root={tmp_path}")
    assert result.returncode == 2
    assert "unknown model 'plain57'; choose from:" in result.stderr and "Traceback" not in result.stderr


def test_keys_of_a_swept_group_apply_to_every_choice_and_presets_accept_overrides(tmp_path):
    # model.dim exists in the ViT configs, not in the default model that Hydra composes first.
    vit = ["model.dim=16", "model.heads=2", "model.patch_size=8", "model.depth=2", "trainer.max_iters=2",
           "trainer.eval_every=2", "data.train_size=128", "data.test_size=32", "trainer.batch_size=16"]
    result = resexp("sweep", "norms_demo", "model=vit_pre,vit_deepnorm", "optim.warmup_iters=0", *vit,
                    f"run.root={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    sweep_dir = tmp_path / "sweeps" / "norms_demo"
    runs = sorted(p.name for p in sweep_dir.iterdir() if (p / "summary.json").is_file())
    assert runs == ["model=vit_deepnorm", "model=vit_pre"]  # the preset's depth sweep was replaced
    for run in runs:
        summary = json.loads((sweep_dir / run / "summary.json").read_text())
        config = (sweep_dir / run / "config.yaml").read_text()
        assert summary["status"] == "finished" and "dim: 16" in config and "depth: 2" in config
        assert "noise: 0.1" in config and "name: adamw" in config  # the preset's data and optimiser
    bad = resexp("sweep", "model=vit_pre,resnet20", "model.dim=16", "model.heads=2", f"run.root={tmp_path}")
    assert bad.returncode == 2 and "unknown key 'model.dim'" in bad.stderr


def test_figure6_preset_runs_processes_by_default_and_the_command_line_still_wins(tmp_path, monkeypatch):
    from resexp.config import compose
    from resexp.sweep import plan as sweep

    overrides = ["sweep=figure6"]
    preset = sweep._preset_config(overrides)
    assert sweep._preset_launcher(preset) == "joblib"
    cfg = compose(overrides)
    assert cfg.launcher.runs_per_gpu == 6
    monkeypatch.setattr(sweep, "visible_gpus", lambda: 2)
    assert "hydra.launcher.n_jobs=12" in sweep.launcher_overrides(overrides, cfg, "joblib")  # 6 per GPU
    monkeypatch.setattr(sweep, "visible_gpus", lambda: 0)
    assert "hydra.launcher.n_jobs=1" in sweep.launcher_overrides(overrides, cfg, "joblib")  # cpu_runs
    basic = sweep.launcher_overrides([*overrides, "hydra/launcher=basic"], cfg, "joblib")
    assert not any("n_jobs" in o for o in basic)
    # Hydra itself takes the preset's launcher
    result = resexp("sweep", "figure6", "model=resnet20", *TINY, f"run.root={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=1" in result.stdout + result.stderr
    summaries = list((tmp_path / "sweeps" / "figure6").glob("**/summary.json"))
    assert len(summaries) == 1 and json.loads(summaries[0].read_text())["status"] == "finished"


@pytest.mark.skipif(not shutil.which("sinfo") or subprocess.run(["sinfo"], capture_output=True).returncode != 0,
                    reason="no SLURM here: start one with scripts/slurm_local.sh start")
def test_a_slurm_sweep_whose_job_is_cancelled_ends_and_names_the_run(tmp_path):
    """The local cluster keeps no job accounting: submitit alone would wait for the cancelled job forever."""
    longer = [o for o in TINY if not o.startswith("trainer.max_iters=")] + ["trainer.max_iters=40"]
    args = [sys.executable, "-m", "resexp.cli", "sweep", "model=plain20,resnet20", *longer,
            "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.array_parallelism=1", f"run.root={tmp_path}", "run.sweep=cancel"]
    sweep = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    pending = []
    while not pending:  # the second run of the array waits for the first: cancel it there
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        queue = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True).stdout
        states = dict(line.split() for line in queue.splitlines())
        if "RUNNING" in states.values():  # the first runs, so the other waits behind it, not yet started
            pending = [job for job, state in states.items() if state == "PENDING"]
        time.sleep(0.5)
    subprocess.run(["scancel", pending[0]], check=True)
    out, err = sweep.communicate(timeout=240)
    assert sweep.returncode == 2, err[-2000:]
    runs = [tmp_path / "sweeps" / "cancel" / f"model={model}" for model in ("plain20", "resnet20")]
    [cancelled] = [run for run in runs if not (run / "summary.json").is_file()]  # it never started
    lost = [line for line in err.splitlines() if "left the queue without a result" in line]
    assert lost == [f"resexp: error: {cancelled}: SLURM job {pending[0]} left the queue without a result "
                    "(cancelled, pre-empted without requeue, or failed; a cluster without job accounting cannot "
                    f"say which): see {tmp_path / 'sweeps' / 'cancel' / '.submitit' / pending[0]}"], err[-3000:]
    assert "2 runs: 1 finished, 1 failed" in out
