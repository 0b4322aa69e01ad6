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
    args = ["sweep", MODELS, *TINY, "hydra/launcher=joblib", "hydra.sweeper.cpu_runs=2",
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
    from resexp.sweep import plan as sweep
    from resexp.sweep.launch import prepare_sweep

    overrides = ["sweep=figure6", "data=synthetic"]
    monkeypatch.setattr(sweep, "visible_gpus", lambda: 2)
    plan = prepare_sweep(overrides)
    assert (plan.launcher, plan.packing.runs_per_gpu, plan.settings["n_jobs"]) == ("joblib", 6, 9)  # 9 runs < 12
    assert prepare_sweep([*overrides, "model=resnet20,resnet56"]).settings["n_jobs"] == 2  # no more than runs
    monkeypatch.setattr(sweep, "visible_gpus", lambda: 0)
    assert prepare_sweep(overrides).settings["n_jobs"] == 1  # hydra.sweeper.cpu_runs
    assert prepare_sweep([*overrides, "hydra.sweeper.cpu_runs=3"]).settings["n_jobs"] == 3
    basic = prepare_sweep([*overrides, "hydra/launcher=basic"])
    assert basic.launcher == "basic" and "n_jobs" not in basic.settings
    monkeypatch.undo()
    # Hydra itself takes the preset's launcher
    result = resexp("sweep", "figure6", "model=resnet20", *TINY, "model.bn_batch=null", f"run.root={tmp_path}")
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


def test_train_m_is_resexp_sweep_and_train_of_a_sweep_says_so(tmp_path):
    words = ["model=plain20,resnet20", "seed=range(2)", *TINY, f"run.root={tmp_path}"]
    swept = resexp("sweep", *words, "--dry-run")
    multirun = resexp("train", "-m", *words, "--dry-run")
    assert swept.returncode == multirun.returncode == 0, swept.stderr + multirun.stderr
    assert swept.stdout == multirun.stdout and "4 runs: 4 start; nothing launched (--dry-run)" in swept.stdout
    assert "start  model=resnet20,seed=1" in swept.stdout
    single = resexp("train", "model=plain20,resnet20", *TINY, f"run.root={tmp_path}")
    assert single.returncode == 2 and "Traceback" not in single.stderr
    assert single.stderr.startswith("resexp: error: model=plain20,resnet20 is a sweep: run it with resexp sweep ")
    assert "(or resexp train -m " in single.stderr and not list(tmp_path.iterdir())


def test_glob_sweeps_expand_with_hydras_grammar(tmp_path):
    result = resexp("sweep", "model=glob(resnet2*)", *TINY, f"run.root={tmp_path}", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()[:1]] == ["model=resnet20"]
    assert "1 run: 1 start" in result.stdout


def test_run_configs_carry_no_launcher_settings_and_old_runs_with_them_still_count(tmp_path):
    args = ["model=plain20", "seed=0,1", *TINY, f"run.root={tmp_path}", "run.sweep=old", "hydra.sweeper.cpu_runs=2"]
    first = resexp("sweep", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "sweeps" / "old" / "seed=0"
    config = (run / "config.yaml").read_text()
    assert "launcher" not in config and "cpu_runs" not in config
    # a run written before the launcher settings left the run schema
    (run / "config.yaml").write_text(config + "launcher:\n  runs_per_gpu: 1\n  cpu_runs: 1\n  mps: true\n")
    plan = resexp("sweep", *args, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert [line.split()[0] for line in plan.stdout.splitlines()[:2]] == ["skip", "skip"], plan.stdout
    table = resexp("table", str(run.parent), "-o", str(tmp_path))
    assert table.returncode == 0, table.stderr
    assert "plain-20" in (tmp_path / "table6.md").read_text()


def test_a_run_takes_the_gpu_with_the_fewest_live_runs():
    from resexp.sweep.control import SweepControl

    control = SweepControl.create()
    others = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        for process, gpu in zip(others, (0, 0, 1)):  # two runs on GPU 0, one on GPU 1
            (control.folder / "workers" / str(process.pid)).write_text(str(gpu))
        assert control.take_gpu(2) == 1
        assert control.take_gpu(3) == 2  # an idle GPU first
        others[2].kill()
        others[2].wait()  # GPU 1's run ended: it is free again, GPU 0 still has two
        assert control.take_gpu(2) == 1
        assert (control.folder / "workers" / str(os.getpid())).read_text() == "1"
    finally:
        for process in others:
            process.kill()
            process.wait()
        control.remove()


def test_each_run_of_a_sweep_carries_its_hparams_for_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    result = resexp("sweep", "model=plain20,resnet20", "optim.lr=0.1,0.05", *TINY, f"run.root={tmp_path}",
                    "run.sweep=hp")
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted((tmp_path / "sweeps" / "hp").glob("model=*"))
    assert len(runs) == 4
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        hparams, metrics = {}, {}
        for path in (run / "tb" / "hparams").glob("events.out.tfevents.*"):
            for event in EventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    if value.metadata.plugin_data.plugin_name == "hparams":
                        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                        if data.HasField("session_start_info"):
                            hparams = {k: v.string_value or v.number_value
                                       for k, v in data.session_start_info.hparams.items()}
                    elif value.tag.startswith("hparam/"):
                        metrics[value.tag] = (value.simple_value if value.HasField("simple_value")
                                              else float(tensor_util.make_ndarray(value.tensor)))
        model, lr = run.name.split(",")  # model=plain20,optim.lr=0.1: the swept keys only
        assert hparams == {"model": model.split("=")[1], "optim.lr": float(lr.split("=")[1])}, run
        assert metrics == {"hparam/train_error": pytest.approx(summary["train_error"]),
                           "hparam/test_error": pytest.approx(summary["test_error"])}


def test_a_packed_dry_run_deals_the_longest_runs_to_different_jobs(tmp_path):
    """5 runs, 2 per job: 3 jobs; the two deepest nets start two jobs, and the job with the
    deepest net gets no other run while a lighter job has room."""
    result = resexp("sweep", "model=plain20,plain56,resnet20,resnet56,resnet110", *TINY, "hydra/launcher=submitit_local",
                    "hydra.launcher.gpus_per_node=0", "hydra.sweeper.cpu_runs=2", f"run.root={tmp_path}", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = [line.split(": ", 1)[1].split("; ") for line in result.stdout.splitlines() if line.startswith("job ")]
    assert jobs == [["model=resnet110"], ["model=plain56", "model=plain20"], ["model=resnet56", "model=resnet20"]]
    assert "5 runs in 3 jobs, up to 2 at once in each (on its CPUs)" in result.stdout
    assert not (tmp_path / "sweeps").exists()  # a dry run writes no job files
