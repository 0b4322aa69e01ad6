"""Figure 6 and Table 6 from fake run directories written with the real TensorBoard writer."""

import csv
import io
import json
import shutil
import statistics

import numpy as np
import pytest
from rich.console import Console
from tensorboard.summary.writer.record_writer import RecordWriter
from typer.testing import CliRunner

from fake_runs import MANY, STEPS, write_run
from resexp.cli import app
from resexp.errors import ResexpError
from resexp.kinds import report_figure, report_table
from resexp.plotting import Band, save_figure
from resexp.report.figures import Curve, draw_figure6, figure6_series, y_range
from resexp.report.tables import print_table, table6, write_table
from resexp.runs import UnreadableRun, find_runs, group_runs, read_series, scan_runs

# (name, depth, residual, seed, status, sub-directory): a finished pair of seeds per model,
# one diverged plain-56, one run nested a level deeper.
RUNS = [
    ("plain20", 20, False, 0, "finished", ""), ("plain20", 20, False, 1, "finished", ""),
    ("plain56", 56, False, 0, "finished", ""), ("plain56", 56, False, 1, "finished", ""),
    ("plain56", 56, False, 2, "diverged", ""),
    ("resnet20", 20, True, 0, "finished", ""), ("resnet20", 20, True, 1, "finished", ""),
    ("resnet56", 56, True, 0, "finished", ""), ("resnet56", 56, True, 1, "finished", "nested"),
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """(sweep dir, {(name, seed): logged series}) for RUNS, plus directories that are no runs."""
    root = tmp_path_factory.mktemp("sweep")
    logged = {}
    for i, (name, depth, residual, seed, status, sub) in enumerate(RUNS):
        logged[name, seed] = write_run(root / sub, name, depth, residual, seed, status, many=i == 0)
    (root / ".hydra").mkdir()  # Hydra's own config.yaml, no summary.json: not a run
    (root / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (root / "crashed_before_start").mkdir()
    (root / "crashed_before_start" / "config.yaml").write_text("seed: 0\n")
    return root, logged


def expected_band(logged, name, seeds, tag):
    """Mean, min, max over seeds, computed here from what was written."""
    values = np.array([logged[name, seed][tag][1] for seed in seeds])
    return values.mean(0), values.min(0), values.max(0)


def test_find_runs_finds_every_run_directory_and_only_those(sweep):
    root, _ = sweep
    runs = find_runs(root)
    assert sorted((r.config.model.name, r.seed) for r in runs) == sorted((n, s) for n, _, _, s, _, _ in RUNS)
    assert {r.status for r in runs} == {"finished", "diverged"}
    assert any(r.path.parent.name == "nested" for r in runs)
    assert set(group_runs(runs)) == {"plain-20", "plain-56", "ResNet-20", "ResNet-56"}


def test_read_series_returns_every_logged_point_sorted(sweep):
    root, logged = sweep
    series = read_series(root / "plain20_cifar10_seed0")
    assert set(series) == {"train/error", "test/error", "lr", "train/loss"}
    steps, values = series["train/loss"]
    assert len(steps) == MANY and steps == list(range(1, MANY + 1))
    assert (steps, values) == logged["plain20", 0]["train/loss"]
    assert series["test/error"] == logged["plain20", 0]["test/error"]


def test_figure6_series_is_the_logged_data(sweep):
    root, logged = sweep
    curves = {c.label: c for c in figure6_series(find_runs(root))}
    assert list(curves) == ["plain-20", "plain-56", "plain-56 seed 2 (diverged)", "ResNet-20", "ResNet-56"]
    for label, name in [("plain-20", "plain20"), ("plain-56", "plain56"),
                        ("ResNet-20", "resnet20"), ("ResNet-56", "resnet56")]:
        curve = curves[label]
        assert curve.seeds == [0, 1] and curve.status == "finished"
        assert curve.residual == name.startswith("resnet")
        for kind, tag in (("train", "train/error"), ("test", "test/error")):
            band = getattr(curve, kind)
            assert band.steps.tolist() == STEPS
            for got, want in zip((band.mean, band.min, band.max), expected_band(logged, name, [0, 1], tag)):
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    diverged = curves["plain-56 seed 2 (diverged)"]
    assert diverged.seeds == [2] and diverged.status == "diverged"
    assert (diverged.test.steps.tolist(), diverged.test.mean.tolist()) == logged["plain56", 2]["test/error"]


def test_figure6_writes_png_and_pdf_with_plain_left_and_residual_right(sweep, tmp_path):
    root, _ = sweep
    runs = find_runs(root)
    paths = save_figure(draw_figure6(figure6_series(runs)), tmp_path / "out" / "fig6.png")
    assert paths == [tmp_path / "out" / "fig6.png", tmp_path / "out" / "fig6.pdf"]
    assert paths[0].read_bytes().startswith(b"\x89PNG") and paths[1].read_bytes().startswith(b"%PDF")

    left, right = draw_figure6(figure6_series(runs)).axes
    legend = {ax: [t.get_text() for t in ax.get_legend().get_texts()] for ax in (left, right)}
    assert legend[left] == ["plain-20", "plain-56", "plain-56 seed 2 (diverged)"]
    assert legend[right] == ["ResNet-20", "ResNet-56"]
    # Same depth, same colour in both panels.
    colours = {ax: [h.get_color() for h in ax.get_legend().legend_handles] for ax in (left, right)}
    assert colours[left][:2] == colours[right] and colours[left][0] != colours[left][1]
    # The paper's 0-20% range (every finished curve ends inside it), and a note on the panel
    # whose diverged run it cuts off.
    assert left.get_ylim() == right.get_ylim() == (0, 20)
    notes = {ax: [t.get_text() for t in ax.texts] for ax in (left, right)}
    assert any("axis 0-20%: values outside not shown" in t for t in notes[left]) and not notes[right]


def test_figure6_draws_only_the_panels_it_has_and_widens_the_y_range_when_needed():
    steps = np.array([1, 2])
    high = Curve("ResNet-20", True, 20, "finished", [0], "test", 2,
                 train=Band(steps, np.array([40.0, 30.0]), np.array([40.0, 30.0]), np.array([40.0, 30.0])),
                 test=Band(steps, np.array([50.0, 35.0]), np.array([50.0, 35.0]), np.array([50.0, 35.0])))
    (ax,) = draw_figure6([high]).axes
    assert ax.get_title(loc="left") == "residual networks"
    assert ax.get_ylim()[1] >= 50 and not ax.texts
    with pytest.raises(ResexpError):
        draw_figure6([])


def test_table6_rows(sweep):
    root, logged = sweep
    rows = table6(find_runs(root))
    assert [r["model"] for r in rows] == ["plain-20", "plain-56", "ResNet-20", "ResNet-56"]
    by_model = {r["model"]: r for r in rows}
    for label, name in [("plain-20", "plain20"), ("plain-56", "plain56"),
                        ("ResNet-20", "resnet20"), ("ResNet-56", "resnet56")]:
        final_test = [logged[name, s]["test/error"][1][-1] for s in (0, 1)]
        final_train = [logged[name, s]["train/error"][1][-1] for s in (0, 1)]
        row = by_model[label]
        assert row["test_error_best"] == min(final_test)
        assert row["test_error_mean"] == pytest.approx(sum(final_test) / 2, rel=1e-12)
        assert row["test_error_std"] == pytest.approx(statistics.stdev(final_test), rel=1e-12)  # ddof=1
        assert row["train_error_final"] == pytest.approx(sum(final_train) / 2, rel=1e-12)
        assert row["data"] == "cifar10" and row["eval_split"] == "test"
    # The diverged seed counts in seeds and status, not in the statistics.
    assert by_model["plain-56"]["seeds"] == 3 and by_model["plain-56"]["status"] == "1 diverged, 2 finished"
    assert by_model["ResNet-20"]["seeds"] == 2 and by_model["ResNet-20"]["status"] == "2 finished"
    assert by_model["plain-56"]["test_error_lowest_eval"] == min(
        min(logged["plain56", s]["test/error"][1]) for s in (0, 1))
    assert (by_model["ResNet-20"]["params"], by_model["ResNet-20"]["params_m"]) == (269_722, "0.27M")
    assert by_model["ResNet-56"]["params_m"] == "0.85M"
    assert by_model["ResNet-56"]["paper_test_error"] == 6.97 and by_model["ResNet-20"]["paper"] == "8.75"
    assert by_model["plain-56"]["paper_test_error"] == 13.25 and by_model["plain-56"]["paper"].startswith("≈")


def test_paper_column_only_on_cifar10_and_datasets_keep_apart(tmp_path):
    write_run(tmp_path, "resnet20", 20, True, 0, "finished", data="cifar10")
    write_run(tmp_path, "resnet20", 20, True, 0, "finished", data="cifar100")
    rows = {r["model"]: r for r in table6(find_runs(tmp_path))}
    assert set(rows) == {"ResNet-20 (data.name=cifar10)", "ResNet-20 (data.name=cifar100)"}
    assert rows["ResNet-20 (data.name=cifar10)"]["paper_test_error"] == 8.75
    assert rows["ResNet-20 (data.name=cifar100)"]["paper_test_error"] is None
    assert rows["ResNet-20 (data.name=cifar100)"]["paper"] is None


def test_markdown_and_csv_parse_back_to_the_row_values(sweep, tmp_path):
    root, _ = sweep
    rows = table6(find_runs(root))
    md_path, csv_path = write_table(rows, tmp_path)
    assert (md_path.name, csv_path.name) == ("table6.md", "table6.csv")

    with csv_path.open() as f:
        parsed = list(csv.DictReader(f))
    assert len(parsed) == len(rows)
    for row, back in zip(rows, parsed):
        for key, value in row.items():
            if value is None:
                assert back[key] == ""
            elif isinstance(value, float):
                assert float(back[key]) == value  # full precision
            else:
                assert back[key] == str(value)

    table_lines = [line for line in md_path.read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in table_lines[0].strip("|").split("|")]
    cells = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table_lines[2:]]
    assert [c["model"] for c in cells] == [r["model"] for r in rows]
    for row, cell in zip(rows, cells):
        mean, std = (float(x) for x in cell["test err. mean ± std (%)"].split("±"))
        assert mean == round(row["test_error_mean"], 2) and std == round(row["test_error_std"], 2)
        assert float(cell["test err. best (%)"]) == round(row["test_error_best"], 2)
        assert float(cell["train err. final (%)"]) == round(row["train_error_final"], 2)
        assert cell["params"] == row["params_m"] and cell["paper test err. (%)"] == row["paper"]

    out = io.StringIO()
    print_table(rows, Console(file=out, width=250))
    assert all(r["model"] in out.getvalue() for r in rows)


def test_figure_and_table_default_into_the_sweep_dir(sweep, tmp_path):
    root, _ = sweep
    assert report_figure("fig6", str(root)) == [root / "figure6.png", root / "figure6.pdf"]
    assert report_table("fig6", str(root)) == [root / "table6.md", root / "table6.csv"]
    assert (root / "table6.md").read_text().count("| plain-56 |") == 1
    with pytest.raises(ResexpError, match="no run directories"):
        report_table("fig6", str(tmp_path))


def event_file(run_dir):
    (path,) = (run_dir / "tb").glob("events.out.tfevents.*")
    return path


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """(sweep dir, {run dir: reason} of the unreadable runs, the readable runs' logged series):
    good seeds of plain-20 and ResNet-20, a running plain-20 seed without metrics yet, and one
    run for each way a run directory breaks."""
    root = tmp_path_factory.mktemp("damaged")
    logged = {(name, seed): write_run(root, name, depth, residual, seed, "finished")
              for name, depth, residual, seed in [("plain20", 20, False, 0), ("plain20", 20, False, 1),
                                                  ("resnet20", 20, True, 0)]}
    logged["plain20", 2] = write_run(root, "plain20", 20, False, 2, "running")
    summary = json.loads((root / "plain20_cifar10_seed2" / "summary.json").read_text())
    for key in ("train_error", "test_error", "best_test_error"):  # before its first evaluation
        del summary[key]
    (root / "plain20_cifar10_seed2" / "summary.json").write_text(json.dumps(summary))

    broken = {}
    for name, depth, residual, seed in [("plain56", 56, False, 0), ("plain56", 56, False, 1), ("plain56", 56, False, 2),
                                        ("resnet56", 56, True, 0), ("resnet56", 56, True, 1), ("resnet56", 56, True, 2),
                                        ("resnet20", 20, True, 1)]:
        write_run(root, name, depth, residual, seed, "finished")
    run = root / "plain56_cifar10_seed0"
    (run / "summary.json").write_text((run / "summary.json").read_text()[:40])  # cut short while written
    broken[run] = "summary.json is corrupt (not valid JSON: Unterminated string starting at: line 3 column 12 (char 37))"
    run = root / "plain56_cifar10_seed1"
    (run / "config.yaml").write_text("seed: 1\nmodel: {name: plain56, depth: [56\n")
    broken[run] = "config.yaml is corrupt (ParserError)"
    run = root / "plain56_cifar10_seed2"
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text[:text.index("trainer:")])  # parses, but half of it is gone
    broken[run] = "config.yaml is not a resexp run config (no trainer)"
    run = root / "resnet56_cifar10_seed0"
    data = event_file(run).read_bytes()
    event_file(run).write_bytes(data[:len(data) // 2])
    broken[run] = f"{event_file(run).relative_to(run)} is truncated or corrupt"
    run = root / "resnet56_cifar10_seed1"
    event_file(run).write_bytes(np.random.default_rng(0).bytes(4000))
    broken[run] = f"{event_file(run).relative_to(run)} is truncated or corrupt"
    run = root / "resnet56_cifar10_seed2"
    data = bytearray(event_file(run).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed: every record still there, one fails its CRC
    event_file(run).write_bytes(bytes(data))
    broken[run] = f"{event_file(run).relative_to(run)} is truncated or corrupt"
    run = root / "resnet20_cifar10_seed1"
    summary = json.loads((run / "summary.json").read_text())
    del summary["test_error"]
    (run / "summary.json").write_text(json.dumps(summary))
    broken[run] = "summary.json: a finished run's summary needs test_error"
    return root, broken, logged


def test_scan_runs_tells_unreadable_runs_with_why(damaged):
    root, broken, logged = damaged
    runs, unreadable = scan_runs(root)
    assert sorted((r.config.model.name, r.seed) for r in runs) == sorted(logged)
    assert {u.path: u.reason for u in unreadable} == broken
    assert [u.path for u in unreadable] == sorted(broken)
    assert str(unreadable[0]) == f"unreadable run {unreadable[0].path}: {unreadable[0].reason}"
    for run in runs:  # the readable runs' curves are whole
        assert run.series["test/error"] == logged[run.config.model.name, run.seed]["test/error"]
    with pytest.warns(UserWarning) as caught:
        assert [r.path for r in find_runs(root)] == [r.path for r in runs]
    assert sorted(str(w.message) for w in caught) == sorted(f"unreadable run {p}: {r}" for p, r in broken.items())


def test_read_series_raises_where_tensorboard_would_stop_without_a_word(damaged, tmp_path):
    root, broken, _ = damaged
    truncated = root / "resnet56_cifar10_seed0"
    with pytest.raises(UnreadableRun) as raised:
        read_series(truncated)
    assert (raised.value.path, raised.value.reason) == (truncated, broken[truncated])
    # A record whose checksum is right but whose bytes are no TensorBoard event.
    (tmp_path / "tb").mkdir()
    with (tmp_path / "tb" / "events.out.tfevents.1.host").open("wb") as f:
        RecordWriter(f).write(b"\xff" * 40)
    with pytest.raises(UnreadableRun, match="tb/ holds a record that is no TensorBoard event"):
        read_series(tmp_path)


def test_table6_with_a_running_run_without_metrics(damaged):
    root, _, logged = damaged
    rows = {r["model"]: r for r in table6(scan_runs(root)[0])}
    assert list(rows) == ["plain-20", "ResNet-20"]
    plain = rows["plain-20"]
    assert (plain["seeds"], plain["status"]) == (3, "2 finished, 1 running")
    final_test = [logged["plain20", s]["test/error"][1][-1] for s in (0, 1)]
    assert plain["test_error_best"] == min(final_test)
    assert plain["test_error_mean"] == pytest.approx(statistics.fmean(final_test), rel=1e-12)
    assert plain["train_error_final"] == pytest.approx(
        statistics.fmean(logged["plain20", s]["train/error"][1][-1] for s in (0, 1)), rel=1e-12)
    assert (rows["ResNet-20"]["seeds"], rows["ResNet-20"]["test_error_std"]) == (1, None)


def test_cli_table_and_figure_list_unreadable_runs(damaged, tmp_path):
    root, broken, _ = damaged
    warnings = [f"resexp: warning: unreadable run {path}: {reason}" for path, reason in sorted(broken.items())]
    runner = CliRunner()
    result = runner.invoke(app, ["table", str(root), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == warnings
    listed = [f"- {path} (unreadable: {reason})" for path, reason in sorted(broken.items())]
    assert all(line in result.stdout.splitlines() for line in listed)

    md = (tmp_path / "table6.md").read_text().splitlines()
    start = md.index("Runs left out (not in the table):")
    assert md[start + 1:] == listed
    want = table6(scan_runs(root)[0])
    table_lines = [line for line in md if line.startswith("|")][2:]
    assert [line.split("|")[1].strip() for line in table_lines] == [r["model"] for r in want]
    mean_std = [line.split("|")[7].strip() for line in table_lines]
    std = [f" ± {r['test_error_std']:.2f}" if r["test_error_std"] is not None else "" for r in want]
    assert mean_std == [f"{r['test_error_mean']:.2f}{s}" for r, s in zip(want, std)]
    with (tmp_path / "table6.csv").open() as f:
        assert [row["model"] for row in csv.DictReader(f)] == [r["model"] for r in want]

    result = runner.invoke(app, ["figure", str(root), "-o", str(tmp_path / "fig6.png")])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == warnings
    assert (tmp_path / "fig6.png").read_bytes().startswith(b"\x89PNG")


def test_cli_fails_in_one_line_when_no_run_reads(damaged, tmp_path):
    root, broken, _ = damaged
    for path in sorted(broken)[:2]:
        shutil.copytree(path, tmp_path / path.name)
    for command in ("table", "figure"):
        result = CliRunner().invoke(app, [command, str(tmp_path)])
        assert result.exit_code == 2
        first = sorted(broken)[0]
        assert result.stderr.splitlines()[-1] == (f"resexp: error: all 2 run directories under {tmp_path} are "
                                                  f"unreadable, e.g. {tmp_path / first.name}: {broken[first]}")


def _curve(label, residual, depth, final, data="cifar10", status="finished", start=90.0):
    steps = np.array([100, 200, 300])
    values = np.array([start, (start + final) / 2, final])
    band = Band(steps, values, values, values)
    return Curve(label, residual, depth, status, [0], "test", 300, train=band, test=band, data=data)


def _panels(fig):
    return {ax.get_title(loc="left"): ax for ax in fig.axes}


def test_figure6_y_range_per_panel_follows_the_paper_on_cifar10():
    # CIFAR-10: the paper's 0-20% on each panel whose finished curves end inside it, the start of
    # training (90%) noted as cut; a plain panel whose curves end higher gets its own range.
    fig = draw_figure6([_curve("plain-20", False, 20, 9.0), _curve("plain-110", False, 110, 61.0),
                        _curve("ResNet-20", True, 20, 8.0), _curve("ResNet-56", True, 56, 6.5)])
    panels = _panels(fig)
    assert panels["residual networks"].get_ylim() == (0, 20)
    assert panels["plain networks"].get_ylim() == (0, 80)  # next multiple of 10 above 1.2 x 61
    assert any("axis 0-20%" in t.get_text() for t in panels["residual networks"].texts)
    assert any("axis 0-80%" in t.get_text() for t in panels["plain networks"].texts)  # the 90% start
    assert y_range([_curve("ResNet-20", True, 20, 8.0)]) == 20
    assert y_range([_curve("ResNet-20", True, 20, 8.0, data="cifar100")]) == 10  # no paper range off CIFAR-10
    assert y_range([_curve("ResNet-20", True, 20, 85.0, data="synthetic")]) == 100  # at most 100
    # An unfinished run does not set the range while a finished one is there.
    assert y_range([_curve("ResNet-20", True, 20, 8.0), _curve("x", True, 56, 90.0, status="diverged")]) == 20


def test_figure6_third_panel_for_resnet110_and_1202_and_user_limits():
    curves = [_curve("plain-20", False, 20, 9.0), _curve("ResNet-20", True, 20, 8.0),
              _curve("ResNet-110", True, 110, 6.4), _curve("ResNet-1202", True, 1202, 7.9)]
    fig = draw_figure6(curves)
    assert [ax.get_title(loc="left") for ax in fig.axes] == [
        "plain networks", "residual networks", "ResNet-110 vs ResNet-1202"]
    legends = {ax.get_title(loc="left"): [t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes}
    assert legends["residual networks"] == ["ResNet-20", "ResNet-110"]  # 1202 only on its own panel
    assert legends["ResNet-110 vs ResNet-1202"] == ["ResNet-110", "ResNet-1202"]
    assert len(draw_figure6(curves[:3]).axes) == 2  # without ResNet-1202, no third panel

    fixed = draw_figure6(curves, ylim=(0, 50))
    assert all(ax.get_ylim() == (0, 50) for ax in fixed.axes)
    log = draw_figure6(curves, log_y=True)
    assert all(ax.get_yscale() == "log" for ax in log.axes)
    assert _panels(log)["plain networks"].get_ylim() == pytest.approx((1, 20))  # 10^floor(log10 9), the range top


def test_figure_cli_ylim_and_log_y(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "f.png"
    ok = CliRunner().invoke(app, ["figure", str(root), "-o", str(out), "--ylim", "0,50", "--log-y"])
    assert ok.exit_code == 0 and out.is_file(), ok.output
    for bad, message in [("50,0", "--ylim needs 0 <= LOW < HIGH"), ("abc", "--ylim takes LOW,HIGH")]:
        result = CliRunner().invoke(app, ["figure", str(root), "-o", str(out), "--ylim", bad])
        assert result.exit_code == 2 and message in result.output
    norms = CliRunner().invoke(app, ["figure", str(root), "--kind", "norms", "--log-y"])
    assert norms.exit_code == 2 and "--ylim and --log-y apply to --kind fig6" in norms.output


def test_figure6_panels_share_one_range_off_cifar10():
    fig = draw_figure6([_curve("plain-56", False, 56, 85.0, data="synthetic"),
                        _curve("ResNet-56", True, 56, 62.0, data="synthetic")])
    assert [ax.get_ylim() for ax in fig.axes] == [(0, 100), (0, 100)]  # the plain panel's range, 1.2 x 85
