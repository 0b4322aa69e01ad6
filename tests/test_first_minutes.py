"""A new user's first minutes: cheap commands answer without PyTorch, a run says where it is from
its first line and at least every HEARTBEAT_S in a pipe, a figure says what it left out, and a
missing CIFAR-10 names the way to get it (and leaves no empty folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

from torch.utils.tensorboard import SummaryWriter
from torchvision.datasets import CIFAR10
from typer.testing import CliRunner

from fake_runs import write_run
from resexp.cli import app
from resexp.config import group_choices
from resexp.engine import tracking
from resexp.engine.tracking import HEARTBEAT_S, ProgressReport

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=resnet20", "model.width=0.25", "data=synthetic", "data.train_size=256", "data.test_size=128"]


def _modules_after(args: list[str]) -> tuple[int, set[str], str]:
    """Run the command in a fresh interpreter; its exit code, which heavy modules it imported, its output."""
    script = (
        "import sys\nfrom typer.testing import CliRunner\nfrom resexp.cli import app\n"
        f"result = CliRunner().invoke(app, {args!r})\n"
        "print(result.output)\n"
        "print('HEAVY', result.exit_code, *[m for m in ('torch', 'torchvision', 'matplotlib', 'tensorboard') "
        "if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    last = done.stdout.strip().splitlines()[-1].split()
    assert last[0] == "HEAVY", done.stdout + done.stderr
    return int(last[1]), set(last[2:]), done.stdout


def test_cheap_commands_import_no_torch(tmp_path):
    sweep = tmp_path / "sweep"
    for depth, residual in ((20, False), (20, True)):
        write_run(sweep, f"{'resnet' if residual else 'plain'}{depth}", depth, residual, 0, "finished")
    cases = {
        "status": (["status", str(sweep)], 0, {"matplotlib", "tensorboard"}),
        "unknown model": (["train", "model=plain57"], 2, set()),
        "bad value": (["train", "optim.lr=abc"], 2, set()),
        "--cfg": (["train", "--cfg", "job", "model=plain56"], 0, set()),
        "--help": (["--help"], 0, set()),
        "dry run": (["sweep", "model=plain20,resnet56", "data=synthetic", f"run.root={tmp_path}/runs", "--dry-run"],
                    0, set()),
        "sweep error": (["sweep", "model=plain20,plain57", "--dry-run"], 2, set()),
        "models": (["models"], 0, set()),
        "table": (["table", str(sweep), "-o", str(tmp_path / "out")], 0, set()),
    }
    for name, (args, code, also_absent) in cases.items():
        exit_code, heavy, output = _modules_after(args)
        assert exit_code == code, (name, output)
        assert not heavy & ({"torch", "torchvision"} | also_absent), (name, heavy)
    _, _, output = _modules_after(["models"])
    assert "0.27" in output and "resnet1202" in output  # sizes from the configs, no model built


def test_a_run_in_a_pipe_says_what_where_and_how_far(tmp_path):
    run_root = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "resexp.cli", "train", *TINY, "trainer.max_iters=4", "trainer.log_every=2",
         f"run.root={run_root}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    run_dir = run_root / "resnet20_synthetic_seed0"
    assert lines[0].startswith("[resnet20_synthetic_seed0] resnet20 on synthetic, 4 iterations, cpu (")
    assert lines[0].endswith(f"threads), fp32 -> {run_dir}")
    progress = [line for line in lines if "train err " in line]
    assert [line.split()[2] for line in progress] == ["2/4", "4/4"]
    assert lines[-1].startswith("resnet20 on synthetic: finished at iteration 4, train error ")


def test_lines_mode_prints_between_log_points(monkeypatch, capsys):
    clock = [100.0]
    monkeypatch.setattr(tracking.time, "perf_counter", lambda: clock[0])
    report = ProgressReport("lines", "r", 0, 1000)
    clock[0] += 600  # the first step compiled for ten minutes: not counted in the speed
    report.tick(1)
    clock[0] += HEARTBEAT_S - 1
    report.tick(10)
    assert capsys.readouterr().out == ""  # not due yet
    clock[0] += 2
    report.tick(31)
    speed = 30 / (HEARTBEAT_S + 1)
    assert capsys.readouterr().out == f"[r] it 31/1000  {speed:.2f} it/s  eta {(1000 - 31) / speed / 60:.1f} min\n"
    report.update(50, 12.5, 0.1)  # a log point restarts the wait
    capsys.readouterr()
    clock[0] += HEARTBEAT_S - 1
    report.tick(60)
    assert capsys.readouterr().out == ""
    quiet = ProgressReport("none", "r", 0, 1000)
    clock[0] += 10 * HEARTBEAT_S
    quiet.tick(500)
    assert capsys.readouterr().out == ""


def test_figure_says_what_it_left_out(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, "plain20", 20, False, 0, "finished")
    short = write_run(sweep, "resnet20", 20, True, 0, "finished")  # then cut to one point, as a 50-iteration run
    one_point = sweep / "resnet20_cifar10_seed0"
    for events in (one_point / "tb").iterdir():
        events.unlink()
    with SummaryWriter(str(one_point / "tb")) as writer:
        writer.add_scalar("train/error", short["train/error"][1][0], 50)
        writer.add_scalar("test/error", short["test/error"][1][0], 50)
    write_run(sweep, "plain56", 56, False, 0, "stopped")
    for events in (sweep / "plain56_cifar10_seed0" / "tb").iterdir():
        events.unlink()
    result = CliRunner().invoke(app, ["figure", str(sweep), "-o", str(tmp_path / "f.png")])
    assert result.exit_code == 0, result.output
    assert "Figure 6: 2 curves: plain-20, ResNet-20" in result.output
    assert "resexp: warning: plain-56 (stopped): not drawn, no error logged yet" in result.output
    assert "resexp: warning: ResNet-20: one point per curve" in result.output
    assert (tmp_path / "f.png").stat().st_size > 0


def test_missing_cifar10_names_the_download_command_and_synthetic(tmp_path, monkeypatch):
    def offline(self):  # as torchvision does: the root made, then the connection fails
        (Path(self.root) / "cifar-10-batches-py").mkdir(parents=True)
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(CIFAR10, "download", offline)
    (tmp_path / "cache").mkdir()  # there before: stays, though empty
    root = tmp_path / "cache" / "resexp" / "data"
    result = CliRunner().invoke(app, ["train", "model=resnet20", f"data.root={root}", "trainer.max_iters=1",
                                      f"run.root={tmp_path / 'runs'}"])
    assert result.exit_code == 2
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("resexp: error: CIFAR-10 not found: expected ")
    assert "the download failed: URLError" in message
    assert "run resexp data download cifar10 (where there is internet" in message
    assert message.endswith("to try resexp without it, train on data=synthetic (no download)")
    assert list((tmp_path / "cache").iterdir()) == []  # the failed download's folders are gone, the old one kept


def test_models_in_numeric_order():
    names = group_choices("model")
    assert [n for n in names if n.startswith("plain")] == ["plain20", "plain32", "plain44", "plain56", "plain110"]
    assert names.index("resnet110") < names.index("resnet1202")
