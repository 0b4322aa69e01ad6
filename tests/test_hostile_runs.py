"""Run folders that other people, other programs and full disks wrote (issue 28): every reader
names what it cannot use and reads the rest; a copy of a run is one seed; outputs are written
whole; names stay inside run.root; a resumed run logs what an uninterrupted one logs."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.figure
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

import resexp.engine.train as train_module
from fake_runs import write_final_run
from resexp.cli import app
from resexp.errors import ResexpError

READERS = ("status", "table", "figure", "report")


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def sweep(root: Path) -> Path:
    """Three seeds each of plain-20 and plain-56, finished, with their TensorBoard events."""
    for seed in range(3):
        write_final_run(root, "plain20", 20, False, seed, 5.0 + seed / 10, 9.0 + seed / 10)
        write_final_run(root, "plain56", 56, False, seed, 8.0 + seed / 10, 12.0 + seed / 10)
    return root


def run_reader(command: str, root: Path, out: Path):
    args = {"status": [root], "table": [root, "-o", out], "figure": [root, "-o", out / "figure6.png"],
            "report": [root, "-o", out / "report"]}[command]
    return invoke(command, *args)


# ---- 1. wrong verdicts from bad runs ----

def test_copies_of_one_run_count_once_and_are_named(tmp_path):
    """Three copies of seed 0 at each of two depths gave "3 seeds" and (a) reproduced (p = 0.05)."""
    first = {depth: write_final_run(tmp_path, f"plain{depth}", depth, False, 0, err, err + 4, dir_name=f"p{depth}a")
             for depth, err in ((20, 5.0), (56, 8.0))}
    for depth, run in first.items():
        for copy in "bc":
            shutil.copytree(run, tmp_path / f"p{depth}{copy}")
    result = invoke("report", tmp_path, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "report.md").read_text()
    [claim_a] = [line for line in report.splitlines() if line.startswith("| (a) degradation")]
    assert "**undecided** (too few finished runs: plain-20 has 1, plain-56 has 1" in claim_a
    for depth in (20, 56):
        for copy in "bc":
            assert (f"- `p{depth}{copy}`: duplicate (the same run as {first[depth]} (config and seed), counted once)"
                    in report)
    table = invoke("table", tmp_path, "-o", tmp_path / "table")
    with (tmp_path / "table" / "table6.csv").open() as f:
        assert [(row["model"], row["seeds"]) for row in csv.DictReader(f)] == [("plain-20", "1"), ("plain-56", "1")]
    assert f"duplicate run {tmp_path / 'p20b'}: the same run as {first[20]}" in table.stderr


def test_a_backup_inside_a_sweep_is_not_another_seed(tmp_path):
    root = sweep(tmp_path / "s")
    shutil.copytree(root / "model=plain20,seed=0", root / "model=plain20,seed=0.bak")
    result = invoke("table", root, "-o", tmp_path)
    assert result.exit_code == 0
    row = (tmp_path / "table6.md").read_text().splitlines()[2]
    assert row.split("|")[4].strip() == "3"  # seeds of plain-20
    assert f"- {root / 'model=plain20,seed=0.bak'} (duplicate: the same run as {root / 'model=plain20,seed=0'}" \
        in result.stdout


@pytest.mark.parametrize("value, said", [(float("nan"), "nan"), (-3.0, "-3.0"), (250.0, "250.0")])
def test_a_finished_run_with_an_impossible_error_is_no_point_and_is_listed(tmp_path, value, said):
    root = sweep(tmp_path / "s")
    bad = root / "model=plain20,seed=1"
    summary = json.loads((bad / "summary.json").read_text())
    summary["train_error"] = value
    (bad / "summary.json").write_text(json.dumps(summary))
    result = invoke("report", root, "-o", tmp_path / "out")
    assert result.exit_code == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- plain-20: 5.00, 5.20\n" in report  # the points of the test: seed 1 is not one
    assert (f"- `model=plain20,seed=1`: unreadable (summary.json: train_error must be a percentage in [0, 100]; "
            f"got {said})") in report


# ---- 2. a full disk ----

def test_a_full_disk_keeps_the_previous_report_and_names_the_path(tmp_path, monkeypatch):
    root = sweep(tmp_path / "s")
    out = tmp_path / "out"
    assert invoke("report", root, "-o", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def half_then_full(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_then_full)
    result = invoke("report", root, "-o", out)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"resexp: error: no space left on device: {out / 'figure6.png'} needs more than")
    assert "the previous figure6.png is intact" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing replaced, no temporary left

    monkeypatch.undo()
    real_write = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        real_write(self, text[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    assert invoke("report", root, "-o", out).exit_code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ---- 3, 4. names that escape run.root; '~' ----

@pytest.mark.parametrize("override", ["run.name=..", "run.name=.", "run.sweep=..", "run.sweep=."])
def test_names_that_leave_run_root_are_refused(tmp_path, override):
    for command in ("train", "sweep"):
        result = invoke(command, "data=synthetic", f"run.root={tmp_path}", override, "--dry-run"
                        if command == "sweep" else "--cfg=job")
        assert result.exit_code == 2
        key, value = override.split("=")
        assert result.stderr.strip() == (f"resexp: error: {key} must be a folder name: not empty, '.' or '..', "
                                         f"without '/'; got '{value}'")
    assert list(tmp_path.iterdir()) == []


def test_tilde_is_the_home_folder_for_train_and_sweep(tmp_path):
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir(), here.mkdir()
    env = {**os.environ, "HOME": str(home)}
    args = ["data=synthetic", "model=plain20", "model.width=0.25", "data.train_size=64", "data.test_size=32",
            "trainer.batch_size=32", "trainer.max_iters=1", "trainer.progress=none", "run.root='~/x'"]
    for command in (["train", *args], ["sweep", *args, "seed=0,1", "run.sweep=t"]):
        done = subprocess.run([sys.executable, "-m", "resexp.cli", *command], cwd=here, env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
    assert list(here.iterdir()) == []  # no folder named ~
    assert (home / "x" / "plain20_synthetic_seed0" / "summary.json").is_file()
    assert sorted(p.name for p in (home / "x" / "sweeps" / "t").glob("seed=*")) == ["seed=0", "seed=1"]


# ---- 5. runs that vanish without a word ----

def test_a_folder_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
    """Mode 000 (the test may run as root, to whom it is no obstacle: the refusal is made here)."""
    root = sweep(tmp_path / "s")
    hidden = root / "model=plain56,seed=2"
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == hidden:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    status = invoke("status", root)
    assert status.exit_code == 0
    assert "model=plain56,seed=2: unreadable: cannot list it (Permission denied)" in status.stdout
    assert "6 runs: 5 finished, 1 unreadable" in status.stdout
    table = invoke("table", root, "-o", tmp_path)
    assert f"resexp: warning: unreadable run {hidden}: cannot list it (Permission denied)" in table.stderr


def test_one_seed_without_an_error_series_leaves_only_itself_out_of_figure6(tmp_path):
    root = sweep(tmp_path / "s")
    shutil.rmtree(root / "model=plain20,seed=1" / "tb")
    result = invoke("figure", root, "-o", tmp_path / "f.png")
    assert result.exit_code == 0
    assert "Figure 6: 2 curves: plain-20, plain-56" in result.stdout
    assert "plain-20: seed 1 logged no train/error, so its curve leaves it out" in result.stderr
    from resexp.report.figures import figure6_series
    from resexp.runs import find_runs

    plain20 = next(c for c in figure6_series(find_runs(root)) if c.label == "plain-20")
    assert plain20.train.mean[-1] == pytest.approx((5.0 + 5.2) / 2, abs=1e-5)  # seeds 0 and 2


# ---- 6, 7. malformed and crafted files ----

SUMMARY_DAMAGE = {
    "deep nesting": lambda s: "[" * 100_000 + "]" * 100_000,
    "updated without a time zone": lambda s: json.dumps({**s, "updated": "2026-01-01T12:00:00"}),
    "status 5": lambda s: json.dumps({**s, "status": 5}),
    "train_error abc": lambda s: json.dumps({**s, "train_error": "abc"}),
    "params abc": lambda s: json.dumps({**s, "params": "abc"}),
    "segments abc": lambda s: json.dumps({**s, "segments": "abc"}),
    "test_error Infinity": lambda s: json.dumps({**s, "test_error": float("inf")}),
    "error_warmup abc": lambda s: json.dumps({**s, "error_warmup": "abc"}),
    "error_warmup ended_by x": lambda s: json.dumps({**s, "error_warmup": {"ended_at": 400, "ended_by": "x",
                                                                           "train_error": 79.0, "over_images": 6400}}),
}


@pytest.mark.parametrize("damage", SUMMARY_DAMAGE)
def test_one_malformed_summary_is_one_line_and_the_rest_are_read(tmp_path, damage):
    root = sweep(tmp_path / "s")
    bad = root / "model=plain56,seed=0"
    summary = json.loads((bad / "summary.json").read_text())
    (bad / "summary.json").write_text(SUMMARY_DAMAGE[damage](summary))
    status = invoke("status", root)
    assert status.exit_code == 0, status.output
    assert "6 runs: 5 finished, 1 unreadable" in status.stdout
    for command in ("table", "figure", "report"):
        result = run_reader(command, root, tmp_path / "out")
        assert result.exit_code == 0, result.output
        assert f"resexp: warning: unreadable run {bad}: summary.json" in result.stderr


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    root = sweep(tmp_path / "s")
    bomb = root / "model=plain20,seed=2" / "config.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb.write_text(bomb.read_text() + "\n".join(lines) + "\n")
    for command in ("table", "report"):
        result = run_reader(command, root, tmp_path / "out")
        assert result.exit_code == 0
        assert (f"resexp: warning: unreadable run {bomb.parent}: config.yaml has YAML aliases (*name), which resexp "
                "never writes") in result.stderr
    result = invoke("train", "data=synthetic", f"run.dir='{bomb.parent}'")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"resexp: error: {bomb} has YAML aliases (*name), which resexp "
                                                  "never writes; restore it or choose another run.name"]


def test_an_event_record_claiming_a_huge_length_is_refused(tmp_path):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    import struct

    root = sweep(tmp_path / "s")
    run = root / "model=plain20,seed=0"
    events = next((run / "tb").iterdir())
    header = struct.pack("<Q", 2**40)
    events.write_bytes(events.read_bytes() + header + struct.pack("<I", masked_crc32c(header)))
    result = invoke("table", root, "-o", tmp_path)
    assert result.exit_code == 0
    assert (f"unreadable run {run}: tb/{events.name} has a record of {2**40} bytes (at most 16 MiB)"
            in result.stderr)


# ---- 9, 10. a resumed run; no litter ----

TINY = ["data=synthetic", "model=resnet20", "data.train_size=256", "data.test_size=64", "model.width=0.25",
        "trainer.batch_size=32", "trainer.log_every=2", "trainer.eval_every=4", "trainer.progress=none",
        "trainer.max_iters=8", "trainer.probe_every=3"]


def tag_steps(run: Path) -> dict[str, list[int]]:
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: sorted({e.step for e in events.Scalars(tag)}) for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    assert invoke("train", *TINY, f"run.root={root}").exit_code == 0
    return tag_steps(root / "resnet20_synthetic_seed0")


@pytest.mark.parametrize("checkpoint_every", [7, 4])  # resumed after the last probe step (6); before it
def test_a_resumed_run_logs_every_tag_at_the_steps_an_uninterrupted_one_does(tmp_path, monkeypatch, uninterrupted,
                                                                             checkpoint_every):
    args = [*TINY, f"trainer.checkpoint_every={checkpoint_every}", f"run.root={tmp_path}"]
    real = train_module.learning_rate

    def interrupted_at_7(cfg, at, *rest):
        if at == 7:
            raise KeyboardInterrupt
        return real(cfg, at, *rest)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "learning_rate", interrupted_at_7)
        assert invoke("train", *args).exit_code == 130
    run = tmp_path / "resnet20_synthetic_seed0"
    stale = run / "checkpoints" / ".last.pt.killed.tmp"  # what a kill -9 mid-save leaves
    stale.write_bytes(b"half a checkpoint")
    assert invoke("train", *args).exit_code == 0
    assert tag_steps(run) == uninterrupted
    assert any(tag.startswith("probe/skip_loss_delta/") and steps[-1] == 8 for tag, steps in uninterrupted.items())
    assert not stale.exists()
    table = invoke("table", tmp_path, "-o", tmp_path / "t")
    assert table.exit_code == 0 and table.stderr == ""  # no TensorBoard purge message


def test_figure_into_a_folder_and_landscape_of_a_missing_run(tmp_path, monkeypatch):
    root = sweep(tmp_path / "s")
    monkeypatch.chdir(tmp_path / "s")
    folder = tmp_path / "figs"
    folder.mkdir()
    (tmp_path / "figs.png").write_bytes(b"someone else's")
    for out, where in ((f"{folder}/", folder), (str(folder), folder), (".", Path.cwd())):
        result = invoke("figure", root, "-o", out)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip().splitlines()[-1] == f"wrote {Path(out) / 'figure6.png'}, {Path(out) / 'figure6.pdf'}"
        assert (where / "figure6.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "figs.png").read_bytes() == b"someone else's"
    result = invoke("landscape", tmp_path / "missing", tmp_path / "other")
    assert result.exit_code == 2
    assert not (tmp_path / "missing").exists()


def test_config_yaml_reads_as_omegaconf_writes_it(tmp_path):
    """read_config parses with libyaml, yet every value reads as OmegaConf.save wrote it (resolved,
    as a run writes it), and a float without a dot (1e-4, as people write it by hand) is a float,
    as OmegaConf has it. What a resolved config never holds (an interpolation, a date) is corrupt."""
    from omegaconf import OmegaConf

    from resexp.config import compose
    from resexp.rundir import read_config, read_config_values

    cfg = compose(["model=resnet110", "data=synthetic", "optim.weight_decay=0.0001", "run.name='a b: c'"])
    OmegaConf.save(cfg, tmp_path / "config.yaml", resolve=True)
    assert read_config_values(tmp_path / "config.yaml") == OmegaConf.to_container(cfg, resolve=True)
    assert OmegaConf.to_container(read_config(tmp_path / "config.yaml")) == OmegaConf.to_container(cfg, resolve=True)
    text = (tmp_path / "config.yaml").read_text().replace("weight_decay: 0.0001", "weight_decay: 1e-4")
    (tmp_path / "config.yaml").write_text(text)
    assert read_config(tmp_path / "config.yaml").optim.weight_decay == 1e-4
    for line, said in (("note: ${model.depth}", "an interpolation at note"), ("note: 2026-12-07", "a date value at note"),
                       ("1: one", "a key '1' that is no name at the top")):
        (tmp_path / "config.yaml").write_text(text + line + "\n")
        with pytest.raises(ResexpError, match=re.escape(f"is corrupt ({said}, which resexp never writes)")):
            read_config_values(tmp_path / "config.yaml")
