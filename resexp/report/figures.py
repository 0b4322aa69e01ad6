"""Figure 6 of He et al. 2015: training (dashed) and test (bold) error against iterations,
plain nets on the left, residual nets on the right."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from resexp.errors import ResexpError
from resexp.report.runs import Run, group_runs, require_runs

# The paper's y range. Used when every finished curve ends inside it; whatever it then cuts
# off (the first iterations, diverged runs) is said on the panel, never hidden silently.
PAPER_YMAX = 20.0
UNFINISHED_MARKERS = {"diverged": "X", "failed": "s", "running": "o"}


@dataclass
class Band:
    """One error curve over seeds, on the steps every seed logged."""

    steps: np.ndarray
    mean: np.ndarray
    min: np.ndarray
    max: np.ndarray


@dataclass
class Curve:
    """What one legend entry draws: a model's finished seeds together, or one unfinished run."""

    label: str  # legend text: "plain-20", "ResNet-56 seed 1 (diverged)"
    residual: bool
    depth: int
    status: str  # "finished", or the unfinished run's status
    seeds: list[int]
    eval_split: str  # "test", or "val" for runs tuned on the 45k/5k split
    max_iters: int
    train: Band | None  # None: nothing logged yet
    test: Band | None


def figure6_series(runs: list[Run]) -> list[Curve]:
    """The data figure6 plots, sorted plain first, then by depth.

    Finished seeds of a model become one curve (mean, min-max band); each running, diverged
    or failed run is its own curve, drawn as far as it got: averaging it with finished seeds
    would cut them short or mix in a broken run.
    """
    curves = []
    for label, members in group_runs(runs).items():
        finished = [r for r in members if r.status == "finished"]
        if finished:
            curves.append(_curve(label, finished, "finished"))
        for run in members:
            if run.status != "finished":
                seed = f" seed {run.seed}" if len(members) > 1 else ""
                curves.append(_curve(f"{label}{seed} ({run.status})", [run], run.status))
    return sorted(curves, key=lambda c: (c.residual, c.depth, c.label))


def draw_figure6(curves: list[Curve]) -> Figure:
    """A matplotlib Figure with one panel per kind of net that has curves (plain, residual)."""
    if not curves:
        raise ResexpError("no runs to plot")
    panels = [residual for residual in (False, True) if any(c.residual == residual for c in curves)]
    # A bare Figure, not pyplot: no global state, and savefig renders PNG with Agg.
    fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    palette = colormaps["tab10"]
    depths = sorted({c.depth for c in curves})
    colours = {depth: palette(i % palette.N) for i, depth in enumerate(depths)}  # same depth, same colour

    by_panel = [(ax, [c for c in curves if c.residual == residual]) for ax, residual in zip(axes, panels)]
    for ax, panel_curves in by_panel:
        for curve in panel_curves:
            _draw_curve(ax, curve, colours[curve.depth])
        ax.set_title("residual networks" if panel_curves[0].residual else "plain networks", loc="left")
        ax.set_xlabel("iterations")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))  # "1e4" as in the paper
        ax.set_xlim(0, max(c.max_iters for c in curves))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    axes[0].set_ylabel("error (%)")
    _set_y_range(by_panel)

    splits = sorted({c.eval_split for c in curves})
    bands = "; shaded: min-max over seeds" if any(len(c.seeds) > 1 for c in curves) else ""
    fig.suptitle(f"dashed: training error, bold: {'/'.join(splits)} error{bands}", fontsize=9)
    return fig


def figure6(runs: list[Run], out_path: str | Path) -> list[Path]:
    """Draw Figure 6 and write it as PNG and PDF (out_path with each suffix); returns both paths."""
    return save_figure(draw_figure6(figure6_series(runs)), out_path)


def save_figure(fig: Figure, out_path: str | Path) -> list[Path]:
    """Write fig as PNG and PDF (out_path with each suffix); returns both paths."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150)
    return paths


def make_figure(sweep_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Figure 6 of every run under sweep_dir; by default sweep_dir/figure6.png and .pdf."""
    return figure6(require_runs(sweep_dir), out if out is not None else Path(sweep_dir) / "figure6.png")


def _curve(label: str, runs: list[Run], status: str) -> Curve:
    first = runs[0]
    return Curve(
        label=label, residual=first.residual, depth=first.depth, status=status,
        seeds=[r.seed for r in runs], eval_split=first.eval_split,
        max_iters=int(first.config.trainer.max_iters),
        train=seed_band(runs, "train/error"), test=seed_band(runs, f"{first.eval_split}/error"),
    )


def seed_band(runs: list[Run], tag: str) -> Band | None:
    if any(tag not in r.series for r in runs):
        return None
    by_step = [dict(zip(*r.series[tag])) for r in runs]
    common = sorted(set.intersection(*(set(d) for d in by_step)))
    if not common:
        return None
    values = np.array([[d[s] for s in common] for d in by_step])
    return Band(np.array(common), values.mean(0), values.min(0), values.max(0))


def _draw_curve(ax: Axes, curve: Curve, colour) -> None:
    label = curve.label  # on the bold test line; on the training line if no test point yet
    for band, is_test in ((curve.test, True), (curve.train, False)):
        if band is None:
            continue
        style = {"lw": 2.0, "ms": 7} if is_test else {"lw": 0.8, "ls": "--", "ms": 4}
        if curve.status != "finished":  # a marker where the unfinished run stopped (shown in the legend too)
            style.update(marker=UNFINISHED_MARKERS.get(curve.status, "o"), markevery=[len(band.steps) - 1])
        ax.plot(band.steps, band.mean, color=colour, label=label, **style)
        label = None
        if len(curve.seeds) > 1:
            ax.fill_between(band.steps, band.min, band.max, color=colour, alpha=0.2 if is_test else 0.1, lw=0)


def _bands(curves: list[Curve]) -> list[Band]:
    return [b for c in curves for b in (c.train, c.test) if b is not None]


def _set_y_range(panels: list[tuple[Axes, list[Curve]]]) -> None:
    curves = [c for _, panel in panels for c in panel]
    bands = _bands(curves)
    if not bands:
        return
    judged = _bands([c for c in curves if c.status == "finished"]) or bands
    if max(float(b.max[-1]) for b in judged) > PAPER_YMAX:
        panels[0][0].set_ylim(0, 1.05 * max(float(b.max.max()) for b in bands))  # shared by all panels
        return
    panels[0][0].set_ylim(0, PAPER_YMAX)
    for ax, panel in panels:
        if any(float(b.max.max()) > PAPER_YMAX for b in _bands(panel)):
            ax.text(1.0, 1.01, f"axis cut at {PAPER_YMAX:g}%: higher values not shown",
                    transform=ax.transAxes, fontsize=7, ha="right", va="bottom", color="0.4")
