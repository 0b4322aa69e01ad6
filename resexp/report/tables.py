"""Table 6 of He et al. 2015: test error per model over seeds, next to the paper's numbers.

Definitions (over the *finished* seeds of a model; running, diverged and failed runs are
only counted in `status`):
- test_error_best: the lowest final test error of any seed (the paper's "best of 5").
- test_error_mean, test_error_std: over seeds of the final test error; std is the sample
  standard deviation (ddof=1), empty with a single seed.
- train_error_final: the final training error (running error of the last logging window),
  mean over seeds.
- test_error_lowest_eval: the lowest test error seen at any evaluation of any seed.
  Chosen on the test set, so optimistic; it is what some public reproductions report.
With eval_split "val" (the 45k/5k tuning split) the "test" columns hold validation error.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from resexp.files import markdown_table, write_csv, write_text
from resexp.report.paper import PAPER_CIFAR10, PaperError, comparison_gaps
from resexp.runs import (
    LeftOut,
    Run,
    group_runs,
    print_unreadable,
    status_counts,
    unreadable_lines,
)
from resexp.terminal import fitted_table

# Row keys, in order: the CSV header.
COLUMNS = ("model", "data", "eval_split", "depth", "residual", "params", "params_m", "seeds", "status",
           "test_error_best", "test_error_mean", "test_error_std", "train_error_final",
           "test_error_lowest_eval", "paper_test_error", "paper")
# Markdown / terminal column headers (the CSV uses the row keys).
HEADERS = ("model", "data", "params", "seeds", "status", "test err. best (%)",
           "test err. mean ± std (%)", "train err. final (%)", "lowest eval (%)", "paper test err. (%)")
_NOTE = ("Over finished seeds: best = lowest final test error; mean ± std of the final test error "
         "(sample std, ddof=1); train err. = final training error, mean. Lowest eval = lowest test error "
         "at any evaluation (chosen on the test set: optimistic). Paper: He et al. 2015 Table 6 (CIFAR-10); "
         "plain nets ≈ read off Figure 6. Data marked (val): the test columns hold validation error.")


def table6(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per model (runs equal up to the seed); plain first, then residual, by depth."""
    rows = [_row(label, members) for label, members in group_runs(runs).items()]
    return sorted(rows, key=lambda r: (r["residual"], r["depth"], r["model"]))


def write_table(rows: list[dict[str, Any]], out_dir: str | Path, stem: str = "table6",
                unreadable: Sequence[LeftOut] = ()) -> list[Path]:
    """Write rows as out_dir/stem.md (rounded, for reading; the unreadable runs listed below it)
    and stem.csv (full precision)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out / f"{stem}.md", out / f"{stem}.csv"
    lines = markdown_table(HEADERS, map(_display, rows))
    write_text(md_path, "\n".join([*lines, "", _NOTE, *unreadable_lines(unreadable)]) + "\n")
    write_csv(csv_path, rows, COLUMNS)
    return [md_path, csv_path]


def print_table(rows: list[dict[str, Any]], console: Console | None = None,
                unreadable: Sequence[LeftOut] = ()) -> None:
    """The table on the terminal, as in the Markdown file."""
    console = console or Console()
    table = fitted_table(HEADERS, [_display(row) for row in rows], "Table 6 (He et al. 2015)", console.width,
                         shared=("data",))
    console.print(table)
    console.print(_NOTE, style="dim", highlight=False)
    print_unreadable(unreadable, console)


def _row(label: str, runs: list[Run]) -> dict[str, Any]:
    first = runs[0]
    split = first.eval_split
    finished = [r for r in runs if r.status == "finished"]
    final = [float(r.summary.error_on(split)) for r in finished]
    lowest = [float(r.summary.best_error_on(split)) for r in finished]
    params = first.summary.params
    paper = _paper(first)
    return {
        "model": label,
        "data": str(first.config.data.name),
        "eval_split": split,
        "depth": first.depth,
        "residual": first.residual,
        "params": params,
        "params_m": _paper_millions(params) if params is not None else None,
        "seeds": len(runs),
        "status": status_counts(runs),
        "test_error_best": min(final) if final else None,
        "test_error_mean": statistics.fmean(final) if final else None,
        "test_error_std": statistics.stdev(final) if len(final) > 1 else None,
        "train_error_final": statistics.fmean(float(r.summary.train_error) for r in finished) if finished else None,
        "test_error_lowest_eval": min(lowest) if lowest else None,
        "paper_test_error": paper.value if paper else None,
        "paper": paper.shown if paper else None,
    }


def _paper(run: Run) -> PaperError | None:
    """The paper's number, only for the paper's setting (resexp.report.paper.comparison_gaps: CIFAR-10
    test error of its CIFAR nets, option A, width 1)."""
    return None if comparison_gaps(run) else PAPER_CIFAR10.get((run.residual, run.depth))


def _paper_millions(params: int) -> str:
    # The paper's rounding: 0.27M, 0.85M, 1.7M, 19.4M.
    return f"{params / 1e6:.2f}M" if params < 1e6 else f"{params / 1e6:.1f}M"


def _display(row: dict[str, Any]) -> list[str]:
    def pct(x: float | None) -> str:
        return "" if x is None else f"{x:.2f}"

    mean_std = pct(row["test_error_mean"])
    if row["test_error_std"] is not None:
        mean_std += f" ± {row['test_error_std']:.2f}"
    data = row["data"] + (f" ({row['eval_split']})" if row["eval_split"] != "test" else "")
    return [row["model"], data, row["params_m"] or "", str(row["seeds"]), row["status"],
            pct(row["test_error_best"]), mean_std, pct(row["train_error_final"]),
            pct(row["test_error_lowest_eval"]), row["paper"] or ""]
