"""`resexp figure` and `resexp table`: a sweep directory's report of one kind, fig6 (He et al.'s
Figure 6 / Table 6) or norms (the Transformer norm placements), with their options checked."""

from __future__ import annotations

import sys
from pathlib import Path

from resexp.errors import ResexpError
from resexp.report.figures import Curve, draw_figure6, figure6_notes, figure6_series, save_figure
from resexp.report.norms_figure import norms_figure
from resexp.report.norms_lr import lr_figure, lr_rows, varies_lr
from resexp.report.norms_table import norms_runs, norms_table, print_norms_table, write_norms_table
from resexp.report.runs import LeftOut, Run, say_left_out, scan_runs
from resexp.report.tables import print_table, table6, write_table

REPORT_KINDS = ("fig6", "norms")


def report_figure(kind: str, sweep_dir: str, out: str | None = None, ylim: str | None = None,
                  log_y: bool = False) -> list[Path]:
    """Figure 6 (default SWEEP_DIR/figure6.png; ylim "LOW,HIGH" in %, log_y) or the norm-placement
    figure (default SWEEP_DIR/norms.png, and <stem>_lr.png beside it for a sweep over optim.lr).
    PNG and PDF each."""
    _check_kind(kind)
    limits = _parse_ylim(ylim) if ylim is not None else None
    if kind != "fig6" and (limits or log_y):
        raise ResexpError("--ylim and --log-y apply to --kind fig6")
    runs, _ = _scan_and_warn(sweep_dir)  # drawn without the unreadable ones
    if kind == "fig6":
        curves = figure6_series(runs)
        paths = save_figure(draw_figure6(curves, limits, log_y), figure_path(out, sweep_dir, "figure6.png"))
        say_curves(curves)  # after drawing: with nothing to draw, its error is the one line
        return paths
    target = figure_path(out, sweep_dir, "norms.png")
    paths = norms_figure(runs, target)
    if varies_lr(runs):  # a learning-rate sweep: final loss against lr beside it
        paths += lr_figure(runs, target.with_name(f"{target.stem}_lr{target.suffix}"))
    return paths


def report_table(kind: str, sweep_dir: str, out_dir: str | None = None) -> list[Path]:
    """Table 6 (table6.md/.csv) or the norm-placement table (norms_table.md/.csv, norms_runs.csv,
    and norms_lr.md/.csv for a sweep over optim.lr), printed and written to out_dir (default
    SWEEP_DIR)."""
    _check_kind(kind)
    runs, unreadable = _scan_and_warn(sweep_dir)  # the unreadable ones are listed under the table too
    if kind == "norms":
        rows = norms_table(runs)
        print_norms_table(rows, unreadable=unreadable)
        lrs = lr_rows(runs) if varies_lr(runs) else None
        return write_norms_table(rows, out_dir or sweep_dir, norms_runs(runs), unreadable, lrs)
    rows = table6(runs)
    print_table(rows, unreadable=unreadable)
    return write_table(rows, out_dir or sweep_dir, unreadable=unreadable)


def figure_path(out: str | None, sweep_dir: str, name: str) -> Path:
    """Where -o puts a figure: the file it names, or `name` in the folder it names (one that exists,
    or written with a trailing '/': never DIR.png beside it); SWEEP_DIR/name without -o."""
    if out is None:
        return Path(sweep_dir) / name
    if out.endswith("/") or Path(out).is_dir():
        return Path(out) / name
    return Path(out)


def say_curves(curves: list[Curve]) -> None:
    """What Figure 6 shows (stdout) and what it leaves out or shows only as a point (warnings)."""
    for note in figure6_notes(curves):
        print(f"resexp: warning: {note}", file=sys.stderr)
    drawn = [c.label for c in curves if c.train is not None or c.test is not None]
    print(f"Figure 6: {len(drawn)} curve{'' if len(drawn) == 1 else 's'}: {', '.join(drawn)}")


def _check_kind(kind: str) -> None:
    if kind not in REPORT_KINDS:
        raise ResexpError(f"unknown --kind '{kind}'; choose from: {', '.join(REPORT_KINDS)}")


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
