"""Figures and tables from run directories: Figure 6 and Table 6 of He et al. 2015."""

from resexp.report.figures import Band, Curve, draw_figure6, figure6, figure6_series, make_figure
from resexp.report.runs import Run, find_runs, group_runs, read_series, require_runs
from resexp.report.tables import make_table, print_table, table6, write_table

__all__ = [
    "Band", "Curve", "Run", "draw_figure6", "figure6", "figure6_series", "find_runs", "group_runs",
    "make_figure", "make_table", "print_table", "read_series", "require_runs", "table6", "write_table",
]
