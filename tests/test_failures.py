"""Bad input and faults, as a table: each ends in exit 2 (or its documented signal code) with one
line on stderr and no traceback, and leaves the run directory byte-identical (or truthfully
marked). Most cases run in-process; signals, locks and concurrent runs use real processes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from resexp.cli import app

TINY = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=0.25", "trainer.batch_size=32",
        "trainer.eval_every=2", "trainer.log_every=2", "trainer.checkpoint_every=2", "trainer.progress=none"]
RUN = "resnet20_synthetic_seed0"  # run.name of TINY with the default model


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root by content. `.lock` holds the pid of the last process that held the
    run's lock: rewritten by whoever takes it, it is not the run's data."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """run.root holding one finished 4-iteration ResNet-20 run."""
    root = tmp_path_factory.mktemp("finished")
    result = CliRunner().invoke(app, ["train", *TINY, "trainer.max_iters=4", f"run.root={root}"])
    assert result.exit_code == 0, result.output
    return root


def plain20_checkpoint(root: Path) -> Path:
    result = CliRunner().invoke(app, ["train", *TINY, "model=plain20", "trainer.max_iters=2", f"run.root={root}/other"])
    assert result.exit_code == 0, result.output
    return root / "other" / "plain20_synthetic_seed0" / "checkpoints" / "last.pt"


class Evil:
    def __reduce__(self):
        return os.system, ("touch PWNED",)


def write(path: str, content: bytes | Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        target = root / path
        content(target) if callable(content) else target.write_bytes(content)
    return setup


def truncate(root: Path) -> None:
    ckpt = root / RUN / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])


def other_models_checkpoint(root: Path) -> None:
    shutil.copy(plain20_checkpoint(root / "tmp"), root / RUN / "checkpoints" / "last.pt")
    shutil.rmtree(root / "tmp")


@dataclass
class Case:
    name: str
    args: list[str]  # {root} is replaced by the case's run.root
    fragment: str  # in the one stderr line
    setup: Callable[[Path], None] | None = None
    existing: bool = True  # start from the finished run
    code: int = 2
    command: str = "train"
    tiny: bool = True  # train with TINY's synthetic data and small model


CASES = [
    # config values: nothing is created under run.root
    Case("zero iterations", ["trainer.max_iters=0"], "trainer.max_iters must be a positive integer; got 0", existing=False),
    Case("negative iterations", ["trainer.max_iters=-5"], "trainer.max_iters must be a positive integer; got -5",
         existing=False),
    Case("zero batch", ["trainer.batch_size=0"], "trainer.batch_size must be a positive integer; got 0", existing=False),
    Case("negative lr", ["optim.lr=-0.1"], "optim.lr must be a number >= 0; got -0.1", existing=False),
    Case("lr not a number", ["optim.lr=fast"], "optim.lr must be a number >= 0; got 'fast'", existing=False),
    Case("non-integer seed", ["seed=1.5"], "seed must be an integer >= 0; got 1.5", existing=False),
    Case("seed a word", ["seed=abc"], "seed must be an integer >= 0; got 'abc'", existing=False),
    Case("unknown precision", ["trainer.precision=fp8"], "trainer.precision must be one of auto, fp32, bf16, fp16",
         existing=False),
    Case("unknown device", ["trainer.device=gpu"], "trainer.device must be auto, cpu, cuda or cuda:N", existing=False),
    Case("unknown shortcut", ["model.shortcut=C"], "model.shortcut must be one of A, B; got 'C'", existing=False),
    Case("milestones out of order", ["optim.milestones=[0.8,0.2]"], "optim.milestones must be ascending fractions",
         existing=False),
    Case("momentum above 1", ["optim.momentum=1.5"], "optim.momentum must be a number in [0, 1); got 1.5",
         existing=False),
    Case("probability-like knob negative", ["data.noise=-1"], "data.noise must be a number >= 0; got -1",
         existing=False),
    Case("batch above the training set", ["trainer.batch_size=300"], "trainer.batch_size must be at most the 256",
         existing=False),
    Case("recompute on a VGG", ["model=vgg11", "trainer.recompute_blocks=2"],
         "trainer.recompute_blocks applies to the cifar_resnet models", existing=False),
    Case("zero eval interval", ["trainer.eval_every=0"], "trainer.eval_every must be a positive integer",
         existing=False),
    Case("unknown model", ["model=resnet21"], "unknown model 'resnet21'; choose from:", existing=False),
    Case("unknown key", ["trainer.foo=1"], "unknown key 'trainer.foo'", existing=False),
    Case("added unknown key", ["+trainer.foo=1"], "unknown key 'trainer.foo'", existing=False),
    Case("not an override", ["foo"], "overrides look like key=value", existing=False),
    Case("non-ASCII value", ["run.name=é"], "cannot read override 'run.name=é': outside quotes, Hydra's override "
         "grammar takes only ASCII letters, digits, spaces and _-/\\+.$%*@?| in a value; quote the value inside the "
         "argument: run.name='é' (in a shell: \"run.name='é'\")", existing=False),
    Case("value split by the shell at a space", ["run.root={root}/a", "b"], "'b' is not an override (overrides look "
         "like key=value); if it belongs to run.root={root}/a, the shell split the value at a space: quote the whole "
         "argument, 'run.root={root}/a b'", existing=False),
    Case("key given twice", ["seed=1", "trainer.max_iters=2", "seed=2"],
         "seed is given twice (seed=1, then seed=2); give each key once", existing=False),
    Case("bool not a bool", ["run.resume=maybe"], "run.resume must be true or false; got 'maybe'", existing=False),
    # usage: one line naming what the command takes, not click's usage box
    Case("data check given data.root=", ["check", "cifar10", "data.root=/x"], "data check: got unexpected extra "
         "argument(s) (data.root=/x) (here that is --root /x); it takes [NAME] and the option --root (see resexp data "
         "check --help)", existing=False, command="data"),
    Case("unknown command", [], "no such command 'trian'. Did you mean 'train'?; it takes a command (train, sweep, ",
         existing=False, command="trian"),
    Case("option value out of range", ["--limit", "0", "{root}"], "eval: invalid value for '--limit'",
         existing=False, command="eval"),
    # paths
    Case("run.root is a file", ["run.root={root}/file"], "not a directory", existing=False,
         setup=write("file", b"x")),
    Case("run.root not writable", ["run.root=/sys/resexp-test"], "operation not permitted: /sys/resexp-test",
         existing=False),
    Case("run.dir is a file", ["run.dir={root}/file"], "exists and is not a directory", existing=False,
         setup=write("file", b"x")),
    Case("data.root is a file", ["data=cifar10", "data.download=false", "data.root={root}/file"], "{root}/file",
         existing=False, setup=write("file", b"x"), tiny=False),
    Case("figure of a file", ["{root}/file"], "is not a directory", existing=False, setup=write("file", b"x"),
         command="figure"),
    Case("table of an empty folder", ["{root}"], "no run directories", existing=False, command="table"),
    Case("figure written where it cannot be", ["{root}", "-o", "/sys/figure6.png"], "/sys/figure6.png",
         command="figure"),
    Case("bench report where it cannot be", ["model.width=0.25", "--iters", "1", "--warmup", "0", "--repeats", "1",
                                             "--no-reference", "--precisions", "fp32", "-o", "/sys/bench"],
         "/sys/bench", existing=False, command="bench"),
    # files of an existing run: resuming it (more iterations) must refuse and change nothing
    Case("truncated checkpoint", ["trainer.max_iters=6"], "cannot read checkpoint", setup=truncate),
    Case("checkpoint not from resexp", ["trainer.max_iters=6"], "is not a resexp checkpoint",
         setup=write(f"{RUN}/checkpoints/last.pt", lambda p: torch.save({"weights": torch.zeros(3)}, p))),
    Case("malicious checkpoint", ["trainer.max_iters=6"], "cannot read checkpoint",
         setup=write(f"{RUN}/checkpoints/last.pt", lambda p: p.write_bytes(pickle.dumps(Evil())))),
    Case("another model's checkpoint", ["trainer.max_iters=6"], "belongs to another run: model.name",
         setup=other_models_checkpoint),
    Case("corrupt summary", ["trainer.max_iters=6"], "summary.json is corrupt",
         setup=write(f"{RUN}/summary.json", b'{"status": "fini')),
    Case("corrupt config", ["trainer.max_iters=6"], "config.yaml is corrupt",
         setup=write(f"{RUN}/config.yaml", b"model: [unclosed\n  - : :")),
    Case("foreign config", ["trainer.max_iters=6"], "is not a resexp run config",
         setup=write(f"{RUN}/config.yaml", b"hello: world\n")),
    Case("fewer iterations than finished", ["trainer.max_iters=2"],
         "has already trained 4 iterations (finished); trainer.max_iters=2 asks for fewer, so nothing was changed"),
    Case("another run in the directory", ["trainer.max_iters=4", "run.name=" + RUN, "model=plain20"],
         "holds another run: model.name"),
    Case("another batch size", ["trainer.max_iters=6", "trainer.batch_size=16"],
         "holds another run: batch_size (32 there, 16 here)"),
    Case("resume off", ["trainer.max_iters=4", "run.resume=false"], "already holds a run and run.resume=false"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case: Case, finished: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    if case.existing:
        shutil.copytree(finished, root)
    else:
        root.mkdir()
    if case.setup:
        case.setup(root)
    before = snapshot(root)
    args = [a.replace("{root}", str(root)) for a in case.args]
    if case.command == "train":  # the case's own keys replace TINY's and run.root: a key is given once
        given = {a.split("=", 1)[0] for a in args}
        args = [*(o for o in [*(TINY if case.tiny else []), f"run.root={root}"] if o.split("=", 1)[0] not in given),
                *args]
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a malicious checkpoint would touch PWNED here
    try:
        result = CliRunner().invoke(app, [case.command, *args])
    finally:
        os.chdir(cwd)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == case.code, result.output
    assert len(lines) == 1 and lines[0].startswith("resexp: error: "), result.stderr
    assert case.fragment.replace("{root}", str(root)) in lines[0]
    assert "Traceback" not in result.output
    assert snapshot(root) == before
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("setup, args", [(truncate, ["trainer.max_iters=6"]),
                                         (None, ["trainer.max_iters=4", "model=plain20", f"run.name={RUN}"])],
                         ids=["checkpoint refused under the lock", "another run's config"])
def test_a_refusal_leaves_no_lock_file_the_run_did_not_have(setup, args, finished: Path, tmp_path: Path) -> None:
    """A run directory copied without its .lock (rsync, an archive) got one from a refused command."""
    root = tmp_path / "root"
    shutil.copytree(finished, root)
    (root / RUN / ".lock").unlink()
    if setup:
        setup(root)
    before = {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}
    result = CliRunner().invoke(app, ["train", *TINY, f"run.root={root}", *args])
    assert result.exit_code == 2, result.output
    assert {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))} \
        == before


def test_a_full_disk_is_one_line_and_marks_the_run_failed(tmp_path, monkeypatch):
    import resexp.engine.checkpoint as checkpoint

    def full(state, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", f.name)

    monkeypatch.setattr(checkpoint.torch, "save", full)
    result = CliRunner().invoke(app, ["train", *TINY, "trainer.max_iters=4", f"run.root={tmp_path}"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("resexp: error: no space left on device: ")
    assert len(result.stderr.strip().splitlines()) == 1
    run = tmp_path / RUN
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("no space left on device: ")
    assert list((run / "checkpoints").iterdir()) == []  # no half-written checkpoint or temporary file


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    import resexp.engine.train as train

    monkeypatch.setattr(train, "evaluate", lambda *a: 1 / 0)
    monkeypatch.setenv("RESEXP_DEBUG", "0")  # --debug sets it to 1; monkeypatch then restores it
    args = ["train", *TINY, "trainer.max_iters=2", f"run.root={tmp_path}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "resexp: error: internal error (ZeroDivisionError: division by zero); run again with --debug "
        "(or RESEXP_DEBUG=1) for the traceback, and please report it"]
    assert json.loads((tmp_path / RUN / "summary.json").read_text())["error"] == "ZeroDivisionError: division by zero"
    debug = CliRunner().invoke(app, ["--debug", *args])
    assert isinstance(debug.exception, ZeroDivisionError)


def test_rerunning_a_finished_run_with_fewer_iterations_keeps_its_metrics(finished, tmp_path):
    """Data-loss case: this used to print 'train error nan%', exit 0 and erase the final metrics."""
    shutil.copytree(finished, tmp_path / "root")
    summary = json.loads((tmp_path / "root" / RUN / "summary.json").read_text())
    result = CliRunner().invoke(app, ["train", *TINY, "trainer.max_iters=2", f"run.root={tmp_path / 'root'}"])
    assert result.exit_code == 2
    assert json.loads((tmp_path / "root" / RUN / "summary.json").read_text()) == summary
    assert summary["test_error"] >= 0 and summary["iterations"] == 4
    table = CliRunner().invoke(app, ["table", str(tmp_path / "root"), "-o", str(tmp_path)])
    assert table.exit_code == 0, table.output


def test_extending_a_finished_run_records_a_second_segment(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "root")
    result = CliRunner().invoke(app, ["train", *TINY, "trainer.max_iters=6", "trainer.precision=fp32",
                                      f"run.root={tmp_path / 'root'}"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "root" / RUN / "summary.json").read_text())
    assert [(s["start"], s["end"], s["max_iters"]) for s in summary["segments"]] == [(0, 4, 4), (4, 6, 6)]
    assert summary["status"] == "finished" and summary["iterations"] == 6


# ---- real processes: signals, locks, concurrent runs ----

def resexp(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "resexp.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for_checkpoint(run: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (run / "checkpoints" / "last.pt").is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)


def test_a_second_process_on_a_live_run_is_refused_and_points_are_not_doubled(tmp_path):
    args = ["train", *TINY, "trainer.max_iters=100000", f"run.root={tmp_path}"]
    first = resexp(*args)
    run = tmp_path / RUN
    try:
        wait_for_checkpoint(run, first)
        second = resexp(*args)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"is in use by another resexp process (pid {first.pid})" in lines[0]
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM  # the documented code: checkpointed and stopped
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stopped_by"] == "SIGTERM"
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1  # one writer only


def test_after_kill_9_the_lock_is_taken_over_and_the_run_resumes(tmp_path):
    args = ["train", *TINY, "trainer.max_iters=100000", f"run.root={tmp_path}"]
    victim = resexp(*args)
    run = tmp_path / RUN
    wait_for_checkpoint(run, victim)
    victim.kill()
    victim.communicate(timeout=60)
    assert json.loads((run / "summary.json").read_text())["status"] == "running"  # as it was left
    assert (run / ".lock").read_text().strip() == str(victim.pid)
    resumed = resexp("train", *TINY, "trainer.max_iters=20", f"run.root={tmp_path}")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["iterations"] == 20
    assert summary["segments"][-1]["start"] >= 2  # resumed from the killed run's checkpoint


# ---- sweeps (real processes: Hydra configures the logging of the process it runs in) ----

SWEEP_TINY = [*TINY, "trainer.max_iters=2"]


def sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resexp.cli", "sweep", *args], capture_output=True, text=True)


def test_a_sweep_over_another_sweeps_directories_refuses_and_rewrites_nothing(tmp_path):
    """Data-loss case: this used to refuse every run but rewrite their .hydra records, exit 0."""
    args = ["seed=0,1", *SWEEP_TINY, f"run.root={tmp_path}", "run.sweep=s"]
    first = sweep(*args)
    assert first.returncode == 0, first.stderr
    sweep_dir = tmp_path / "sweeps" / "s"
    before = snapshot(sweep_dir)
    result = sweep(*args, "model=plain20")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 of 2 runs of this sweep cannot use their directories, so nothing was launched" \
        in lines[0] and "model.name" in lines[0]
    assert snapshot(sweep_dir) == before


def test_a_sweep_with_failed_runs_exits_2_and_counts_them(tmp_path):
    args = ["seed=0,1", *TINY, f"run.root={tmp_path}", "run.sweep=f"]
    assert sweep(*args, "trainer.max_iters=2").returncode == 0
    truncate_run = tmp_path / "sweeps" / "f" / "seed=1" / "checkpoints" / "last.pt"
    truncate_run.write_bytes(truncate_run.read_bytes()[:1000])
    result = sweep(*args, "trainer.max_iters=4")
    assert result.returncode == 2
    assert "sweep " in result.stdout and "2 runs: 1 finished, 1 failed" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("resexp: error: 1 of 2 runs failed: seed=1")


def test_a_key_given_twice_refuses_the_sweep_before_anything_is_written(tmp_path):
    """This used to run model=resnet20 alone and exit 0."""
    result = sweep("model=plain20,resnet20", *SWEEP_TINY, f"run.root={tmp_path}", "model=resnet20")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "resexp: error: model is given twice (model=plain20,resnet20, then model=resnet20); give each key once"]
    assert list(tmp_path.iterdir()) == []
    # A preset's sweep (hydra.sweeper.params) replaced once from the command line is not given twice.
    preset = CliRunner().invoke(app, ["sweep", "figure6", "model=resnet20", *SWEEP_TINY, "model.bn_batch=null", f"run.root={tmp_path}",
                                      "--dry-run"])
    assert preset.exit_code == 0, preset.output
    assert "1 run: 1 start; nothing launched (--dry-run)" in preset.stdout


def test_a_sweep_value_that_needs_quotes_says_how_and_the_quoted_form_plans(tmp_path):
    args = [*SWEEP_TINY, f"run.root={tmp_path}", "--dry-run"]
    refused = CliRunner().invoke(app, ["sweep", "run.name=é,f", *args])
    assert refused.exit_code == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resexp: error: cannot read override 'run.name=é,f': ")
    assert lines[0].endswith("quote the value inside the argument: run.name='é','f' "
                             "(in a shell: \"run.name='é','f'\")")
    planned = CliRunner().invoke(app, ["sweep", "run.name='é','f'", *args])  # the form the line gives
    assert planned.exit_code == 0, planned.output
    assert "2 runs: 2 start; nothing launched (--dry-run)" in planned.stdout
    spaced = CliRunner().invoke(app, ["sweep", "seed=0,1", *SWEEP_TINY, f"run.root={tmp_path}/a b", "--dry-run"])
    assert spaced.exit_code == 0 and f"{tmp_path}/a b/sweeps/adhoc/seed=0" in spaced.stdout  # spaces need no quotes
    assert list(tmp_path.iterdir()) == []


def test_sweep_lists_are_values_not_sweeps(tmp_path):
    """Hydra's parser: optim.milestones=[0.3,0.6] is one value (a hand-written split made it two)."""
    result = sweep("seed=0,1", "optim.milestones=[0.3,0.6]", *SWEEP_TINY, f"run.root={tmp_path}", "run.sweep=l")
    assert result.returncode == 0, result.stderr
    runs = sorted(p.name for p in (tmp_path / "sweeps" / "l").iterdir() if p.is_dir())
    assert runs == ["seed=0", "seed=1"]
    config = (tmp_path / "sweeps" / "l" / "seed=0" / "config.yaml").read_text()
    assert "- 0.3\n  - 0.6" in config
    assert "2 runs: 2 finished" in result.stdout


def test_error_lines_keep_brackets(tmp_path):
    """The error line is text, not rich markup: a run directory named with [...] is printed whole."""
    odd = tmp_path / "runs[old]" / "x"
    result = CliRunner().invoke(app, ["status", str(odd)])
    assert result.exit_code == 2 and f"{odd} is not a directory" in result.output
