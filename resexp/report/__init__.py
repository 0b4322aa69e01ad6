"""Figures and tables from run directories: Figure 6 and Table 6 of He et al. 2015, the
reproduction report, and the Transformer norm-placement report (norms). Import from the module
that defines a name (resexp.report.runs.read_series, resexp.report.figures.figure6, ...): this
file imports nothing, so `resexp status` (resexp.report.status) does not pay for matplotlib."""
