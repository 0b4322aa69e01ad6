"""The `resexp` command line: each command parses, composes a config and calls one function."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from resexp import __version__
from resexp.config import GROUPS, compose, group_choices
from resexp.errors import ResexpError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
OVERRIDES = typer.Argument(None, help="Hydra overrides: key=value, group=option", show_default=False)


def _groups_help() -> str:
    lines = [f"{group}: {', '.join(group_choices(group))}" for group in GROUPS]
    return "\n\n".join(["Config groups and their choices (group=option):", *lines])


def _fail(message: str, code: int = 2) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command(
    help="Train one run. Example: resexp train model=plain56 data=synthetic trainer.max_iters=2000\n\n"
    + _groups_help(),
)
def train(overrides: Optional[list[str]] = OVERRIDES) -> None:
    from resexp.engine.train import train as run_training  # torch import only when training

    try:
        cfg = compose(overrides or [])
        summary = run_training(cfg)
    except ResexpError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; the last checkpoint is kept: run the same command to resume", 130)
    split = summary["eval_split"]
    Console().print(
        f"{summary['model']} on {summary['data']}: {summary['status']} at iteration {summary['iterations']}, "
        f"train error {summary.get('train_error', float('nan')):.2f}%, {split} error "
        f"{summary.get(split + '_error', float('nan')):.2f}% -> {cfg.run.dir}",
        highlight=False,
    )


@app.command(
    help="Run a sweep: a preset from configs/sweep and/or Hydra multirun overrides.\n\n"
    "Examples: resexp sweep figure6 hydra/launcher=joblib;  "
    "resexp sweep model=plain20,plain56 seed=0,1,2 data=synthetic run.sweep=mine\n\n"
    f"Presets: {', '.join(group_choices('sweep'))}. Launchers (hydra/launcher=): basic (sequential), "
    "joblib (local processes; launcher.runs_per_gpu=N), submitit_local, submitit_slurm, slurm "
    "(submitit_slurm with a GPU job's defaults).",
)
def sweep(
    preset: Optional[str] = typer.Argument(None, help="a preset name, or the first override", show_default=False),
    overrides: Optional[list[str]] = OVERRIDES,
) -> None:
    from resexp.sweep import run_sweep

    args = list(overrides or [])
    if preset is not None and "=" in preset:
        args.insert(0, preset)
    elif preset is not None:
        if preset not in group_choices("sweep"):
            _fail(f"unknown sweep preset '{preset}'; choose from: {', '.join(group_choices('sweep'))}")
        args.insert(0, f"sweep={preset}")
    try:
        run_sweep(args)
    except ResexpError as e:
        _fail(str(e))


@app.command(help="Draw Figure 6 (plain left, residual right; dashed = train, bold = test error) "
             "from a sweep directory's TensorBoard logs. Writes PNG and PDF.")
def figure(
    sweep_dir: str = typer.Argument(..., help="a sweep directory (or any folder of run directories)"),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="output file (default SWEEP_DIR/figure6.png)"),
) -> None:
    from resexp.report import figure6, require_runs

    try:
        paths = figure6(require_runs(sweep_dir), out or f"{sweep_dir}/figure6.png")
    except ResexpError as e:
        _fail(str(e))
    print("wrote " + ", ".join(map(str, paths)))


@app.command(help="Table 6 from a sweep directory: model, depth, params, test error (best, mean ± std "
             "over seeds), final training error, and the paper's numbers on CIFAR-10. Writes .md and .csv.")
def table(
    sweep_dir: str = typer.Argument(..., help="a sweep directory (or any folder of run directories)"),
    out_dir: Optional[str] = typer.Option(None, "-o", "--out-dir", help="where table6.md/.csv go (default SWEEP_DIR)"),
) -> None:
    from resexp.report import print_table, require_runs, table6, write_table

    try:
        rows = table6(require_runs(sweep_dir))
    except ResexpError as e:
        _fail(str(e))
    print_table(rows)
    print("wrote " + ", ".join(map(str, write_table(rows, out_dir or sweep_dir))))


@app.command(help="List every named model with its parameters and forward MACs per image.")
def models() -> None:
    from resexp.models import build_model, count_macs, count_params

    table = Table("model", "arch", "depth", "residual", "params", "MACs / image")
    for name in group_choices("model"):
        cfg = compose([f"model={name}"]).model
        model = build_model(cfg)
        residual = str(cfg.get("residual", "-"))
        if cfg.get("residual"):
            residual += f" ({cfg.shortcut})"
        table.add_row(
            name, cfg.arch, str(cfg.depth), residual,
            f"{count_params(model) / 1e6:.3f}M", f"{count_macs(model) / 1e6:,.2f}M",
        )
    Console().print(table)


@app.command(help="Print the resexp version.")
def version() -> None:
    import torch

    print(f"resexp {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})")


if __name__ == "__main__":
    app()
