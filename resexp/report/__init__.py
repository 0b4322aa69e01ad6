"""Figures and tables from run directories: Figure 6 and Table 6 of He et al. 2015, and the
Transformer norm-placement report (norms)."""

from resexp.report.figures import Band, Curve, draw_figure6, figure6, figure6_series, make_figure
from resexp.report.kinds import report_figure, report_table
from resexp.report.norms_figure import LossCurve, draw_norms_figure, loss_curves, norms_figure
from resexp.report.norms_lr import at_best_lr, draw_lr_figure, lr_figure, lr_rows, varies_lr
from resexp.report.norms_placements import placement_groups
from resexp.report.norms_probes import block_profile, probe_steps
from resexp.report.norms_table import norms_runs, norms_table, print_norms_table, write_norms_table
from resexp.report.runs import Run, UnreadableRun, find_runs, group_runs, read_series, require_runs, scan_runs
from resexp.report.tables import make_table, print_table, table6, write_table

__all__ = [
    "Band", "Curve", "Run", "draw_figure6", "figure6", "figure6_series", "find_runs", "group_runs",
    "make_figure", "make_table", "print_table", "read_series", "require_runs", "scan_runs", "table6",
    "UnreadableRun", "write_table",
    "LossCurve", "block_profile", "draw_norms_figure", "loss_curves", "norms_figure", "norms_runs", "norms_table",
    "placement_groups", "print_norms_table", "probe_steps", "write_norms_table",
    "at_best_lr", "draw_lr_figure", "lr_figure", "lr_rows", "varies_lr",
    "report_figure", "report_table",
]
