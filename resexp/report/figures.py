"""Figure 6 of He et al. 2015: training (dashed) and test (bold) error against iterations,
plain nets on the left, residual nets in the middle, ResNet-110 vs ResNet-1202 on the right
(when the sweep has both)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from resexp.errors import ResexpError
from resexp.report.paper import PAPER_DATA
from resexp.plotting import UNFINISHED_MARKERS, Band, seed_band
from resexp.runs import Run, group_runs

# The paper's y range for CIFAR-10, per panel where its finished curves end inside it; whatever
# a range cuts off (the first iterations, diverged runs) is said on the panel, never hidden.
PAPER_YMAX = 20.0
DEEPEST = (110, 1202)  # the paper's third panel: ResNet-110 vs ResNet-1202
# Iterations from 10^4 on as "x 1e4", as the paper's axis; a short run keeps plain numbers (no "1e2").
SCI_LIMITS = (0, 3)


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
    data: str = ""  # the data config's name: the paper's y range is for CIFAR-10
    unlogged: list[str] = field(default_factory=list)  # "seed 2 logged no train/error": seeds out of a band


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


def figure6_notes(curves: list[Curve]) -> list[str]:
    """What a figure of these curves leaves out or can barely show, one line each: a curve with no
    point logged yet is not drawn; one with a single point is a marker, not a line."""
    notes = []
    for curve in curves:
        points = {name: len(band.steps) for name, band in (("training", curve.train), (curve.eval_split, curve.test))
                  if band is not None}
        notes += [f"{curve.label}: {what}, so its curve leaves it out" for what in curve.unlogged]
        if not points:
            notes.append(f"{curve.label}: not drawn, no error logged yet")
        elif max(points.values()) == 1:
            notes.append(f"{curve.label}: one point per curve (log points every trainer.log_every and "
                         "trainer.eval_every iterations), drawn as a marker")
    return notes


def draw_figure6(curves: list[Curve], ylim: tuple[float, float] | None = None, log_y: bool = False) -> Figure:
    """A matplotlib Figure with the paper's panels that have curves: plain, residual, and
    ResNet-110 vs ResNet-1202 when both are there. On CIFAR-10 each panel has its own y range
    (y_range), as in the paper; on other data all share the widest, so that they compare. ylim
    sets one range for all; log_y draws the error on a log scale."""
    if not _bands(curves):
        raise ResexpError("no runs to plot: " + ("; ".join(figure6_notes(curves)) if curves else "none given"))
    panels = figure6_panels(curves)
    # A bare Figure, not pyplot: no global state, and savefig renders PNG with Agg.
    fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    palette = colormaps["tab10"]
    depths = sorted({c.depth for c in curves})
    colours = {depth: palette(i % palette.N) for i, depth in enumerate(depths)}  # same depth, same colour

    tops = [y_range(panel_curves) for _, panel_curves in panels]
    if not all(c.data == PAPER_DATA for c in curves):  # no paper range to follow: one scale, panels compare
        tops = [max(tops)] * len(panels)
    for ax, (title, panel_curves), top in zip(axes, panels, tops):
        for curve in panel_curves:
            _draw_curve(ax, curve, colours[curve.depth])
        ax.set_title(title, loc="left")
        ax.set_xlabel("iterations")
        ax.ticklabel_format(axis="x", style="sci", scilimits=SCI_LIMITS)
        ax.set_xlim(0, max(c.max_iters for c in curves))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
        _set_y_range(ax, panel_curves, ylim or (0.0, top), log_y)
    axes[0].set_ylabel("error (%)")

    splits = sorted({c.eval_split for c in curves})
    bands = "; shaded: min-max over seeds" if any(len(c.seeds) > 1 for c in curves) else ""
    fig.suptitle(f"dashed: training error, bold: {'/'.join(splits)} error{bands}", fontsize=9)
    return fig


def figure6_panels(curves: list[Curve]) -> list[tuple[str, list[Curve]]]:
    """(title, curves) of each panel that has curves, left to right, as the paper lays them out:
    plain, residual, and ResNet-110 vs ResNet-1202 when both are there (1202 then only there)."""
    plain = [c for c in curves if not c.residual]
    residual = [c for c in curves if c.residual]
    deepest = [c for c in residual if c.depth in DEEPEST]
    third = {c.depth for c in deepest} == set(DEEPEST)
    panels = [("plain networks", plain), ("residual networks", [c for c in residual if not third or c.depth != 1202])]
    if third:
        panels.append(("ResNet-110 vs ResNet-1202", deepest))
    return [(title, members) for title, members in panels if members]


def y_range(curves: list[Curve]) -> float:
    """The top of a panel's y axis (its bottom is 0): the paper's 20% for CIFAR-10 when the
    panel's finished curves (all its curves if none finished) end inside it; otherwise the next
    multiple of 10 above 1.2 times the highest final error, at most 100."""
    judged = _bands([c for c in curves if c.status == "finished"]) or _bands(curves)
    if not judged:
        return PAPER_YMAX
    highest_final = max(float(b.max[-1]) for b in judged)
    if all(c.data == PAPER_DATA for c in curves) and highest_final <= PAPER_YMAX:
        return PAPER_YMAX
    return float(min(100, 10 * math.ceil(1.2 * highest_final / 10)))


def _curve(label: str, runs: list[Run], status: str) -> Curve:
    first = runs[0]
    tags = ("train/error", f"{first.eval_split}/error")
    unlogged = [f"seed {r.seed} logged no {tag}" for tag in tags for r in runs if tag not in r.series]
    return Curve(
        label=label, residual=first.residual, depth=first.depth, status=status,
        seeds=[r.seed for r in runs], eval_split=first.eval_split,
        max_iters=int(first.config.trainer.max_iters),
        train=seed_band(runs, tags[0]), test=seed_band(runs, tags[1]),
        data=str(first.config.data.name), unlogged=unlogged if len(runs) > 1 else [],
    )


def _draw_curve(ax: Axes, curve: Curve, colour) -> None:
    label = curve.label  # on the bold test line; on the training line if no test point yet
    for band, is_test in ((curve.test, True), (curve.train, False)):
        if band is None:
            continue
        style = {"lw": 2.0, "ms": 7} if is_test else {"lw": 0.8, "ls": "--", "ms": 4}
        if curve.status != "finished":  # a marker where the unfinished run stopped (shown in the legend too)
            style.update(marker=UNFINISHED_MARKERS.get(curve.status, "o"), markevery=[len(band.steps) - 1])
        elif len(band.steps) == 1:  # a line of one point draws nothing: a marker shows it
            style.update(marker="o")
        ax.plot(band.steps, band.mean, color=colour, label=label, **style)
        label = None
        if len(curve.seeds) > 1:
            ax.fill_between(band.steps, band.min, band.max, color=colour, alpha=0.2 if is_test else 0.1, lw=0)


def _bands(curves: list[Curve]) -> list[Band]:
    return [b for c in curves for b in (c.train, c.test) if b is not None]


def _set_y_range(ax: Axes, curves: list[Curve], ylim: tuple[float, float], log_y: bool) -> None:
    bands = _bands(curves)
    low, high = ylim
    if log_y:
        ax.set_yscale("log")
        if low <= 0:  # the lowest power of ten below the smallest error drawn
            positive = [float(v) for b in bands for v in b.min if v > 0]
            low = 10.0 ** math.floor(math.log10(min(positive))) if positive else 0.1
    ax.set_ylim(low, high)
    if any(float(b.max.max()) > high for b in bands) or any(float(b.min.min()) < low for b in bands):
        ax.text(1.0, 1.01, f"axis {low:g}-{high:g}%: values outside not shown",
                transform=ax.transAxes, fontsize=7, ha="right", va="bottom", color="0.4")
