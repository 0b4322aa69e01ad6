"""The reports a sweep directory can give, one object per kind: fig6 (He et al.'s Figure 6 and
Table 6) and norms (the Transformer norm placements). `resexp figure`, `resexp table` and the
app's run browser all ask these objects, so a kind's figures and tables are chosen once."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from resexp.errors import ResexpError
from resexp.norms.figure import draw_norms_figure
from resexp.norms.lr import draw_lr_figure, lr_rows, varies_lr
from resexp.norms.table import norms_runs, norms_table, print_norms_table, write_norms_table
from resexp.plotting import save_figure
from resexp.report.figures import draw_figure6, figure6_notes, figure6_series
from resexp.report.tables import print_table, table6, write_table
from resexp.runs import LeftOut, Run, say_left_out, scan_runs

Rows = list[dict[str, Any]]


@dataclass
class Drawn:
    """A kind's figures by the suffix of their file's stem ("" the main one, "_lr" beside it), with
    what to tell the reader: warnings (stderr) and what was drawn (stdout)."""

    figures: dict[str, Figure]
    warnings: list[str] = field(default_factory=list)
    said: list[str] = field(default_factory=list)


@dataclass
class Tables:
    """A kind's table, and for the norm placements the lr-sensitivity table and one row per run."""

    main: Rows
    lr: Rows | None = None
    runs: Rows | None = None


class Figure6Report:
    name = "fig6"
    title = "Figure 6 / Table 6 (He et al.)"
    table_title = "Table 6"
    figure_file = "figure6.png"
    takes_ylim = True  # the paper's y range per panel, or the reader's

    def draw(self, runs: list[Run], ylim: tuple[float, float] | None = None, log_y: bool = False) -> Drawn:
        curves = figure6_series(runs)
        figure = draw_figure6(curves, ylim, log_y)  # with nothing to draw, its error is the one line
        drawn = [c.label for c in curves if c.train is not None or c.test is not None]
        return Drawn({"": figure}, warnings=figure6_notes(curves),
                     said=[f"Figure 6: {len(drawn)} curve{'' if len(drawn) == 1 else 's'}: {', '.join(drawn)}"])

    def tables(self, runs: list[Run]) -> Tables:
        return Tables(table6(runs))

    def write_tables(self, tables: Tables, out_dir: str | Path, unreadable: list[LeftOut]) -> list[Path]:
        """Table 6 printed and written as table6.md and table6.csv."""
        print_table(tables.main, unreadable=unreadable)
        return write_table(tables.main, out_dir, unreadable=unreadable)


class NormsReport:
    name = "norms"
    title = "norm placements (ViT)"
    table_title = "Norm placements"
    figure_file = "norms.png"
    takes_ylim = False

    def draw(self, runs: list[Run]) -> Drawn:
        figures = {"": draw_norms_figure(runs)}
        if varies_lr(runs):  # a learning-rate sweep: final loss against lr beside it
            figures["_lr"] = draw_lr_figure(runs)
        return Drawn(figures)

    def tables(self, runs: list[Run]) -> Tables:
        return Tables(norms_table(runs), lr_rows(runs) if varies_lr(runs) else None, norms_runs(runs))

    def write_tables(self, tables: Tables, out_dir: str | Path, unreadable: list[LeftOut]) -> list[Path]:
        """The placement table printed; norms_table.md/.csv, norms_runs.csv and, for a sweep over
        optim.lr, norms_lr.md/.csv written."""
        print_norms_table(tables.main, unreadable=unreadable)
        return write_norms_table(tables.main, out_dir, tables.runs, unreadable, tables.lr)


REPORTS = {kind.name: kind for kind in (Figure6Report(), NormsReport())}


def report_kind(name: str) -> Figure6Report | NormsReport:
    if name not in REPORTS:
        raise ResexpError(f"unknown --kind '{name}'; choose from: {', '.join(REPORTS)}")
    return REPORTS[name]


def kind_of(runs: list[Run]) -> Figure6Report | NormsReport:
    """The report a sweep asks for when none is named: norms if every run is a ViT."""
    return REPORTS["norms" if all(r.config.model.get("arch") == "vit" for r in runs) else "fig6"]


def report_figure(kind: str, sweep_dir: str, out: str | None = None, ylim: str | None = None,
                  log_y: bool = False) -> list[Path]:
    """`resexp figure`: the kind's figure (default SWEEP_DIR/figure6.png or norms.png; <stem>_lr.png
    beside it for a norms sweep over optim.lr), PNG and PDF each. ylim "LOW,HIGH" in %."""
    report = report_kind(kind)
    limits = _parse_ylim(ylim) if ylim is not None else None
    if not report.takes_ylim and (limits or log_y):  # before the runs are read
        raise ResexpError("--ylim and --log-y apply to --kind fig6")
    runs, _ = _scan_and_warn(sweep_dir)  # drawn without the unreadable ones
    drawn = report.draw(runs, limits, log_y) if report.takes_ylim else report.draw(runs)
    target = figure_path(out, sweep_dir, report.figure_file)
    paths = [path for suffix, figure in drawn.figures.items()
             for path in save_figure(figure, target.with_name(f"{target.stem}{suffix}{target.suffix}"))]
    for warning in drawn.warnings:
        print(f"resexp: warning: {warning}", file=sys.stderr)
    for line in drawn.said:
        print(line)
    return paths


def report_table(kind: str, sweep_dir: str, out_dir: str | None = None) -> list[Path]:
    """`resexp table`: the kind's tables, printed and written to out_dir (default SWEEP_DIR)."""
    report = report_kind(kind)
    runs, unreadable = _scan_and_warn(sweep_dir)  # the unreadable ones are listed under the table too
    return report.write_tables(report.tables(runs), out_dir or sweep_dir, unreadable)


def figure_path(out: str | None, sweep_dir: str, name: str) -> Path:
    """Where -o puts a figure: the file it names, or `name` in the folder it names (one that exists,
    or written with a trailing '/': never DIR.png beside it); SWEEP_DIR/name without -o."""
    if out is None:
        return Path(sweep_dir) / name
    if out.endswith("/") or Path(out).is_dir():
        return Path(out) / name
    return Path(out)


def _parse_ylim(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ResexpError(f"--ylim takes LOW,HIGH in percent, e.g. 0,20; got '{text}'") from None
    if not 0 <= low < high:
        raise ResexpError(f"--ylim needs 0 <= LOW < HIGH; got '{text}'")
    return low, high


def _scan_and_warn(sweep_dir: str) -> tuple[list[Run], list[LeftOut]]:
    """The readable runs under sweep_dir and the unreadable ones, each of those a warning line."""
    runs, unreadable = scan_runs(sweep_dir)
    say_left_out(unreadable)
    return runs, unreadable
