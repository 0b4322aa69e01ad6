"""Transformer norm placement: training loss, per-block probes and divergence, per placement.

A norms sweep trains ViTs (model.arch: vit), one model.name per placement (vit_post, vit_pre,
...), at several depths, with and without learning-rate warmup (optim.warmup_iters > 0).

Notebook use:
    runs = find_runs("runs/norms")
    block_profile(runs[0], "grad_norm", "init")   # (depth,): gradient norm per block at step 0
    rows = norms_table(runs)                      # one row per placement
    norms_figure(runs, "runs/norms/norms.png")
"""

from __future__ import annotations

import csv
import json
import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from resexp.errors import ResexpError
from resexp.report.figures import UNFINISHED_MARKERS, Band, seed_band, save_figure
from resexp.config import flatten_keys
from resexp.report.runs import Run, UnreadableRun, print_unreadable, unreadable_lines

PLACEMENT_NAMES = {"post": "Post-LN", "pre": "Pre-LN", "sandwich": "Sandwich-LN", "deepnorm": "DeepNorm",
                   "rezero": "ReZero", "none": "no norm"}
# The figure always has these columns, with a note where the sweep lacks them: the comparison it is for.
REQUIRED_PLACEMENTS = ("post", "pre")
# What a norms sweep varies inside one placement's row; any other config difference makes its own row.
VARIED_KEYS = ("model.depth", "optim.warmup_iters")
LOSS_TAG = "train/loss"
WARMUP_STYLES = {False: "-", True: "--"}
INIT_STYLE = ":"

# Keys of a norms_runs row, in order: the header of norms_runs.csv.
RUN_COLUMNS = ("model", "placement", "residual", "depth", "warmup_iters", "seed", "status", "diverged_at",
               "iterations", "eval_split", "train_error", "test_error", "train_loss", "probe_step",
               "stream_growth", "min_rel_update", "path")


# --- probes -----------------------------------------------------------------------------------

def probe_steps(run: Run, probe: str) -> list[int]:
    """The steps at which every block of the run logged probe/<probe>/block_XXX; [] if none."""
    tags = _probe_tags(run, probe)
    if any(tag not in run.series for tag in tags):
        return []
    return sorted(set.intersection(*(set(run.series[tag][0]) for tag in tags)))


def block_profile(run: Run, probe: str, step: str | int = "init") -> np.ndarray:
    """One probe ("grad_norm", "stream_norm", "rel_update") per block, shape (depth,).

    step: "init" (step 0, before the first update), "last" (the last step every block logged)
    or an iteration. Values are as TensorBoard stored them (float32).
    """
    at = _resolve_step(run, probe, step)
    if at is None:
        steps = probe_steps(run, probe)
        logged = f"logged at steps {steps[0]}..{steps[-1]}" if steps else "not logged for every block"
        raise ResexpError(f"{run.path}: no probe/{probe} at step {step!r} ({logged})")
    return np.array([values[steps.index(at)] for steps, values in (run.series[t] for t in _probe_tags(run, probe))])


def _probe_tags(run: Run, probe: str) -> list[str]:
    return [f"probe/{probe}/block_{block:03d}" for block in range(run.depth)]


def _resolve_step(run: Run, probe: str, step: str | int) -> int | None:
    """The iteration `step` names, if every block logged the probe there."""
    steps = probe_steps(run, probe)
    if not steps:
        return None
    at = {"init": 0, "last": steps[-1]}.get(step, step) if isinstance(step, str) else int(step)
    return at if at in steps else None


# --- runs by placement ---------------------------------------------------------------------------

def placement_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """The ViT runs, one group per placement row, keyed by model.name, in placement order.

    A group holds runs equal in config up to depth, warmup and seed. Where two groups share a
    name (residual=false of vit_post, two learning rates) the config values that tell them apart
    are appended to the label, as group_runs does.
    """
    vit = [r for r in runs if r.config.model.get("arch") == "vit"]
    if not vit:
        raise ResexpError(f"no ViT runs (model.arch: vit) among the {len(runs)} runs found: "
                          "--kind norms reports on norm-placement sweeps")
    groups: dict[str, tuple[dict[str, Any], list[Run]]] = {}
    for run in vit:
        setting = {k: v for k, v in flatten_keys(run.identity).items() if k not in VARIED_KEYS}
        groups.setdefault(json.dumps(setting, sort_keys=True, default=str), (setting, []))[1].append(run)
    by_name: dict[str, list[tuple[dict[str, Any], list[Run]]]] = {}
    for setting, members in groups.values():
        by_name.setdefault(members[0].base_label, []).append((setting, members))
    labelled = {}
    for name, same_name in by_name.items():
        keys = set().union(*(setting for setting, _ in same_name))
        differing = sorted(k for k in keys if len({repr(setting.get(k)) for setting, _ in same_name}) > 1)
        for setting, members in same_name:
            suffix = ", ".join(f"{k}={setting.get(k)}" for k in differing)
            labelled[f"{name} ({suffix})" if suffix else name] = members
    return dict(sorted(labelled.items(), key=lambda item: (*_placement_order(item[1][0]), item[0])))


def _placement(run: Run) -> str:
    return str(run.config.model.get("norm_placement", "?"))


def _placement_order(run: Run) -> tuple[int, bool]:
    order = list(PLACEMENT_NAMES)
    placement = _placement(run)
    return (order.index(placement) if placement in order else len(order), not run.residual)


def _warmup(run: Run) -> int:
    return int(OmegaConf.select(run.config, "optim.warmup_iters", default=0) or 0)


# --- table ------------------------------------------------------------------------------------

def norms_runs(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per ViT run (keys RUN_COLUMNS): by placement, then depth, warmup, seed.

    Errors and loss are summary.json's last values (for a diverged run: at divergence); the
    probe columns are taken at the run's last probe step (probe_step).
    """
    rows = []
    for label, members in placement_groups(runs).items():
        for run in sorted(members, key=lambda r: (r.depth, _warmup(r), r.seed)):
            rows.append(_run_row(label, run))
    return rows


def norms_table(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per placement (see _note for the columns); d<D>* keys for every depth in the sweep."""
    run_rows = norms_runs(runs)
    depths = sorted({r["depth"] for r in run_rows})
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in run_rows:
        by_model.setdefault(r["model"], []).append(r)
    rows = []
    for model, members in by_model.items():
        first = members[0]
        row = {
            "model": model, "placement": first["placement"], "residual": first["residual"],
            "runs": len(members), "eval_split": first["eval_split"],
            "warmup_iters": ", ".join(str(w) for w in sorted({m["warmup_iters"] for m in members} - {0})),
            "diverged_no_warmup": _diverged_depths([m for m in members if not m["warmup_iters"]]),
            "diverged_warmup": _diverged_depths([m for m in members if m["warmup_iters"]]),
        }
        for depth in depths:
            row.update(_depth_cells(depth, [m for m in members if m["depth"] == depth]))
        row.update(_probe_cells(members))
        rows.append(row)
    return rows


def write_norms_table(rows: list[dict[str, Any]], out_dir: str | Path, run_rows: list[dict[str, Any]] | None = None,
                      unreadable: Sequence[UnreadableRun] = ()) -> list[Path]:
    """Write out_dir/norms_table.md (for reading; the unreadable runs listed at its end) and
    norms_table.csv (full precision), and with run_rows (norms_runs) the long form out_dir/norms_runs.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out / "norms_table.md", out / "norms_table.csv"
    headers = _headers(rows)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_display(row)) + " |" for row in rows]
    md_path.write_text("\n".join([*lines, "", *(f"- {line}" for line in _note(rows)), *unreadable_lines(unreadable)])
                       + "\n")
    _write_csv(csv_path, rows, list(rows[0]) if rows else [])
    paths = [md_path, csv_path]
    if run_rows is not None:
        paths.append(out / "norms_runs.csv")
        _write_csv(paths[-1], run_rows, list(RUN_COLUMNS))
    return paths


def print_norms_table(rows: list[dict[str, Any]], console: Console | None = None,
                      unreadable: Sequence[UnreadableRun] = ()) -> None:
    """The table on the terminal, as in the Markdown file."""
    table = Table(*_headers(rows), title="Transformer norm placement", caption="\n".join(_note(rows)),
                  caption_justify="left")
    table.columns[0].no_wrap = True  # the placement's name, whatever the terminal's width
    for row in rows:
        table.add_row(*_display(row))
    console = console or Console()
    console.print(table)
    print_unreadable(unreadable, console)


def _run_row(label: str, run: Run) -> dict[str, Any]:
    summary, split = run.summary, run.eval_split
    probe_step = growth = min_rel = None
    if probe_steps(run, "stream_norm"):
        probe_step = probe_steps(run, "stream_norm")[-1]
        stream = block_profile(run, "stream_norm", "last")
        growth = float(stream[-1] / stream[0])
    if probe_steps(run, "rel_update"):
        min_rel = float(block_profile(run, "rel_update", "last").min())
    return {
        "model": label, "placement": _placement(run), "residual": run.residual, "depth": run.depth,
        "warmup_iters": _warmup(run), "seed": run.seed, "status": run.status,
        "diverged_at": summary.get("iterations") if run.status == "diverged" else None,
        "iterations": summary.get("iterations"), "eval_split": split,
        "train_error": summary.get("train_error"), "test_error": summary.get(f"{split}_error"),
        "train_loss": summary.get("train_loss"), "probe_step": probe_step,
        "stream_growth": growth, "min_rel_update": min_rel, "path": str(run.path),
    }


def _diverged_depths(members: list[dict[str, Any]]) -> str:
    if not members:
        return "not run"
    cells = []
    for depth in sorted({m["depth"] for m in members}):
        at = [m for m in members if m["depth"] == depth]
        diverged = sum(m["status"] == "diverged" for m in at)
        if diverged:
            cells.append(str(depth) if diverged == len(at) else f"{depth} ({diverged} of {len(at)})")
    return ", ".join(cells) or "none"


def _depth_cells(depth: int, members: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean final errors over the finished seeds at one depth, without (d<D>_train/test) and with
    warmup (_w), and the display cell d<D>: "12.3/20.1 (w: 11.0/19.5)", "div@340", "not run"."""
    cells: dict[str, Any] = {}
    texts = []
    for warm, suffix in ((False, ""), (True, "_w")):
        setting = [m for m in members if bool(m["warmup_iters"]) == warm]
        finished = [m for m in setting if m["status"] == "finished"]
        for key in ("train", "test"):
            cells[f"d{depth}_{key}{suffix}"] = (
                statistics.fmean(m[f"{key}_error"] for m in finished) if finished else None)
        parts = [f"{cells[f'd{depth}_train{suffix}']:.1f}/{cells[f'd{depth}_test{suffix}']:.1f}"] if finished else []
        parts += [f"div@{m['diverged_at']}" if m["status"] == "diverged" else m["status"]
                  for m in setting if m["status"] != "finished"]
        texts.append("; ".join(parts))
    plain, warm = texts
    cells[f"d{depth}"] = (f"{plain} (w: {warm})" if plain and warm else plain or (f"w: {warm}" if warm else "not run"))
    return cells


def _probe_cells(members: list[dict[str, Any]]) -> dict[str, Any]:
    """Stream growth and smallest relative update at the deepest depth with a finished, probed run,
    mean over its finished runs there (seeds and warmup settings)."""
    probed = [m for m in members if m["status"] == "finished" and m["stream_growth"] is not None]
    if not probed:
        return {"probe_depth": None, "stream_growth": None, "min_rel_update": None}
    depth = max(m["depth"] for m in probed)
    deepest = [m for m in probed if m["depth"] == depth]
    rel = [m["min_rel_update"] for m in deepest if m["min_rel_update"] is not None]
    return {"probe_depth": depth, "stream_growth": statistics.fmean(m["stream_growth"] for m in deepest),
            "min_rel_update": statistics.fmean(rel) if rel else None}


def _depths(rows: list[dict[str, Any]]) -> list[int]:
    return [int(key[1:]) for key in (rows[0] if rows else {}) if key[0] == "d" and key[1:].isdigit()]


def _headers(rows: list[dict[str, Any]]) -> list[str]:
    split = "/".join(sorted({r["eval_split"] for r in rows})) or "test"
    return ["model", "runs", "diverged w/o warmup (depths)", "diverged with warmup (depths)",
            *(f"d={d} train/{split} err. (%)" for d in _depths(rows)),
            "‖x‖ growth last/first block (deepest finished d)", "min rel. update (deepest finished d)"]


def _display(row: dict[str, Any]) -> list[str]:
    def at_depth(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3g} (d={row['probe_depth']})"

    return [row["model"], str(row["runs"]), row["diverged_no_warmup"], row["diverged_warmup"],
            *(row[f"d{d}"] for d in _depths([row])), at_depth(row["stream_growth"]), at_depth(row["min_rel_update"])]


def _note(rows: list[dict[str, Any]]) -> list[str]:
    """One definition per column."""
    warmups = sorted({int(w) for r in rows for w in r["warmup_iters"].split(", ") if w})
    warmup = f"optim.warmup_iters = {', '.join(map(str, warmups))}" if warmups else "optim.warmup_iters > 0"
    return [
        "model: model.name, one row per placement (residual=false runs are their own row); runs: run directories.",
        "diverged w/o / with warmup: the depths at which runs diverged without warmup (optim.warmup_iters = 0) "
        f"and with warmup ({warmup}); \"D (k of n)\": k of n seeds diverged; none: no run diverged; "
        "not run: no runs of that setting.",
        "d=D train/test err.: final training / test error (%) from summary.json at depth D, mean over finished "
        "seeds, without warmup, then (w: ...) with warmup; div@N: diverged at iteration N; running, failed: "
        "unfinished runs.",
        "‖x‖ growth: probe/stream_norm (‖x_l‖ after block l) of the last block / of block 0 at the final probe "
        "step, at the deepest depth d with a finished run, mean over its finished runs there (seeds and warmup "
        "settings).",
        "min rel. update: the smallest over blocks of probe/rel_update (‖G(x_l)‖/‖x_l‖) at the final probe "
        "step, same runs. n/a: no finished run logged the probes.",
    ]


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


# --- figure -----------------------------------------------------------------------------------

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
        by_setting.setdefault((run.depth, _warmup(run)), []).append(run)
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
    init; residual-stream norm per block at the last probe step. Colour = depth."""
    columns = _figure_columns(placement_groups(runs))
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

    warmups = sorted({_warmup(r) for r in members} - {0})
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
    fig.suptitle(f"Transformer norm placement: one column per placement, colour = depth{bands}", fontsize=10)
    return fig


def norms_figure(runs: list[Run], out_path: str | Path) -> list[Path]:
    """Draw the norm-placement figure and write it as PNG and PDF (out_path with each suffix)."""
    return save_figure(draw_norms_figure(runs), out_path)


def _figure_columns(groups: dict[str, list[Run]]) -> list[tuple[str, list[Run]]]:
    """(title, runs) per placement row, with an empty column for a missing Post-LN or Pre-LN."""
    order = list(PLACEMENT_NAMES)
    present = {_placement(g[0]) for g in groups.values() if g[0].residual}
    columns = [(order.index(p), PLACEMENT_NAMES[p], []) for p in REQUIRED_PLACEMENTS if p not in present]
    for label, group in groups.items():
        placement = _placement(group[0])
        kind = PLACEMENT_NAMES.get(placement, placement) + ("" if group[0].residual else ", no residual")
        columns.append((_placement_order(group[0])[0], f"{label} ({kind})", group))
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
                finished = [r for r in at_depth if r.status == "finished" and (_warmup(r) > 0) == warm]
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
    usable = [r for r in runs if _resolve_step(r, probe, step) is not None]
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
