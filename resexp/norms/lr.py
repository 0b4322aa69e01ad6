"""Learning-rate sensitivity of norm placements: a norms sweep that varies optim.lr (the norms_lr
presets). Per placement and depth, the final training loss at each learning rate, as a table
(lr_rows, written by norms_table) and a figure of final loss against lr (draw_lr_figure).

A placement's other reports (the norms table's depth cells, the figure's loss curves and
per-block profiles) need one run per setting: where the sweep has several learning rates they
read the runs at the placement's best lr at each depth (at_best_lr).

Notebook use:
    runs = find_runs("runs/sweeps/norms_lr_demo")
    lr_rows(runs)                     # one row per placement and depth, a cell per lr
    save_figure(draw_lr_figure(runs), "norms_lr.png")  # resexp.plotting
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from resexp.files import markdown_table
from resexp.norms.placements import placement_groups, vit_runs
from resexp.runs import Run

MARKERS, DASHES = ("o", "s", "^", "D", "v", "P", "X", "*"), ("-", "--", ":")
# Within this factor of the best final loss, a learning rate counts as "works" (the lr range column).
NEAR_BEST = 1.1


def run_lr(run: Run) -> float | None:
    """The run's optim.lr; None if its config has none (it is then left out of the lr report)."""
    lr = run.value("optim.lr")
    return None if lr is None else float(lr)


def varies_lr(runs: list[Run]) -> bool:
    """Whether the ViT runs among `runs` were trained at more than one optim.lr."""
    return len({run_lr(r) for r in vit_runs(runs)} - {None}) > 1


@dataclass
class LrPoint:
    """One (placement, depth, lr): mean final training loss over finished seeds, or why none."""

    lr: float
    loss: float | None  # None: no finished seed
    runs: int
    diverged: int  # seeds that diverged
    unfinished: int  # seeds still running, stopped or failed


def lr_points(runs: list[Run]) -> dict[int, list[LrPoint]]:
    """Per depth, one point per learning rate (ascending), for one placement's runs."""
    points: dict[int, list[LrPoint]] = {}
    runs = [r for r in runs if run_lr(r) is not None]
    for depth in sorted({r.depth for r in runs}):
        at_depth = [r for r in runs if r.depth == depth]
        for lr in sorted({run_lr(r) for r in at_depth}):
            members = [r for r in at_depth if run_lr(r) == lr]
            finished = [r.summary.train_loss for r in members
                        if r.status == "finished" and r.summary.train_loss is not None]
            usable = [x for x in finished if math.isfinite(x)]
            points.setdefault(depth, []).append(LrPoint(
                lr, statistics.fmean(usable) if usable else None, len(members),
                sum(r.status == "diverged" for r in members),
                sum(r.status not in ("finished", "diverged") for r in members)))
    return points


def best_lr(points: list[LrPoint]) -> float | None:
    """The lr of the lowest mean final loss among those where no seed diverged (failing that, the
    fewest diverged); None if no lr has a finished run."""
    scored = [p for p in points if p.loss is not None]
    return min(scored, key=lambda p: (p.diverged / p.runs, p.loss)).lr if scored else None


def at_best_lr(runs: list[Run]) -> list[Run]:
    """One placement's runs, at each depth only those at its best lr (all runs where the sweep has
    one lr, or where no lr finished at that depth)."""
    if not varies_lr(runs):
        return runs
    kept = []
    for depth, points in lr_points(runs).items():
        lr = best_lr(points)
        kept += [r for r in runs if r.depth == depth and (lr is None or run_lr(r) == lr)]
    return kept


def lr_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per placement and depth: model, depth, lr_<lr> cells (mean final training loss),
    best_lr, and lr_range: the lowest and highest lr whose loss is within NEAR_BEST of the best."""
    rows = []
    for label, group in placement_groups(runs).items():
        for depth, points in lr_points(group).items():
            row: dict[str, Any] = {"model": label, "depth": depth}
            for p in points:
                row[f"lr_{p.lr:g}"] = p.loss
                row[f"lr_{p.lr:g}_status"] = _status(p)
            best = best_lr(points)
            row["best_lr"] = best
            if best is not None:
                floor = next(p.loss for p in points if p.lr == best)
                near = [p.lr for p in points
                        if p.loss is not None and not p.diverged and p.loss <= NEAR_BEST * floor]
                row["lr_range"] = f"{min(near):g}–{max(near):g}"
                row["lrs_near_best"] = len(near)
            else:
                row["lr_range"], row["lrs_near_best"] = None, 0
            rows.append(row)
    return rows


def lr_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The lr_<lr> keys of the rows (a cell each), ascending lr."""
    keys = {k for row in rows for k in row if k.startswith("lr_") and not k.endswith("_status") and k != "lr_range"}
    return sorted(keys, key=lambda k: float(k[3:]))


def lr_markdown(rows: list[dict[str, Any]]) -> str:
    columns = lr_columns(rows)
    head = ["model", "depth", *(f"lr {c[3:]}" for c in columns), "best lr", f"lrs within {NEAR_BEST:g}× of best"]
    table = []
    for row in rows:
        cells = [row["model"], str(row["depth"])]
        for c in columns:
            loss, status = row.get(c), row.get(f"{c}_status")
            cells.append(("–" if loss is None else f"{loss:.3f}") + (f" ({status})" if status else "")
                         if c in row else "not run")
        cells.append("–" if row["best_lr"] is None else f"{row['best_lr']:g}")
        cells.append("none" if not row["lrs_near_best"] else f"{row['lrs_near_best']} ({row['lr_range']})")
        table.append(cells)
    lines = markdown_table(head, table)
    note = ["- lr X: final training loss (the running mean of the last log_every steps, summary.json's train_loss) at "
            "optim.lr = X, mean over finished seeds; (k div): k seeds diverged; (k unfinished): still running, "
            "stopped or failed; –: no finished seed.",
            "- best lr: the lowest mean final loss among the lrs where no seed diverged; "
            f"lrs within {NEAR_BEST:g}× of best: how many grid "
            "learning rates reach a final loss at most that factor above the best's, no seed diverging "
            "(lowest–highest): "
            "the wider, the less sensitive the placement is to its lr."]
    return "\n".join([*lines, "", *note]) + "\n"


def _status(point: LrPoint) -> str:
    parts = [f"{point.diverged} div"] if point.diverged else []
    parts += [f"{point.unfinished} unfinished"] if point.unfinished else []
    return ", ".join(parts)


def draw_lr_figure(runs: list[Run]) -> Figure:
    """One panel per depth: final training loss against lr (log axis), one line per placement;
    an lr whose every seed diverged is an x on the panel's top edge."""
    groups = placement_groups(runs)
    per_group = {label: lr_points(group) for label, group in groups.items()}
    every = [p for points in per_group.values() for ps in points.values() for p in ps]
    depths = sorted({d for points in per_group.values() for d in points})
    colours = dict(zip(groups, colormaps["tab10"](np.arange(len(groups)) % 10)))
    # placements can end on the same points (two that fail alike): markers and dashes tell them apart
    styles = {label: (MARKERS[i % len(MARKERS)], DASHES[i // len(MARKERS) % len(DASHES)])
              for i, label in enumerate(groups)}
    grid = sorted({p.lr for p in every})
    finite = [p.loss for p in every if p.loss is not None]
    top = 1.1 * max(finite) if finite else 1.0
    fig = Figure(figsize=(4.2 * len(depths) + 0.6, 4.4), layout="constrained")
    axes = fig.subplots(1, len(depths), squeeze=False, sharey=True)[0]
    for ax, depth in zip(axes, depths):
        for label, points in per_group.items():
            ps = points.get(depth, [])
            if not ps:
                continue
            marker, dashes = styles[label]
            ax.plot([p.lr for p in ps], [np.nan if p.loss is None else p.loss for p in ps], marker=marker, ms=5,
                    ls=dashes, color=colours[label], label=label, alpha=0.85)
            failed = [p.lr for p in ps if p.diverged == p.runs]
            if failed:  # (an empty line would break the log axis' limits)
                ax.plot(failed, [top] * len(failed), ls="none", marker="x", ms=9, mew=2, color=colours[label],
                        clip_on=False)
        ax.set_xscale("log")
        ax.set_xticks(grid, [f"{lr:g}" for lr in grid])  # the grid's learning rates, not log decades
        ax.minorticks_off()
        ax.set_title(f"depth {depth}", fontsize=10)
        ax.set_xlabel("learning rate (optim.lr)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylim(0, top)
    axes[0].set_ylabel("final training loss")
    handles = [Line2D([], [], color=colours[label], marker=styles[label][0], ls=styles[label][1], label=label)
               for label in groups]
    if any(p.diverged == p.runs for p in every):
        handles.append(Line2D([], [], color="0.3", ls="none", marker="x", mew=2, label="every seed diverged"))
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle("Learning-rate sensitivity: final training loss against lr, per depth", fontsize=10)
    return fig
