"""The norm-placement figure: one column per placement; training loss, gradient norm per block at
init and residual-stream norm per block.

Notebook use:
    runs = find_runs("runs/norms")
    save_figure(draw_norms_figure(runs), "runs/norms/norms.png")  # resexp.plotting
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from resexp.plotting import UNFINISHED_MARKERS, Band, seed_band
from resexp.norms.lr import at_best_lr, varies_lr
from resexp.norms.placements import (
    PLACEMENT_NAMES,
    placement_groups,
    placement_order,
    run_placement,
    run_warmup,
)
from resexp.norms.probes import block_profile, resolve_step
from resexp.runs import Run

# The figure always has these columns, with a note where the sweep lacks them: the comparison it is for.
REQUIRED_PLACEMENTS = ("post", "pre")
LOSS_TAG = "train/loss"
WARMUP_STYLES = {False: "-", True: "--"}
INIT_STYLE = ":"


@dataclass
class LossCurve:
    """One line of a loss panel: the finished seeds of a setting together, or one unfinished run."""

    depth: int
    warmup_iters: int
    status: str
    seeds: list[int]
    band: Band


def loss_curves(runs: list[Run]) -> list[LossCurve]:
    """Training-loss curves of one placement, by depth and warmup; runs without train/loss are left out."""
    by_setting: dict[tuple[int, int], list[Run]] = {}
    for run in sorted((r for r in runs if LOSS_TAG in r.series), key=lambda r: r.seed):
        by_setting.setdefault((run.depth, run_warmup(run)), []).append(run)
    curves = []
    for (depth, warmup), members in sorted(by_setting.items()):
        finished = [r for r in members if r.status == "finished"]
        # Averaging an unfinished run with finished seeds would cut them short: it gets its own line.
        for part in ([finished] if finished else []) + [[r] for r in members if r.status != "finished"]:
            band = seed_band(part, LOSS_TAG)
            if band is not None:
                curves.append(LossCurve(depth, warmup, part[0].status, [r.seed for r in part], band))
    return curves


def draw_norms_figure(runs: list[Run]) -> Figure:
    """Columns: placements. Rows: training loss against iterations; gradient norm per block at
    init; residual-stream norm per block at the last probe step. Colour = depth. A sweep over
    learning rates is drawn at each placement's best lr per depth (norms_lr has the rest)."""
    groups = placement_groups(runs)
    several_lrs = any(varies_lr(group) for group in groups.values())
    columns = _figure_columns({label: at_best_lr(group) for label, group in groups.items()})
    members = [r for _, group in columns for r in group]
    depths = sorted({r.depth for r in members})
    colours = dict(zip(depths, colormaps["viridis"](np.linspace(0, 0.85, len(depths)))))
    curves = [loss_curves(group) for _, group in columns]

    # A bare Figure, not pyplot: no global state, and savefig renders PNG with Agg.
    fig = Figure(figsize=(3.4 * len(columns) + 0.8, 10.0), layout="constrained")
    axes = fig.subplots(3, len(columns), squeeze=False, sharey="row")
    top = _loss_top([c for column in curves for c in column])
    max_iters = max(int(r.config.trainer.max_iters) for r in members)
    for col, ((title, group), column_curves) in enumerate(zip(columns, curves)):
        loss_ax, grad_ax, stream_ax = axes[:, col]
        missing = [f"no {title} runs in this sweep"] if not group else []
        _draw_loss(loss_ax, group, column_curves, colours, top, missing)
        loss_ax.set_title(f"{title}\ntraining loss", fontsize=9)
        loss_ax.set_xlim(0, max_iters)
        _draw_profiles(grad_ax, group, "grad_norm", colours, missing)
        grad_ax.set_title("gradient norm per block at init (step 0)", fontsize=9)
        _draw_profiles(stream_ax, group, "stream_norm", colours, missing)
        stream_ax.set_title("‖x_l‖ per block at the last probe step\n(finished runs; dotted: at init)", fontsize=9)
    axes[0, 0].set_ylabel("training loss (cross-entropy)")
    axes[1, 0].set_ylabel("‖∇ sublayer weights‖ of block l")
    axes[2, 0].set_ylabel("residual-stream norm ‖x_l‖ after block l")
    if top is not None:
        axes[0, 0].set_ylim(0, top)  # shared by the row

    warmups = sorted({run_warmup(r) for r in members} - {0})
    handles = [Line2D([], [], color=colours[d], lw=2, label=f"depth {d}") for d in depths]
    handles += [Line2D([], [], color="0.3", ls=WARMUP_STYLES[False], label="no warmup")]
    if warmups:
        handles += [Line2D([], [], color="0.3", ls=WARMUP_STYLES[True],
                           label=f"warmup ({', '.join(map(str, warmups))} it)")]
    handles += [Line2D([], [], color="0.3", ls=INIT_STYLE, label="at init (stream norm)")]
    unfinished = sorted({c.status for column in curves for c in column} - {"finished"})
    handles += [Line2D([], [], color="0.3", ls="none", marker=UNFINISHED_MARKERS.get(status, "o"),
                       label=f"{status}: last logged point") for status in unfinished]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize=8)
    bands = "; shaded: min-max over seeds" if any(len(c.seeds) > 1 for col in curves for c in col) else ""
    lrs = "; at each depth the placement's best learning rate" if several_lrs else ""
    fig.suptitle(f"Transformer norm placement: one column per placement, colour = depth{bands}{lrs}", fontsize=10)
    return fig


def _figure_columns(groups: dict[str, list[Run]]) -> list[tuple[str, list[Run]]]:
    """(title, runs) per placement row, with an empty column for a missing Post-LN or Pre-LN."""
    order = list(PLACEMENT_NAMES)
    present = {run_placement(g[0]) for g in groups.values() if g[0].residual}
    columns = [(order.index(p), PLACEMENT_NAMES[p], []) for p in REQUIRED_PLACEMENTS if p not in present]
    for label, group in groups.items():
        placement = run_placement(group[0])
        kind = PLACEMENT_NAMES.get(placement, placement) + ("" if group[0].residual else ", no residual")
        columns.append((placement_order(group[0])[0], f"{label} ({kind})", group))
    # Sorted is stable: placement_groups' order within a placement stays.
    return [(title, group) for _, title, group in sorted(columns, key=lambda c: c[0])]


def _loss_top(curves: list[LossCurve]) -> float | None:
    """The loss axis' top: above every finished curve; a diverged run's blow-up is cut (and said so)."""
    judged = [c for c in curves if c.status == "finished"] or curves
    finite = [v for c in judged for v in c.band.max if np.isfinite(v)]
    return 1.05 * max(finite) if finite else None


def _draw_loss(ax: Axes, runs: list[Run], curves: list[LossCurve], colours: dict, top: float | None,
               notes: list[str]) -> None:
    notes = list(notes)
    lacking = sum(LOSS_TAG not in r.series for r in runs)
    if runs and not curves:
        notes.append(f"no {LOSS_TAG} logged")
    elif lacking:
        notes.append(f"{lacking} run(s) without {LOSS_TAG} left out")
    for c in curves:
        colour = colours[c.depth]
        ax.plot(c.band.steps, c.band.mean, color=colour, ls=WARMUP_STYLES[c.warmup_iters > 0], lw=1.2)
        if len(c.seeds) > 1:
            ax.fill_between(c.band.steps, c.band.min, c.band.max, color=colour, alpha=0.15, lw=0)
        if c.status != "finished":  # where it stopped; a blow-up above the axis sits on its top edge
            last = float(c.band.mean[-1])
            y = last if top is None or (np.isfinite(last) and last <= top) else top
            ax.plot([c.band.steps[-1]], [y], ls="none", marker=UNFINISHED_MARKERS.get(c.status, "o"), ms=8,
                    color=colour, mec="black", mew=0.6, clip_on=False)
    if top is not None and any(not np.all(np.isfinite(c.band.max) & (c.band.max <= top)) for c in curves):
        notes.append(f"loss above {top:.3g} (or non-finite) not shown")
    ax.set_xlabel("iterations")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)
    _notes(ax, notes, empty=not curves)


def _draw_profiles(ax: Axes, runs: list[Run], probe: str, colours: dict, notes: list[str]) -> None:
    """grad_norm: at init per depth. stream_norm: at the last probe step per depth and warmup over
    finished runs, and at init dotted."""
    notes = list(notes)
    lines: list[tuple[Band, object, str, float]] = []  # band, colour, linestyle, width
    for depth in sorted({r.depth for r in runs}):
        at_depth = [r for r in runs if r.depth == depth]
        if probe == "stream_norm":
            for warm in (False, True):
                finished = [r for r in at_depth if r.status == "finished" and (run_warmup(r) > 0) == warm]
                band = _profile_band(finished, probe, "last")
                if band is not None:
                    lines.append((band, colours[depth], WARMUP_STYLES[warm], 1.4))
        band = _profile_band(at_depth, probe, "init")
        if band is not None:
            lines.append((band, colours[depth], "-" if probe == "grad_norm" else INIT_STYLE,
                          1.4 if probe == "grad_norm" else 0.9))
    if runs and not lines:
        notes.append(f"no probe/{probe} logged" + (" at step 0" if probe == "grad_norm" else ""))
    nonpositive = sum(int((b.mean <= 0).sum()) for b, *_ in lines)
    if nonpositive:
        notes.append(f"{nonpositive} values ≤ 0 (zero gradient: e.g. ReZero's α = 0 at init) "
                     "not drawn on the log axis")
    for band, colour, style, width in lines:
        positive = band.mean > 0
        ax.plot(band.steps, np.where(positive, band.mean, np.nan), color=colour, ls=style, lw=width)
        if not np.array_equal(band.min, band.max):
            ax.fill_between(band.steps, np.where(band.min > 0, band.min, np.nan), np.where(positive, band.max, np.nan),
                            color=colour, alpha=0.15, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("block index l")
    ax.grid(alpha=0.3, which="both")
    _notes(ax, notes, empty=not any((b.mean > 0).any() for b, *_ in lines))


def _profile_band(runs: list[Run], probe: str, step: str) -> Band | None:
    """Mean, min and max over runs of block_profile, x = block index; None if no run logged it."""
    usable = [r for r in runs if resolve_step(r, probe, step) is not None]
    if step == "init":  # a seed starts from the same weights and batch whatever its warmup: count it once
        usable = list({r.seed: r for r in usable}.values())
    if not usable:
        return None
    values = np.stack([block_profile(r, probe, step) for r in usable])
    return Band(np.arange(values.shape[1]), values.mean(0), values.min(0), values.max(0))


def _notes(ax: Axes, notes: list[str], empty: bool) -> None:
    """Say on the panel what is missing: centred when the panel is empty, small top-right otherwise
    (where decreasing loss curves and early blocks leave room)."""
    if not notes:
        return
    text = "\n".join(textwrap.fill(note, 40) for note in notes)  # wrap=True wraps at the figure's edge only
    if empty:
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.3")
    else:
        ax.text(0.98, 0.98, text, transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.3",
                bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})
