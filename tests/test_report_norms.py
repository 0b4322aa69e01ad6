"""The norm-placement report from fake ViT run directories written with the real TensorBoard writer."""

import csv
import io
import json
import statistics

import numpy as np
import pytest
from omegaconf import OmegaConf
from rich.console import Console
from torch.utils.tensorboard import SummaryWriter
from typer.testing import CliRunner

from resexp.cli import app
from resexp.errors import ResexpError
from resexp.kinds import report_figure
from resexp.norms.figure import draw_norms_figure, loss_curves
from resexp.norms.lr import at_best_lr, draw_lr_figure, lr_markdown, lr_rows, varies_lr
from resexp.norms.placements import placement_groups
from resexp.norms.probes import block_profile, probe_steps
from resexp.norms.table import norms_runs, norms_table, print_norms_table, write_norms_table
from resexp.runs import find_runs, scan_runs

MAX_ITERS = 1000
EVAL_STEPS = list(range(100, MAX_ITERS + 1, 100))
PROBE_STEPS = [0, 500, 1000]
DIVERGED_AT = 340
BLOWN_UP_LOSS = 5e3
PROBES = ("grad_norm", "stream_norm", "rel_update", "angular_distance", "skip_loss_delta")
# (name, norm_placement, residual, depth, warmup_iters, seed, status): vit_post at depth 24
# diverges without warmup; two seeds of vit_post depth 6 without warmup; vit_plain is the
# residual=false twin (own row); vit_rezero has zero gradient at init.
RUNS = [
    ("vit_post", "post", True, 6, 0, 0, "finished"), ("vit_post", "post", True, 6, 0, 1, "finished"),
    ("vit_post", "post", True, 6, 100, 0, "finished"),
    ("vit_post", "post", True, 24, 0, 0, "diverged"), ("vit_post", "post", True, 24, 100, 0, "finished"),
    ("vit_pre", "pre", True, 6, 0, 0, "finished"), ("vit_pre", "pre", True, 6, 100, 0, "finished"),
    ("vit_pre", "pre", True, 24, 0, 0, "finished"), ("vit_pre", "pre", True, 24, 100, 0, "finished"),
    ("vit_plain", "post", False, 6, 0, 0, "finished"),
    ("vit_rezero", "rezero", True, 6, 0, 0, "finished"),
]
NAMES = sorted({r[0] for r in RUNS})


def f32(values):
    """TensorBoard stores scalars as float32: what a reader gets back."""
    return [float(np.float32(v)) for v in values]


def write_vit_run(root, name, placement, residual, depth, warmup, seed, status, probes=True, lr=1e-3,
                  loss_scale=1.0):
    """A ViT run directory as train.py writes it; returns what was logged: scalars {tag: (steps,
    values)}, probes {probe: {step: per-block values}} and the summary."""
    run_dir = root / (f"{name}_d{depth}_w{warmup}_seed{seed}" + ("" if lr == 1e-3 else f"_lr{lr:g}"))
    run_dir.mkdir(parents=True)
    cfg = {"seed": seed, "run": {"dir": str(run_dir)},
           "model": {"arch": "vit", "name": name, "depth": depth, "dim": 192, "heads": 3,
                     "norm_placement": placement, "residual": residual, "norm": "layernorm"},
           "data": {"name": "cifar10", "root": "/somewhere", "val_size": 0},
           "optim": {"name": "adamw", "lr": lr, "warmup_iters": warmup, "schedule": "cosine"},
           "trainer": {"max_iters": MAX_ITERS, "batch_size": 128, "device": "cpu", "probe_every": 500}}
    OmegaConf.save(OmegaConf.create(cfg), run_dir / "config.yaml")
    key = [NAMES.index(name), depth, seed]
    rng = np.random.default_rng([*key, warmup])
    if status == "diverged":
        steps = [s for s in EVAL_STEPS if s < DIVERGED_AT] + [DIVERGED_AT]
        loss = f32([*np.linspace(2.3, 2.0, len(steps) - 1), BLOWN_UP_LOSS])
        probe_at = [0]
    else:
        steps, probe_at = EVAL_STEPS, PROBE_STEPS
        loss = f32(loss_scale * (2.3 * np.exp(-np.arange(len(steps)) / 5) + depth / 100
                                 + rng.uniform(0, 0.05, len(steps))))
    train, test = f32(rng.uniform(5, 40, len(steps))), f32(rng.uniform(15, 50, len(steps)))
    scalars = {"train/loss": (steps, loss), "train/error": (steps, train), "test/error": (steps, test),
               "lr": (steps, f32([1e-3] * len(steps)))}
    logged_probes = {probe: {} for probe in PROBES} if probes else {}
    for step in probe_at if probes else []:
        # At init the probes depend on the seed's weights and batch, not on the warmup.
        prng = np.random.default_rng(key if step == 0 else [*key, warmup, step])
        grad = np.zeros(depth) if placement == "rezero" and step == 0 else prng.uniform(0.1, 2, depth)
        logged_probes["grad_norm"][step] = f32(grad)
        logged_probes["stream_norm"][step] = f32(np.cumsum(prng.uniform(1, 3, depth)))
        logged_probes["rel_update"][step] = f32(prng.uniform(0.01, 1, depth))
        logged_probes["angular_distance"][step] = f32(prng.uniform(0, 0.5, depth))
        logged_probes["skip_loss_delta"][step] = f32(prng.uniform(-0.01, 2, depth))
    with SummaryWriter(str(run_dir / "tb")) as writer:
        for tag, (tag_steps, values) in scalars.items():
            for step, value in zip(tag_steps, values):
                writer.add_scalar(tag, value, step)
        for probe, by_step in logged_probes.items():
            for step, values in by_step.items():
                for block, value in enumerate(values):
                    writer.add_scalar(f"probe/{probe}/block_{block:03d}", value, step)
        if status == "diverged":
            writer.add_text("status", f"diverged at iteration {DIVERGED_AT}: loss {BLOWN_UP_LOSS}", DIVERGED_AT)
    summary = {"status": status, "model": name, "seed": seed, "params": 1_000_000 * depth, "eval_split": "test",
               "iterations": steps[-1], "diverged_reason": "loss above ceiling" if status == "diverged" else None,
               "train_error": train[-1], "train_loss": loss[-1], "test_error": test[-1], "best_test_error": min(test)}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return {"scalars": scalars, "probes": logged_probes, "summary": summary}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """(sweep dir, {(name, depth, warmup, seed): logged}) for RUNS plus one CIFAR ResNet run."""
    root = tmp_path_factory.mktemp("norms")
    logged = {(n, d, w, s): write_vit_run(root, n, p, r, d, w, s, st) for n, p, r, d, w, s, st in RUNS}
    other = root / "resnet20_seed0"  # not a ViT: the norms report leaves it out
    other.mkdir()
    OmegaConf.save(OmegaConf.create({"seed": 0, "model": {"arch": "cifar_resnet", "name": "resnet20", "depth": 20},
                                     "data": {"name": "cifar10"}, "optim": {"name": "sgd", "lr": 0.1},
                                     "trainer": {"max_iters": 10, "batch_size": 128}}),
                   other / "config.yaml")
    (other / "summary.json").write_text(json.dumps({"status": "finished", "train_error": 1.0, "test_error": 8.5,
                                                    "best_test_error": 8.2}))
    return root, logged


def run_of(runs, name, depth, warmup, seed):
    (run,) = [r for r in runs if r.config.model.arch == "vit" and (
        r.config.model.name, r.depth, r.config.optim.warmup_iters, r.seed) == (name, depth, warmup, seed)]
    return run


def notes(ax):
    """The panel's notes, on one line each (they are wrapped to the panel's width)."""
    return [" ".join(t.get_text().split()) for t in ax.texts]


def test_block_profile_returns_the_logged_numbers(sweep):
    root, logged = sweep
    runs = find_runs(root)
    run = run_of(runs, "vit_pre", 24, 100, 0)
    probes = logged["vit_pre", 24, 100, 0]["probes"]
    assert probe_steps(run, "grad_norm") == PROBE_STEPS
    for probe in ("grad_norm", "stream_norm", "rel_update"):
        profile = block_profile(run, probe, "init")
        assert profile.shape == (24,) and profile.tolist() == probes[probe][0]
        assert block_profile(run, probe, "last").tolist() == probes[probe][1000]
        assert block_profile(run, probe, 500).tolist() == probes[probe][500]
    # The diverged run probed only at init: that is also its last probe step.
    diverged = run_of(runs, "vit_post", 24, 0, 0)
    assert probe_steps(diverged, "stream_norm") == [0]
    assert block_profile(diverged, "stream_norm", "last").tolist() == logged["vit_post", 24, 0, 0]["probes"][
        "stream_norm"][0]
    with pytest.raises(ResexpError, match="no probe/grad_norm at step 700"):
        block_profile(run, "grad_norm", 700)
    with pytest.raises(ResexpError, match="not logged"):
        block_profile(run, "attention_entropy", "init")


def test_placement_groups_one_per_placement_in_placement_order(sweep):
    root, _ = sweep
    groups = placement_groups(find_runs(root))
    assert list(groups) == ["vit_post", "vit_plain", "vit_pre", "vit_rezero"]  # the ResNet is left out
    assert len(groups["vit_post"]) == 5 and len(groups["vit_pre"]) == 4
    with pytest.raises(ResexpError, match="no ViT runs"):
        placement_groups([r for r in find_runs(root) if r.config.model.arch != "vit"])


def test_norms_runs_one_row_per_run(sweep):
    root, logged = sweep
    rows = norms_runs(find_runs(root))
    assert len(rows) == len(RUNS)
    assert [(r["model"], r["depth"], r["warmup_iters"], r["seed"]) for r in rows[:5]] == [
        ("vit_post", 6, 0, 0), ("vit_post", 6, 0, 1), ("vit_post", 6, 100, 0), ("vit_post", 24, 0, 0),
        ("vit_post", 24, 100, 0)]
    for row in rows:
        want = logged[row["model"], row["depth"], row["warmup_iters"], row["seed"]]
        summary, probes = want["summary"], want["probes"]
        assert row["status"] == summary["status"] and row["iterations"] == summary["iterations"]
        assert (row["train_error"], row["test_error"], row["train_loss"]) == (
            summary["train_error"], summary["test_error"], summary["train_loss"])
        last = max(probes["stream_norm"])
        assert row["probe_step"] == last
        assert row["stream_growth"] == probes["stream_norm"][last][-1] / probes["stream_norm"][last][0]
        assert row["min_rel_update"] == min(probes["rel_update"][last])
        assert row["angular_distance"] == pytest.approx(statistics.fmean(probes["angular_distance"][last]), rel=1e-6)
        assert row["skip_step"] == last and row["skip_loss_delta_max"] == max(probes["skip_loss_delta"][last])
        assert row["lr"] == 1e-3 and row["best_lr_of_depth"] is True
    diverged = [r for r in rows if r["status"] == "diverged"]
    assert [(r["model"], r["depth"], r["diverged_at"]) for r in diverged] == [("vit_post", 24, DIVERGED_AT)]
    assert all(r["diverged_at"] is None for r in rows if r["status"] != "diverged")
    plain = next(r for r in rows if r["model"] == "vit_plain")
    assert (plain["placement"], plain["residual"]) == ("post", False)


def test_norms_table_rows(sweep):
    root, logged = sweep
    rows = {r["model"]: r for r in norms_table(find_runs(root))}
    assert list(rows) == ["vit_post", "vit_plain", "vit_pre", "vit_rezero"]
    post, pre, plain = rows["vit_post"], rows["vit_pre"], rows["vit_plain"]
    assert (post["diverged_no_warmup"], post["diverged_warmup"]) == ("24", "none")
    assert (pre["diverged_no_warmup"], pre["diverged_warmup"]) == ("none", "none")
    assert (plain["diverged_no_warmup"], plain["diverged_warmup"]) == ("none", "not run")
    assert post["runs"] == 5 and post["warmup_iters"] == "100" and plain["warmup_iters"] == ""

    def final(name, depth, warmup, seed, key):
        return logged[name, depth, warmup, seed]["summary"][key]

    # Mean over the two seeds of vit_post depth 6 without warmup; one seed with warmup.
    train6 = statistics.fmean(final("vit_post", 6, 0, s, "train_error") for s in (0, 1))
    test6 = statistics.fmean(final("vit_post", 6, 0, s, "test_error") for s in (0, 1))
    assert post["d6_train"] == pytest.approx(train6, rel=1e-12) and post["d6_test"] == pytest.approx(test6, rel=1e-12)
    w_train, w_test = final("vit_post", 6, 100, 0, "train_error"), final("vit_post", 6, 100, 0, "test_error")
    assert (post["d6_train_w"], post["d6_test_w"]) == (w_train, w_test)
    assert post["d6"] == f"{train6:.1f}/{test6:.1f} (w: {w_train:.1f}/{w_test:.1f})"
    # The diverged depth: no errors averaged, the cell says where it diverged.
    assert post["d24_train"] is None and post["d24_test"] is None
    w_train, w_test = final("vit_post", 24, 100, 0, "train_error"), final("vit_post", 24, 100, 0, "test_error")
    assert post["d24"] == f"div@{DIVERGED_AT} (w: {w_train:.1f}/{w_test:.1f})"
    assert plain["d24"] == "not run" and plain["d24_train"] is None
    plain_train, plain_test = final("vit_plain", 6, 0, 0, "train_error"), final("vit_plain", 6, 0, 0, "test_error")
    assert plain["d6"] == f"{plain_train:.1f}/{plain_test:.1f}"

    def growth(name, depth, warmup):
        stream = logged[name, depth, warmup, 0]["probes"]["stream_norm"][1000]
        return stream[-1] / stream[0]

    def min_rel(name, depth, warmup):
        return min(logged[name, depth, warmup, 0]["probes"]["rel_update"][1000])

    # Deepest finished depth: 24 for both; vit_post's only finished run there is the warmup one.
    assert post["probe_depth"] == pre["probe_depth"] == 24 and plain["probe_depth"] == 6
    assert post["stream_growth"] == growth("vit_post", 24, 100)
    assert post["min_rel_update"] == min_rel("vit_post", 24, 100)
    assert pre["stream_growth"] == pytest.approx((growth("vit_pre", 24, 0) + growth("vit_pre", 24, 100)) / 2, rel=1e-12)
    assert pre["min_rel_update"] == pytest.approx((min_rel("vit_pre", 24, 0) + min_rel("vit_pre", 24, 100)) / 2,
                                                  rel=1e-12)


def test_seeds_that_partly_diverge_are_counted(tmp_path):
    write_vit_run(tmp_path, "vit_post", "post", True, 12, 0, 0, "finished")
    logged = write_vit_run(tmp_path, "vit_post", "post", True, 12, 0, 1, "diverged")
    (row,) = norms_table(find_runs(tmp_path))
    assert (row["diverged_no_warmup"], row["diverged_warmup"]) == ("12 (1 of 2)", "not run")
    assert row["d12"] == f"{row['d12_train']:.1f}/{row['d12_test']:.1f}; div@{DIVERGED_AT}"
    assert logged["summary"]["iterations"] == DIVERGED_AT


def test_markdown_and_csv_files_hold_the_rows(sweep, tmp_path):
    root, _ = sweep
    runs = find_runs(root)
    rows, run_rows = norms_table(runs), norms_runs(runs)
    paths = write_norms_table(rows, tmp_path, run_rows)
    assert [p.name for p in paths] == ["norms_table.md", "norms_table.csv", "norms_runs.csv"]

    md = paths[0].read_text()
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table_lines[0].strip("|").split("|")]
    assert header[:5] == ["model", "runs", "lr", "diverged w/o warmup (depths)", "diverged with warmup (depths)"]
    assert header[-2:] == ["mean angular distance (deepest finished d)", "max skip-loss Δ (deepest finished d)"]
    assert "d=6 train/test err. (%)" in header and "d=24 train/test err. (%)" in header
    cells = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table_lines[2:]]
    assert [c["model"] for c in cells] == [r["model"] for r in rows]
    post = cells[0]
    assert post["diverged w/o warmup (depths)"] == "24" and post["d=24 train/test err. (%)"] == rows[0]["d24"]
    assert post["‖x‖ growth last/first block (deepest finished d)"] == f"{rows[0]['stream_growth']:.3g} (d=24)"
    assert "optim.warmup_iters = 100" in md and "div@N" in md  # the note defines the columns

    with paths[1].open() as f:
        back = list(csv.DictReader(f))
    assert [b["model"] for b in back] == [r["model"] for r in rows]
    assert float(back[0]["stream_growth"]) == rows[0]["stream_growth"] and back[0]["d24_train"] == ""

    with paths[2].open() as f:
        long = list(csv.DictReader(f))
    assert len(long) == len(RUNS)
    for row, line in zip(run_rows, long):
        assert line["model"] == row["model"] and int(line["depth"]) == row["depth"]
        assert int(line["warmup_iters"]) == row["warmup_iters"] and line["status"] == row["status"]
        assert float(line["test_error"]) == row["test_error"] and float(line["stream_growth"]) == row["stream_growth"]
        assert line["diverged_at"] == ("" if row["diverged_at"] is None else str(row["diverged_at"]))

    out = io.StringIO()
    print_norms_table(rows, Console(file=out, width=300))
    assert all(r["model"] in out.getvalue() for r in rows)


def test_norms_figure_draws_the_logged_data(sweep, tmp_path):
    root, logged = sweep
    runs = find_runs(root)
    paths = report_figure("norms", str(root), str(tmp_path / "out" / "norms.png"))
    assert paths == [tmp_path / "out" / "norms.png", tmp_path / "out" / "norms.pdf"]
    assert paths[0].read_bytes().startswith(b"\x89PNG") and paths[1].read_bytes().startswith(b"%PDF")

    fig = draw_norms_figure(runs)
    axes = np.array(fig.axes).reshape(3, 4)  # rows: loss, grad norm, stream norm; one column per placement
    assert [ax.get_title().split("\n")[0] for ax in axes[0]] == [
        "vit_post (Post-LN)", "vit_plain (Post-LN, no residual)", "vit_pre (Pre-LN)", "vit_rezero (ReZero)"]
    assert all(ax.get_yscale() == "log" for ax in axes[1:].ravel())

    # Gradient norm at init, vit_post depth 6: mean over seeds 0 and 1 (seed 0's warmup run is
    # the same initialisation and counts once).
    want = np.mean([logged["vit_post", 6, 0, s]["probes"]["grad_norm"][0] for s in (0, 1)], axis=0)
    lines = {len(line.get_xdata()): line for line in axes[1, 0].get_lines()}
    np.testing.assert_allclose(lines[6].get_ydata(), want, rtol=1e-12)
    np.testing.assert_array_equal(lines[24].get_ydata(), logged["vit_post", 24, 0, 0]["probes"]["grad_norm"][0])

    # Training loss: the diverged run ends in an X at its divergence, on the top edge of the axis.
    curves = loss_curves(placement_groups(runs)["vit_post"])
    assert [(c.depth, c.warmup_iters, c.status, c.seeds) for c in curves] == [
        (6, 0, "finished", [0, 1]), (6, 100, "finished", [0]), (24, 0, "diverged", [0]), (24, 100, "finished", [0])]
    (marker,) = [line for line in axes[0, 0].get_lines() if line.get_marker() == "X"]
    assert marker.get_xdata()[0] == DIVERGED_AT and marker.get_ydata()[0] == axes[0, 0].get_ylim()[1]
    assert any("not shown" in t for t in notes(axes[0, 0]))
    # ReZero: zero gradient at init cannot go on a log axis: the panel says so.
    assert any("≤ 0" in t and "log axis" in t for t in notes(axes[1, 3]))


def test_norms_figure_says_what_is_missing(tmp_path):
    write_vit_run(tmp_path, "vit_post", "post", True, 6, 0, 0, "finished", probes=False)
    fig = draw_norms_figure(find_runs(tmp_path))
    axes = np.array(fig.axes).reshape(3, 2)  # the Pre-LN column is there, empty, with a note
    assert axes[0, 1].get_title().startswith("Pre-LN")
    assert all(notes(ax) == ["no Pre-LN runs in this sweep"] for ax in axes[:, 1])
    assert notes(axes[1, 0]) == ["no probe/grad_norm logged at step 0"]
    assert notes(axes[2, 0]) == ["no probe/stream_norm logged"]
    assert not axes[0, 0].texts  # its loss curve is there


def test_cli_kind_norms_and_unknown_kind(sweep, tmp_path):
    root, _ = sweep
    runner = CliRunner()
    result = runner.invoke(app, ["figure", "--kind", "norms", str(root)])
    assert result.exit_code == 0, result.output
    assert all((root / name).stat().st_size > 0 for name in ("norms.png", "norms.pdf"))
    result = runner.invoke(app, ["table", "--kind", "norms", str(root), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "vit_post" in result.output
    assert all((tmp_path / name).stat().st_size > 0 for name in ("norms_table.md", "norms_table.csv", "norms_runs.csv"))

    for command in ("figure", "table"):
        result = runner.invoke(app, [command, "--kind", "bogus", str(root)])
        assert result.exit_code == 2
        assert result.output.strip() == "resexp: error: unknown --kind 'bogus'; choose from: fig6, norms"

    resnet_only = tmp_path / "resnets"
    (resnet_only / "r").mkdir(parents=True)
    for name in ("config.yaml", "summary.json"):
        (resnet_only / "r" / name).write_bytes((root / "resnet20_seed0" / name).read_bytes())
    result = runner.invoke(app, ["table", "--kind", "norms", str(resnet_only)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "no ViT runs" in result.output


def test_residual_false_of_the_same_name_is_its_own_row(tmp_path):
    write_vit_run(tmp_path / "a", "vit_post", "post", True, 6, 0, 0, "finished")
    write_vit_run(tmp_path / "b", "vit_post", "post", False, 6, 0, 0, "finished")
    rows = norms_table(find_runs(tmp_path))
    assert [(r["model"], r["residual"]) for r in rows] == [
        ("vit_post (model.residual=True)", True), ("vit_post (model.residual=False)", False)]


def test_running_and_unreadable_runs_in_the_norms_table(tmp_path):
    sweep = tmp_path / "sweep"
    done = write_vit_run(sweep, "vit_post", "post", True, 6, 0, 0, "finished")
    write_vit_run(sweep, "vit_post", "post", True, 6, 0, 1, "running")
    running = sweep / "vit_post_d6_w0_seed1"
    summary = json.loads((running / "summary.json").read_text())
    for key in ("train_error", "train_loss", "test_error", "best_test_error"):  # before its first log
        del summary[key]
    (running / "summary.json").write_text(json.dumps(summary))
    write_vit_run(sweep, "vit_pre", "pre", True, 6, 0, 0, "finished")
    corrupt = sweep / "vit_pre_d6_w0_seed0"
    (events,) = (corrupt / "tb").iterdir()
    events.write_bytes(events.read_bytes()[:-10])  # the last record cut short
    reason = f"tb/{events.name} is truncated or corrupt"

    result = CliRunner().invoke(app, ["table", "--kind", "norms", str(sweep), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"resexp: warning: unreadable run {corrupt}: {reason}"]
    (row,) = norms_table(scan_runs(sweep)[0])  # vit_pre's only run is unreadable
    train, test = done["summary"]["train_error"], done["summary"]["test_error"]
    assert (row["model"], row["runs"], row["d6"]) == ("vit_post", 2, f"{train:.1f}/{test:.1f}; running")
    assert (row["d6_train"], row["d6_test"]) == (train, test)
    md = (tmp_path / "norms_table.md").read_text().splitlines()
    assert md[-2:] == ["Runs left out (not in the table):", f"- {corrupt} (unreadable: {reason})"]
    with (tmp_path / "norms_runs.csv").open() as f:
        back = {line["seed"]: line for line in csv.DictReader(f)}
    assert (back["1"]["status"], back["1"]["test_error"], back["1"]["train_loss"]) == ("running", "", "")


# A learning-rate sweep (norms_lr): (name, placement, depth, lr, loss_scale, status). At depth 6
# vit_pre is best at 1e-3 with 3e-3 within 10% of it; vit_post diverges at 3e-3 and is best at 3e-4.
LR_RUNS = [
    ("vit_pre", "pre", 6, 3e-4, 1.5, "finished"), ("vit_pre", "pre", 6, 1e-3, 1.0, "finished"),
    ("vit_pre", "pre", 6, 3e-3, 1.05, "finished"), ("vit_pre", "pre", 24, 1e-3, 1.0, "finished"),
    ("vit_post", "post", 6, 3e-4, 0.9, "finished"), ("vit_post", "post", 6, 1e-3, 1.2, "finished"),
    ("vit_post", "post", 6, 3e-3, 1.0, "diverged"),
]


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("norms_lr")
    logged = {(n, d, lr): write_vit_run(root, n, p, True, d, 0, 0, st, lr=lr, loss_scale=k)
              for n, p, d, lr, k, st in LR_RUNS}
    return root, logged


def test_lr_sweep_final_loss_per_placement_depth_and_lr(lr_sweep):
    root, logged = lr_sweep
    runs = find_runs(root)
    assert varies_lr(runs) and not varies_lr([r for r in runs if r.config.optim.lr == 1e-3])
    rows = {(r["model"], r["depth"]): r for r in lr_rows(runs)}
    assert list(rows) == [("vit_post", 6), ("vit_pre", 6), ("vit_pre", 24)]  # placement order, then depth

    def loss(name, depth, lr):
        return logged[name, depth, lr]["summary"]["train_loss"]

    pre = rows["vit_pre", 6]
    assert [pre[f"lr_{lr:g}"] for lr in (3e-4, 1e-3, 3e-3)] == [loss("vit_pre", 6, lr) for lr in (3e-4, 1e-3, 3e-3)]
    assert pre["best_lr"] == 1e-3 and (pre["lrs_near_best"], pre["lr_range"]) == (2, "0.001–0.003")
    post = rows["vit_post", 6]
    assert post["lr_0.003"] is None and post["lr_0.003_status"] == "1 div" and post["lr_0.0003_status"] == ""
    assert post["best_lr"] == 3e-4 and post["lrs_near_best"] == 1
    deep = rows["vit_pre", 24]
    assert "lr_0.0003" not in deep and deep["best_lr"] == 1e-3 and deep["lr_range"] == "0.001–0.001"
    md = lr_markdown(list(rows.values()))
    assert f"| vit_post | 6 | {loss('vit_post', 6, 3e-4):.3f} | {loss('vit_post', 6, 1e-3):.3f} | – (1 div) | " \
           "0.0003 | 1 (0.0003–0.0003) |" in md
    assert "| vit_pre | 24 | not run | " in md


def test_an_lr_sweep_is_one_row_per_placement_read_at_its_best_lr(lr_sweep, tmp_path):
    root, logged = lr_sweep
    runs = find_runs(root)
    rows = {r["model"]: r for r in norms_table(runs)}
    assert list(rows) == ["vit_post", "vit_pre"] and rows["vit_pre"]["runs"] == 4
    assert rows["vit_pre"]["lr"] == "best: 0.001 (d=6), 0.001 (d=24)" and rows["vit_post"]["lr"] == "best: 0.0003 (d=6)"
    best = logged["vit_post", 6, 3e-4]["summary"]
    assert (rows["vit_post"]["d6_train"], rows["vit_post"]["d6_test"]) == (best["train_error"], best["test_error"])
    assert rows["vit_post"]["diverged_no_warmup"] == "none"  # the diverged lr is not its best
    flags = {(r["model"], r["depth"], r["lr"]): r["best_lr_of_depth"] for r in norms_runs(runs)}
    assert [k for k, best in flags.items() if best] == [("vit_post", 6, 3e-4), ("vit_pre", 6, 1e-3),
                                                        ("vit_pre", 24, 1e-3)]
    # the figure's columns hold the same runs: vit_post's loss curve at depth 6 is the 3e-4 run's
    post_curves = loss_curves(at_best_lr([r for r in runs if r.config.model.name == "vit_post"]))
    assert len(post_curves) == 1 and list(post_curves[0].band.mean) == logged["vit_post", 6, 3e-4]["scalars"]["train/loss"][1]


def test_lr_figure_and_cli_files(lr_sweep, tmp_path):
    root, logged = lr_sweep
    fig = draw_lr_figure(find_runs(root))
    ax6, ax24 = fig.axes[:2]
    assert (ax6.get_title(), ax24.get_title(), ax6.get_xscale()) == ("depth 6", "depth 24", "log")
    assert [t.get_text() for t in ax6.get_xticklabels()] == ["0.0003", "0.001", "0.003"]
    curves = [list(line.get_ydata()) for line in ax6.lines if line.get_marker() != "x"]
    post_y = [logged["vit_post", 6, lr]["summary"]["train_loss"] for lr in (3e-4, 1e-3)]
    assert any(c[:2] == post_y and np.isnan(c[2]) for c in curves)
    diverged = [line for line in ax6.lines if line.get_marker() == "x" and len(line.get_xdata())]
    assert len(diverged) == 1 and list(diverged[0].get_xdata()) == [3e-3]
    assert diverged[0].get_ydata()[0] == ax6.get_ylim()[1]  # on the top edge

    runner = CliRunner()
    result = runner.invoke(app, ["figure", str(root), "--kind", "norms", "-o", str(tmp_path / "n.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "n.png").is_file() and (tmp_path / "n_lr.png").is_file() and (tmp_path / "n_lr.pdf").is_file()
    result = runner.invoke(app, ["table", str(root), "--kind", "norms", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "best lr" in (tmp_path / "norms_lr.md").read_text()
    with (tmp_path / "norms_lr.csv").open() as f:
        back = list(csv.DictReader(f))
    assert [(b["model"], b["depth"], b["best_lr"]) for b in back] == [
        ("vit_post", "6", "0.0003"), ("vit_pre", "6", "0.001"), ("vit_pre", "24", "0.001")]
    assert back[0]["lr_0.003_status"] == "1 div" and back[2]["lr_0.0003"] == ""


def test_lr_best_skips_an_lr_where_a_seed_diverged_and_a_depth_without_finished_runs(tmp_path):
    """lr 3e-3: one seed has the lowest loss of all, the other diverged: not the best. At depth 12
    no lr finished: there is no best, and the table says so."""
    for seed, status in ((0, "finished"), (1, "diverged")):
        write_vit_run(tmp_path, "vit_pre", "pre", True, 6, 0, seed, status, lr=3e-3, loss_scale=0.5)
    for seed in (0, 1):
        write_vit_run(tmp_path, "vit_pre", "pre", True, 6, 0, seed, "finished", lr=1e-3)
    for lr in (1e-3, 3e-3):
        write_vit_run(tmp_path, "vit_pre", "pre", True, 12, 0, 0, "diverged", lr=lr)
    runs = find_runs(tmp_path)
    six, twelve = lr_rows(runs)
    assert (six["best_lr"], six["lr_0.003_status"], six["lrs_near_best"]) == (1e-3, "1 div", 1)
    assert twelve["best_lr"] is None and twelve["lrs_near_best"] == 0
    (row,) = norms_table(runs)
    assert row["lr"] == "best: 0.001 (d=6), none finished (d=12)"
    fig = draw_lr_figure(runs)
    assert [list(line.get_xdata()) for line in fig.axes[1].lines if line.get_marker() == "x"] == [[1e-3, 3e-3]]
    assert not [line for line in fig.axes[0].lines if line.get_marker() == "x"]  # 3e-3: one seed finished


def test_a_run_without_optim_lr_is_left_out_of_the_lr_report(tmp_path):
    write_vit_run(tmp_path, "vit_pre", "pre", True, 6, 0, 0, "finished", lr=1e-3)
    write_vit_run(tmp_path, "vit_pre", "pre", True, 6, 0, 1, "finished", lr=3e-3)
    bare = write_vit_run(tmp_path, "vit_pre", "pre", True, 6, 0, 2, "finished", lr=3e-4)
    config = tmp_path / "vit_pre_d6_w0_seed2_lr0.0003" / "config.yaml"
    cfg = OmegaConf.load(config)
    del cfg.optim["lr"]
    OmegaConf.save(cfg, config)
    runs = find_runs(tmp_path)
    assert varies_lr(runs) and bare
    (row,) = lr_rows(runs)
    assert "lr_0.0003" not in row and row["best_lr"] in (1e-3, 3e-3)
