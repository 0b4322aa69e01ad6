"""The norm-placement table: one row per ViT run (norms_runs) and one per placement (norms_table),
written as Markdown and CSV (write_norms_table) or printed on the terminal (print_norms_table).

Notebook use:
    runs = find_runs("runs/norms")
    rows = norms_table(runs)                      # one row per placement
    write_norms_table(rows, "runs/norms", norms_runs(runs))
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from resexp.files import markdown_table, write_csv, write_text
from resexp.norms.lr import at_best_lr, lr_columns, lr_markdown, run_lr
from resexp.norms.placements import placement_groups, run_placement, run_warmup
from resexp.norms.probes import block_profile, probe_steps
from resexp.runs import LeftOut, Run, print_unreadable, unreadable_lines

# Keys of a norms_runs row, in order: the header of norms_runs.csv.
RUN_COLUMNS = ("model", "placement", "residual", "depth", "warmup_iters", "lr", "seed", "status", "diverged_at",
               "iterations", "eval_split", "train_error", "test_error", "train_loss", "probe_step",
               "stream_growth", "min_rel_update", "angular_distance", "skip_step", "skip_loss_delta_max",
               "best_lr_of_depth", "path")


def norms_runs(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per ViT run (keys RUN_COLUMNS): by placement, then depth, warmup, seed.

    Errors and loss are summary.json's last values (for a diverged run: at divergence); the
    stream probes are taken at the run's last probe step (probe_step), skip_loss_delta at the
    last step that logged it (skip_step: the final iteration of a finished run).
    best_lr_of_depth: the run is at its placement's best lr at its depth (what the table's
    depth cells and probe columns read; always true where the sweep has one lr).
    """
    rows = []
    for label, members in placement_groups(runs).items():
        best = {id(r) for r in at_best_lr(members)}
        for run in sorted(members, key=lambda r: (r.depth, run_warmup(r), run_lr(r) or 0.0, r.seed)):
            rows.append({**_run_row(label, run), "best_lr_of_depth": id(run) in best})
    return rows


def norms_table(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per placement (see _note for the columns); d<D>* keys for every depth in the sweep."""
    run_rows = norms_runs(runs)
    depths = sorted({r["depth"] for r in run_rows})
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in run_rows:
        by_model.setdefault(r["model"], []).append(r)
    rows = []
    for model, every in by_model.items():
        first = every[0]
        members = [m for m in every if m["best_lr_of_depth"]]  # one lr per depth: its best
        row = {
            "model": model, "placement": first["placement"], "residual": first["residual"],
            "runs": len(every), "eval_split": first["eval_split"], "lr": _lr_cell(members, every),
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
                      unreadable: Sequence[LeftOut] = (),
                      lr_rows: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write out_dir/norms_table.md (for reading; the unreadable runs listed at its end) and
    norms_table.csv (full precision), with run_rows (norms_runs) the long form out_dir/norms_runs.csv,
    and with lr_rows (resexp.norms.lr.lr_rows) the lr-sensitivity table norms_lr.md/.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out / "norms_table.md", out / "norms_table.csv"
    headers = _headers(rows)
    lines = markdown_table(headers, map(_display, rows))
    write_text(md_path, "\n".join([*lines, "", *(f"- {line}" for line in _note(rows)),
                                    *unreadable_lines(unreadable)]) + "\n")
    write_csv(csv_path, rows, list(rows[0]) if rows else [])
    paths = [md_path, csv_path]
    if run_rows is not None:
        paths.append(out / "norms_runs.csv")
        write_csv(paths[-1], run_rows, list(RUN_COLUMNS))
    if lr_rows:
        paths += [out / "norms_lr.md", out / "norms_lr.csv"]
        write_text(paths[-2], lr_markdown(lr_rows))
        columns = ["model", "depth", *(c for lr in lr_columns(lr_rows) for c in (lr, f"{lr}_status")),
                   "best_lr", "lr_range", "lrs_near_best"]
        write_csv(paths[-1], lr_rows, columns)
    return paths


def print_norms_table(rows: list[dict[str, Any]], console: Console | None = None,
                      unreadable: Sequence[LeftOut] = ()) -> None:
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
    angles = probe_steps(run, "angular_distance")
    angle = float(block_profile(run, "angular_distance", "last").mean()) if angles else None
    skip_steps = probe_steps(run, "skip_loss_delta")
    skip = float(block_profile(run, "skip_loss_delta", "last").max()) if skip_steps else None
    return {
        "model": label, "placement": run_placement(run), "residual": run.residual, "depth": run.depth,
        "warmup_iters": run_warmup(run), "lr": run_lr(run), "seed": run.seed, "status": run.status,
        "diverged_at": summary.iterations if run.status == "diverged" else None,
        "iterations": summary.iterations, "eval_split": split,
        "train_error": summary.train_error, "test_error": summary.error_on(split),
        "train_loss": summary.train_loss, "probe_step": probe_step,
        "stream_growth": growth, "min_rel_update": min_rel, "angular_distance": angle,
        "skip_step": skip_steps[-1] if skip_steps else None, "skip_loss_delta_max": skip, "path": str(run.path),
    }


def _lr_cell(members: list[dict[str, Any]], every: list[dict[str, Any]]) -> str:
    """The placement's lr, or with several in the sweep the best one at each depth."""
    if len({m["lr"] for m in every}) == 1:
        return "not set" if every[0]["lr"] is None else f"{every[0]['lr']:g}"
    lrs: dict[int, set] = {}
    for m in members:  # at a depth where no lr finished, every lr's runs stay: there is no best
        lrs.setdefault(m["depth"], set()).add(m["lr"])
    return "best: " + ", ".join(f"{next(iter(lr)):g} (d={depth})" if len(lr) == 1 else f"none finished (d={depth})"
                                for depth, lr in sorted(lrs.items()))


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
    """Stream growth, smallest relative update, mean angular distance and the largest loss change
    of skipping one block, at the deepest depth with a finished, probed run, mean over its
    finished runs there (seeds and warmup settings)."""
    probed = [m for m in members if m["status"] == "finished" and m["stream_growth"] is not None]
    keys = ("stream_growth", "min_rel_update", "angular_distance", "skip_loss_delta_max")
    if not probed:
        return {"probe_depth": None, **dict.fromkeys(keys)}
    depth = max(m["depth"] for m in probed)
    deepest = [m for m in probed if m["depth"] == depth]
    cells: dict[str, Any] = {"probe_depth": depth}
    for key in keys:
        values = [m[key] for m in deepest if m[key] is not None]
        cells[key] = statistics.fmean(values) if values else None
    return cells


def _depths(rows: list[dict[str, Any]]) -> list[int]:
    return [int(key[1:]) for key in (rows[0] if rows else {}) if key[0] == "d" and key[1:].isdigit()]


def _headers(rows: list[dict[str, Any]]) -> list[str]:
    split = "/".join(sorted({r["eval_split"] for r in rows})) or "test"
    return ["model", "runs", "lr", "diverged w/o warmup (depths)", "diverged with warmup (depths)",
            *(f"d={d} train/{split} err. (%)" for d in _depths(rows)),
            "‖x‖ growth last/first block (deepest finished d)", "min rel. update (deepest finished d)",
            "mean angular distance (deepest finished d)", "max skip-loss Δ (deepest finished d)"]


def _display(row: dict[str, Any]) -> list[str]:
    def at_depth(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3g} (d={row['probe_depth']})"

    return [row["model"], str(row["runs"]), row["lr"], row["diverged_no_warmup"], row["diverged_warmup"],
            *(row[f"d{d}"] for d in _depths([row])), at_depth(row["stream_growth"]), at_depth(row["min_rel_update"]),
            at_depth(row["angular_distance"]), at_depth(row["skip_loss_delta_max"])]


def _note(rows: list[dict[str, Any]]) -> list[str]:
    """One definition per column."""
    warmups = sorted({int(w) for r in rows for w in r["warmup_iters"].split(", ") if w})
    warmup = f"optim.warmup_iters = {', '.join(map(str, warmups))}" if warmups else "optim.warmup_iters > 0"
    return [
        "model: model.name, one row per placement (residual=false runs are their own row); runs: run directories.",
        "lr: optim.lr; where the sweep has several, the best at each depth (lowest mean final training loss): "
        "the depth and probe columns read the runs at that lr (norms_lr.md has every lr).",
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
        "step, same runs.",
        "mean angular distance: probe/angular_distance (arccos of the cosine between a block's input and "
        "output, / π: 0 = the block leaves the direction alone) averaged over blocks at the final probe step, "
        "same runs.",
        "max skip-loss Δ: the largest over blocks of probe/skip_loss_delta (training-batch loss with the block "
        "skipped minus without) at the run's last iteration, same runs: what the most needed block is worth. "
        "n/a: no finished run logged the probes.",
    ]

