"""The training engine end to end on the synthetic set, small enough for 2 CPU cores."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from model_oracle import count_params
from resexp.config import compose
from resexp.engine.runtime import resolve_precision
from resexp.engine.train import train
from resexp.models import build_model

SMALL = ["data=synthetic", "data.train_size=1000", "data.test_size=200", "model.width=0.25",
         "trainer.batch_size=32", "trainer.progress=none", "trainer.deterministic=true"]
TAGS = {"train/error", "train/loss", "test/error", "test/loss", "lr"}


def scalars(run_dir):
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})  # 0 = keep all
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_plain56_run_writes_the_five_tags_and_a_summary(tmp_path):
    cfg = compose(["model=plain56", *SMALL, "trainer.max_iters=50", "trainer.eval_every=25",
                   "trainer.log_every=5", f"run.root={tmp_path}"])
    summary = train(cfg)
    run_dir = tmp_path / "plain56_synthetic_seed0"
    series = scalars(run_dir)
    assert TAGS <= set(series)
    assert [step for step, _ in series["test/error"]] == [25, 50]  # eval_every
    for tag in ("train/error", "train/loss", "lr"):  # log_every
        assert [step for step, _ in series[tag]] == list(range(5, 51, 5)), tag
    # the lr of each log point's last step; milestones at 0.5 and 0.75 of 50 iterations
    assert [value for _, value in series["lr"]] == pytest.approx([0.1] * 5 + [0.01] * 2 + [0.001] * 3)
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == summary.to_json()
    assert summary.status == "finished" and summary.iterations == 50
    assert summary.test_error == pytest.approx(series["test/error"][-1][1])
    assert summary.train_error == pytest.approx(series["train/error"][-1][1])
    assert 0 <= summary.test_error <= 100
    assert (summary.precision, summary.precision_reason) == resolve_precision("auto", torch.device("cpu"))
    assert summary.execution == "eager" and summary.diverged_at is None
    assert summary.params == count_params(build_model(cfg.model)) == summary.params > 0
    assert (run_dir / "config.yaml").read_text().count("plain56") >= 1
    # A finished run is not trained again: the same call returns its summary untouched.
    assert train(cfg) == summary


def test_same_seed_reproduces_bit_for_bit_and_resume_matches_a_straight_run(tmp_path):
    # fp32 on CPU is the bit-for-bit reproducible setting; the default (auto) may pick bf16.
    common = ["model=resnet20", *SMALL, "trainer.precision=fp32", "trainer.max_iters=60", "trainer.eval_every=20",
              "trainer.log_every=10", "trainer.checkpoint_every=10"]
    straight = train(compose([*common, f"run.root={tmp_path}/a"]))
    again = train(compose([*common, f"run.root={tmp_path}/b"]))
    assert straight.train_error == again.train_error and straight.test_loss == again.test_loss

    # Kill a real process after its checkpoint at iteration >= 20, then resume it.
    root = tmp_path / "killed"
    run_dir = root / "resnet20_synthetic_seed0"
    proc = subprocess.Popen([sys.executable, "-m", "resexp.cli", "train", *common, f"run.root={root}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["iteration"] >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(checkpoint, weights_only=True)["iteration"]
    assert 20 <= killed_at < 60, "the process was killed mid-run"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"

    resumed = train(compose([*common, f"run.root={root}"]))
    for key in ("train_error", "train_loss", "test_error", "test_loss", "best_test_error", "iterations"):
        assert getattr(resumed, key) == getattr(straight, key), key
    a = torch.load(tmp_path / "a" / "resnet20_synthetic_seed0" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # The curves do not double back: one value per step, steps strictly increasing.
    for tag, points in scalars(run_dir).items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), tag
    assert scalars(run_dir)["test/error"] == scalars(tmp_path / "a" / "resnet20_synthetic_seed0")["test/error"]


def test_error_warmup_runs_at_low_lr_until_the_error_drops(tmp_path):
    cfg = compose(["model=resnet110", *SMALL, "model.depth=8", "trainer.max_iters=6", "trainer.eval_every=2",
                   "trainer.log_every=1", "optim.error_warmup.max_iters=2", f"run.root={tmp_path}"])
    train(cfg)
    run_dir = tmp_path / "resnet110_synthetic_seed0"
    lrs = [v for _, v in scalars(run_dir)["lr"]]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.001)
    end = json.loads((run_dir / "summary.json").read_text())["error_warmup"]
    assert (end["ended_at"], end["ended_by"], end["over_images"]) == (2, "max_iters", 64)


def test_error_warmup_ends_when_its_window_is_below_the_error_and_the_summary_keeps_where(tmp_path):
    """until_error=100 ends it as soon as the window (3 batches of 32) is full: at iteration 3, not
    at the first batch; lr 0.01 for those 3 steps, 0.1 after; summary.json says so, also after a resume."""
    base = ["model=resnet110", *SMALL, "model.depth=8", "trainer.eval_every=2", "trainer.log_every=1",
            "optim.schedule=constant", "optim.error_warmup.until_error=100", "optim.error_warmup.window=96",
            f"run.root={tmp_path}"]
    train(compose([*base, "trainer.max_iters=4"]))
    run_dir = tmp_path / "resnet110_synthetic_seed0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["error_warmup"]["ended_at"] == 3 and summary["error_warmup"]["ended_by"] == "error"
    lrs = scalars(run_dir)["lr"]
    assert [round(v, 4) for _, v in lrs] == [0.01, 0.01, 0.01, 0.1]
    train(compose([*base, "trainer.max_iters=8"]))  # resumed from iteration 4, after the warm-up
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["iterations"] == 8 and resumed["error_warmup"] == summary["error_warmup"]
    assert [round(v, 4) for _, v in scalars(run_dir)["lr"]][4:] == [0.1, 0.1, 0.1, 0.1]


def test_existing_run_with_other_settings_is_never_overwritten(tmp_path):
    base = ["model=resnet20", *SMALL, "trainer.max_iters=4", "trainer.eval_every=2", f"run.root={tmp_path}"]
    train(compose(base))
    run_dir = tmp_path / "resnet20_synthetic_seed0"
    before = (run_dir / "summary.json").read_text(), (run_dir / "checkpoints" / "last.pt").read_bytes()
    from resexp.errors import ResexpError
    with pytest.raises(ResexpError, match=r"holds another run: optim.lr \(0.1 there, 0.5 here\)"):
        train(compose([*base, "optim.lr=0.5"]))
    with pytest.raises(ResexpError, match="already holds a run"):
        train(compose([*base, "run.resume=false"]))
    assert before == ((run_dir / "summary.json").read_text(), (run_dir / "checkpoints" / "last.pt").read_bytes())


VIT = ["model=vit_pre", "model.depth=3", "model.dim=16", "model.heads=2", "model.patch_size=8",
       "data=synthetic", "data.train_size=256", "data.test_size=64", "trainer.batch_size=16",
       "trainer.progress=none", "trainer.precision=fp32", "trainer.deterministic=true"]


def test_train_loss_and_error_are_those_of_the_batches_since_the_last_log(tmp_path):
    """With lr 0 the weights never move, so every batch's loss can be recomputed from the
    initial model and the same batch stream: each log point holds the mean of its own batches."""
    import torch.nn.functional as F

    from resexp.data import build_data

    cfg = compose(["model=resnet20", *SMALL, "optim.lr=0", "trainer.max_iters=6", "trainer.log_every=3",
                   "trainer.eval_every=6", "trainer.precision=fp32", f"run.root={tmp_path}"])
    train(cfg)
    series = scalars(tmp_path / "resnet20_synthetic_seed0")
    data = build_data(cfg.data, torch.device("cpu"), 32, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(memory_format=torch.channels_last).train()
    losses, errors = [], []
    with torch.no_grad():
        for _ in range(6):
            images, labels = data.train.next()
            logits = model(images)
            losses.append(F.cross_entropy(logits, labels).item())
            errors.append(100.0 * (logits.argmax(1) != labels).float().mean().item())
    assert [step for step, _ in series["train/loss"]] == [3, 6]
    assert [v for _, v in series["train/loss"]] == pytest.approx([sum(losses[:3]) / 3, sum(losses[3:]) / 3], rel=1e-5)
    assert [v for _, v in series["train/error"]] == pytest.approx([sum(errors[:3]) / 3, sum(errors[3:]) / 3], abs=1e-4)


def test_vit_logs_probes_at_init_and_every_probe_interval(tmp_path):
    import torch.nn.functional as F

    from resexp.engine.probes import block_grad_norms
    from resexp.data import build_data

    cfg = compose([*VIT, "trainer.max_iters=6", "trainer.probe_every=3", "trainer.eval_every=6",
                   "trainer.log_every=3", f"run.root={tmp_path}"])
    assert cfg.optim.name == "adamw"  # a ViT config selects AdamW
    train(cfg)
    series = scalars(tmp_path / "vit_pre_synthetic_seed0")
    for probe in ("grad_norm", "stream_norm", "rel_update", "angular_distance", "skip_loss_delta"):
        for block in range(3):
            points = series[f"probe/{probe}/block_{block:03d}"]
            # every probe_every steps from 0, and skip_loss_delta also at the end, after the last eval
            assert [step for step, _ in points] == ([0, 3, 6] if probe == "skip_loss_delta" else [0, 3]), probe
            assert probe == "skip_loss_delta" or all(v > 0 for _, v in points)
    # Step 0 is the gradient at initialisation: the same model, seed and first batch give it again.
    data = build_data(cfg.data, torch.device("cpu"), 16, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(memory_format=torch.channels_last)
    images, labels = data.train.next()
    F.cross_entropy(model(images), labels).backward()
    expected = block_grad_norms(model).tolist()
    logged = [series[f"probe/grad_norm/block_{b:03d}"][0][1] for b in range(3)]
    assert logged == pytest.approx(expected, rel=1e-5)


def test_vit_probes_leave_training_unchanged(tmp_path):
    for name, every in (("a", 1), ("b", 0)):
        train(compose([*VIT, "trainer.max_iters=3", "trainer.eval_every=2", "trainer.log_every=1",
                       f"trainer.probe_every={every}", f"run.root={tmp_path}/{name}"]))
    a, b = (torch.load(tmp_path / x / "vit_pre_synthetic_seed0" / "checkpoints" / "last.pt", weights_only=True)
            for x in ("a", "b"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    series_a, series_b = (scalars(tmp_path / x / "vit_pre_synthetic_seed0") for x in ("a", "b"))
    assert all(series_a[tag] == series_b[tag] for tag in TAGS)  # losses, errors, lr: the same values
    assert not any(tag.startswith("probe/") for tag in series_b)
    for probe, steps in (("angular_distance", [0, 1, 2]), ("skip_loss_delta", [0, 1, 2, 3])):
        for block in range(3):
            assert [step for step, _ in series_a[f"probe/{probe}/block_{block:03d}"]] == steps


def test_a_diverged_run_is_marked_and_the_sweep_goes_on(tmp_path):
    from resexp.sweep.launch import multirun

    # lr 1e5 blows the weights up at once; lr 1e-3 trains. Divergence is checked at every log.
    multirun([*VIT, "optim=sgd", "optim.lr=100000,0.001", "trainer.max_iters=8", "trainer.log_every=2",
               "trainer.eval_every=4", f"run.root={tmp_path}", "run.sweep=div"])
    runs = {p.name: json.loads((p / "summary.json").read_text()) for p in (tmp_path / "sweeps" / "div").iterdir()
            if (p / "summary.json").is_file()}
    assert set(runs) == {"optim.lr=100000", "optim.lr=0.001"}
    diverged, finished = runs["optim.lr=100000"], runs["optim.lr=0.001"]
    assert diverged["status"] == "diverged" and diverged["diverged_at"] == diverged["iterations"] <= 8
    assert "non-finite" in diverged["diverged_reason"] or "above" in diverged["diverged_reason"]
    assert finished["status"] == "finished" and finished["iterations"] == 8
    events = EventAccumulator(str(tmp_path / "sweeps" / "div" / "optim.lr=100000" / "tb"))
    events.Reload()
    assert "status" in events.Tags()["tensors"] or "status/text_summary" in events.Tags()["tensors"]


def test_without_cuda_the_step_runs_eagerly_and_says_so_once(tmp_path, capsys):
    from resexp.errors import ConfigError

    common = ["model=resnet20", *SMALL, "model.depth=8", "trainer.max_iters=2", "trainer.eval_every=2"]
    summary = train(compose([*common, "trainer.progress=lines", f"run.root={tmp_path}"]))
    out = capsys.readouterr().out
    assert out.count("eager step: CUDA graphs need a CUDA device") == 1 and summary.execution == "eager"
    with pytest.raises(ConfigError, match="trainer.graph=always: CUDA graphs need a CUDA device"):
        train(compose([*common, "trainer.graph=always", f"run.root={tmp_path}/strict"]))
    assert not (tmp_path / "strict").exists()  # refused before anything was written


def test_compiled_training_saves_the_eager_module_and_resumes_eagerly(tmp_path):
    common = ["model=resnet20", *SMALL, "trainer.precision=fp32", "model.depth=8", "trainer.eval_every=2",
              "trainer.checkpoint_every=2", f"run.root={tmp_path}"]
    summary = train(compose([*common, "trainer.max_iters=2", "trainer.compile=true"]))
    assert summary.execution == "torch.compile" and summary.status == "finished"
    state = torch.load(tmp_path / "resnet20_synthetic_seed0" / "checkpoints" / "last.pt", weights_only=True)
    assert not any(key.startswith("_orig_mod") for key in state["model"])  # loadable without compile
    resumed = train(compose([*common, "trainer.max_iters=4"]))
    assert resumed.iterations == 4 and resumed.execution == "eager"


def test_a_failing_torch_compile_is_one_line_and_marks_the_run_failed(tmp_path):
    # Inductor compiles C++ on CPU; without a compiler it fails at the first step.
    env = {**os.environ, "CXX": "/nonexistent/g++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "resexp.cli", "train", "model=resnet20", *SMALL, "model.depth=8",
         "trainer.max_iters=2", "trainer.compile=true", f"run.root={tmp_path}"],
        capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "torch.compile failed" in result.stderr and "trainer.compile=false" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    summary = json.loads((tmp_path / "resnet20_synthetic_seed0" / "summary.json").read_text())
    assert summary["status"] == "failed"


def test_sigterm_checkpoints_the_step_stops_and_the_same_command_resumes(tmp_path):
    common = ["model=resnet20", *SMALL, "trainer.precision=fp32", "model.depth=8", "trainer.eval_every=100000",
              "trainer.log_every=100000", "trainer.checkpoint_every=100000", f"run.root={tmp_path}"]
    run_dir = tmp_path / "resnet20_synthetic_seed0"
    proc = subprocess.Popen([sys.executable, "-m", "resexp.cli", "train", *common, "trainer.max_iters=100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "summary.json").is_file() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(2)  # some steps, but far from any periodic checkpoint
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM at iteration" in stderr and "Traceback" not in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    stopped_at = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["iteration"]
    assert summary["status"] == "stopped" and summary["stopped_by"] == "SIGTERM"
    assert 0 < stopped_at == summary["iterations"] < 100000  # saved at the signal, not at a periodic checkpoint
    resumed = train(compose([*common, f"trainer.max_iters={stopped_at + 2}"]))
    assert resumed.status == "finished" and resumed.iterations == stopped_at + 2


class StoppedAlready:
    """A sweep that was stopped while this run built its data and model."""

    def stop_reason(self):
        return "SIGTERM (sweep stopped)"

    def signalled(self, name):
        pass


def test_a_run_stopped_while_it_builds_takes_no_step_and_the_same_command_trains_it(tmp_path, capfd):
    cfg = compose(["model=resnet20", *SMALL, "trainer.max_iters=4", "trainer.eval_every=4", f"run.root={tmp_path}"])
    stopped = train(cfg, stop_source=StoppedAlready())
    assert stopped.status == "stopped" and stopped.iterations == 0
    assert not (tmp_path / "resnet20_synthetic_seed0" / "checkpoints" / "last.pt").exists()  # no step, no save
    assert ("SIGTERM (sweep stopped) at iteration 0; before its first step, nothing to save, the same command "
            "resumes it") in capfd.readouterr().err
    finished = train(cfg)
    assert finished.status == "finished" and finished.iterations == 4
