"""The `resexp` command line: each command parses, composes a config and calls one function."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer
from rich.console import Console

from resexp import __version__
from resexp.cli_analysis import analysis_app
from resexp.cli_support import (
    OneLineUsage, complete_overrides, complete_preset, error_boundary, given_on_command_line, wrote,
)
from resexp.config import CFG_PARTS, GROUPS, compose, config_yaml, group_choices, refuse_repeated_keys
from resexp.errors import EXIT_INPUT, ConfigError
from resexp.model_config import PLACEMENTS

HELP = (
    "Reproduce the degradation problem of deep plain networks and how residual connections and norm placement fix "
    "it (He et al. 2015; Post-LN, Pre-LN, Sandwich, DeepNorm): train plain and residual nets, sweep them, and draw "
    "the paper's figures and tables from the logs.\n\n"
    "A first try, no download needed: resexp train model=resnet20 data=synthetic trainer.max_iters=200. "
    "The degradation demo (minutes on a CPU): resexp sweep demo. Every command: resexp COMMAND --help."
)
# Help texts are plain text: markup mode would swallow [app] in "pip install 'resexp[app]'".
app = typer.Typer(cls=OneLineUsage, no_args_is_help=True, help=HELP, pretty_exceptions_enable=False,
                  rich_markup_mode=None)

OVERRIDES = typer.Argument(None, help="Hydra overrides: key=value, group=option", show_default=False,
                           autocompletion=complete_overrides)


def _groups_help() -> str:
    lines = [f"{group}: {', '.join(group_choices(group))}" for group in GROUPS]
    return "\n\n".join(["Config groups and their choices (group=option):", *lines])


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show the full traceback of an error "
                                        "(same as RESEXP_DEBUG=1), for bug reports")) -> None:
    if debug:
        os.environ["RESEXP_DEBUG"] = "1"  # also reaches sweep jobs in other processes


@app.command(
    help="Train one run. Example: resexp train model=plain56 data=synthetic trainer.max_iters=2000\n\n"
    "With -m (--multirun), a sweep, exactly as resexp sweep runs it: resexp train -m model=plain20,resnet20\n\n"
    + _groups_help(),
)
@error_boundary
def train(
    overrides: Optional[list[str]] = OVERRIDES,
    multirun: bool = typer.Option(False, "-m", "--multirun", help="run the overrides as a sweep (Hydra's "
                                  "multirun), the same as resexp sweep OVERRIDES"),
    dry_run: bool = typer.Option(False, "--dry-run", help="with -m: list the runs and the launcher's settings, "
                                 "then exit without launching or writing (as resexp sweep --dry-run)"),
    cfg_part: Optional[str] = typer.Option(None, "--cfg", help="print the resolved config and exit, creating "
                                           "nothing: job (what the run uses, as config.yaml records it) or all "
                                           "(with the Hydra sweep and launcher settings)", show_default=False,
                                           autocompletion=lambda incomplete: [p for p in CFG_PARTS
                                                                              if p.startswith(incomplete)]),
) -> None:
    if multirun:
        if cfg_part is not None:
            raise ConfigError("--cfg prints one run's config; without -m: resexp train --cfg job OVERRIDES")
        _sweep(overrides or [], dry_run)
        return
    if dry_run:
        raise ConfigError("--dry-run lists a sweep's runs: resexp train -m OVERRIDES --dry-run (or resexp sweep)")
    refuse_repeated_keys(overrides or [])
    if cfg_part is not None:
        print(config_yaml(overrides or [], cfg_part), end="")
        return
    cfg = compose(overrides or [])  # a bad override is refused before torch is imported (a second or more)
    from resexp.engine.train import train as run_training

    summary = run_training(cfg)
    split, nan = summary.eval_split, float("nan")
    train_error, eval_error = summary.train_error, summary.error_on(split)
    print(f"{summary.model} on {summary.data}: {summary.status} at iteration {summary.iterations}, "
          f"train error {nan if train_error is None else train_error:.2f}%, {split} error "
          f"{nan if eval_error is None else eval_error:.2f}% -> {cfg.run.dir}")  # one line, also in a pipe


@app.command(
    help="Run a sweep: a preset from configs/sweep and/or Hydra multirun overrides.\n\n"
    "Examples: resexp sweep figure6 hydra/launcher=joblib;  "
    "resexp sweep model=plain20,plain56 seed=0,1,2 data=synthetic run.sweep=mine\n\n"
    f"Presets: {', '.join(group_choices('sweep'))}. Launchers (hydra/launcher=): basic (sequential), "
    "joblib (local processes; hydra.sweeper.runs_per_gpu=N, hydra.sweeper.cpu_runs=N), submitit_local, submitit_slurm, slurm "
    "(submitit_slurm with a GPU job's defaults).",
)
@error_boundary
def sweep(
    preset: Optional[str] = typer.Argument(None, help="a preset name, or the first override", show_default=False,
                                           autocompletion=complete_preset),
    overrides: Optional[list[str]] = OVERRIDES,
    dry_run: bool = typer.Option(False, "--dry-run", help="list the runs (start, resume at N, or skip), their "
                                 "directories and the launcher's settings, then exit without launching or writing"),
) -> None:
    from resexp.sweep.plan import with_preset

    _sweep(with_preset([*([preset] if preset is not None else []), *(overrides or [])]), dry_run)


def _sweep(overrides: list[str], dry_run: bool) -> None:
    """resexp sweep and resexp train -m: Hydra's multirun with resexp's sweeper (resexp/sweep/)."""
    from resexp.sweep.launch import multirun

    multirun(overrides, "dry_run" if dry_run else "launch")


# ---- reports of run and sweep directories (resexp/report/) ----

SWEEP_DIR = typer.Argument(..., help="a sweep directory (or any folder of run directories)")
KIND = "fig6 or norms: He et al. {}, or Transformer norm placements"  # REPORTS of resexp/kinds.py


@app.command(help="Draw Figure 6 (plain left, residual right; dashed = train, bold = test error) or, with "
             "--kind norms, the norm-placement figure (per placement: training loss, gradient norm per block "
             "at init, residual-stream norm per block; for a sweep over optim.lr also norms_lr.png, or "
             "<stem>_lr.png beside -o, final loss against lr per depth) from a sweep directory's TensorBoard logs. "
             "Writes PNG and PDF.")
@error_boundary
def figure(
    sweep_dir: str = SWEEP_DIR,
    out: Optional[str] = typer.Option(None, "-o", "--out",
                                      help="output file, or a folder to write figure6.png (norms.png) "
                                      "in (default SWEEP_DIR)"),
    kind: str = typer.Option("fig6", "--kind", help=KIND.format("Figure 6")),
    ylim: Optional[str] = typer.Option(None, "--ylim", help="LOW,HIGH error range (%) of every Figure 6 panel "
                                       "(default: each panel its own; the paper's 0,20 on CIFAR-10 where the "
                                       "curves end inside it)", show_default=False),
    log_y: bool = typer.Option(False, "--log-y", help="Figure 6's error on a log scale"),
) -> None:
    from resexp.kinds import report_figure

    wrote(report_figure(kind, sweep_dir, out, ylim, log_y))


@app.command(help="Table 6 from a sweep directory: model, depth, params, test error (best, mean ± std "
             "over seeds), final training error, and the paper's numbers on CIFAR-10. Writes .md and .csv. "
             "With --kind norms: one row per norm placement (diverged depths with and without warmup, "
             "errors per depth, residual-stream growth, smallest relative update, angular distance, "
             "skip-loss change), plus norms_runs.csv, and for a sweep over optim.lr norms_lr.md/.csv "
             "(final loss per placement, depth and lr).")
@error_boundary
def table(
    sweep_dir: str = SWEEP_DIR,
    out_dir: Optional[str] = typer.Option(None, "-o", "--out-dir", help="where table6.md/.csv (or "
                                          "norms_table.md/.csv and norms_runs.csv) go (default SWEEP_DIR)"),
    kind: str = typer.Option("fig6", "--kind", help=KIND.format("Table 6")),
) -> None:
    from resexp.kinds import report_table

    wrote(report_table(kind, sweep_dir, out_dir))


@app.command(help="Where each run of a run or sweep directory is: status, iteration / max, it/s, ETA, latest "
             "train and evaluation error, device, last update. Reads only the run directories' summary.json, so it "
             "works from a login node while the jobs run elsewhere. A rich table on a terminal, plain columns "
             "otherwise. Example: resexp status runs/sweeps/figure6 --watch")
@error_boundary
def status(
    directory: str = typer.Argument(..., help="a run directory, or a sweep directory (any folder of runs)"),
    watch: bool = typer.Option(False, "--watch", help="refresh until Ctrl-C"),
    interval: float = typer.Option(5.0, "--interval", min=0.5, help="seconds between refreshes with --watch"),
) -> None:
    from resexp.views.status import show_status

    show_status(directory, watch, interval)


@app.command(short_help="A reproduction report of a sweep: the paper's numbers beside ours, with verdicts.",
             help="A reproduction report of He et al. 2015 from a sweep directory, one Markdown file with its "
             "figures: Table 6 beside the paper's numbers (best (mean ± std, n seeds), the difference in standard "
             "errors, how the model was selected), Figure 6's two claims (plain nets degrade with depth, residual "
             "nets do not) each with a rank correlation, a permutation test, the deep-minus-shallow gap and a verdict in its setting, the recipe as run with "
             "every difference from the paper's, Figure 6 with seed bands, and the unfinished, failed, diverged "
             "and missing runs. Example: resexp report runs/sweeps/figure6_seeds")
@error_boundary
def report(
    sweep_dir: str = SWEEP_DIR,
    out_dir: Optional[str] = typer.Option(None, "-o", "--out-dir", help="where report.md and its figures go "
                                          "(default SWEEP_DIR/report)"),
) -> None:
    from resexp.report.reproduction import reproduction_report

    wrote(reproduction_report(sweep_dir, out_dir))


# ---- why residuals work: responses, lesion, landscape, eval, gradflow (resexp/cli_analysis.py) ----

# Root commands (`resexp lesion ...`) in this place of the listing, where an unnamed add_typer would put them last.
app.registered_commands += analysis_app.registered_commands


# ---- Transformer blocks, models and the Streamlit page ----

@app.command(help="One Transformer block on one vector, step by step: a linear sublayer G(x) = Wx + b "
             "(seeded W, b) and LayerNorms, under a norm placement. Prints each step and draws them as "
             "a bar chart. Example: resexp block --placement post --x 1,2,3,4")
@error_boundary
def block(
    placement: str = typer.Option("pre", "--placement", help=f"one of: {', '.join(PLACEMENTS)}"),
    dim: int = typer.Option(4, "--dim", help="size of the vector"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of W, b and x (default 42)", show_default=False),
    x: Optional[str] = typer.Option(None, "--x", help="the input vector instead of a random one, e.g. 1,2,3,4"),
    blocks: int = typer.Option(1, "--blocks", help="N, the model's depth: DeepNorm's α = (2N)^(1/4), and Mix-LN's "
                               "Post-LN share floor(0.25 N) (the block shown is block 1)"),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="PNG path (default block_PLACEMENT.png)"),
) -> None:
    from resexp.views.block import show_block

    wrote([show_block(placement, dim, seed, x, blocks, out)])


@app.command(name="app", help="A Streamlit page in the browser: the single-block view (resexp block, with "
             "sliders) and a run browser (Figure 6 / Table 6 or the norm-placement report of a sweep directory). "
             "Needs pip install 'resexp[app]'. Example: resexp app --port 8501")
@error_boundary
def app_command(
    port: int = typer.Option(8501, "--port", help="the port the page is served on (http://localhost:PORT)"),
) -> None:
    from resexp.app_launch import serve

    raise typer.Exit(serve(port))


@app.command(help="List every named model with its parameters and forward MACs per image.")
@error_boundary
def models() -> None:
    from resexp.views.models import model_table

    Console().print(model_table())


# ---- datasets (resexp/data/) ----

data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Stage the torchvision datasets (CIFAR-10, CIFAR-100, "
                       "Fashion-MNIST) under the data root (data.root, or RESEXP_DATA): download them where there is "
                       "internet (a login node), check them where training will read them.")
app.add_typer(data_app, name="data")
ROOT = typer.Option(None, "--root", help="the data root (default: data.root of the config, i.e. RESEXP_DATA or "
                    "~/.cache/resexp/data)", show_default=False)


@data_app.command("download", help="Download a dataset with torchvision (progress bar; md5-checked), extract "
                  "it and check it. Example: resexp data download cifar10")
@error_boundary
def data_download(name: str = typer.Argument(..., help="cifar10, cifar100 or fashion_mnist"),
                  root: Optional[str] = ROOT) -> None:
    from resexp.data.sources import download_dataset

    print(download_dataset(name, root))


@data_app.command("check", help="Check that a dataset (or, without NAME, each one) is present and whole under the "
                  "data root: md5 of every file torchvision lists, then image and label counts, shapes and label "
                  "ranges as training reads them. Exits 2 if a named dataset is not usable, or if any is corrupt.")
@error_boundary
def data_check(name: Optional[str] = typer.Argument(None, help="cifar10, cifar100 or fashion_mnist (default: all)",
                                                    show_default=False),
               root: Optional[str] = ROOT) -> None:
    from resexp.data.sources import check_datasets

    lines, passes = check_datasets(name, root)
    print("\n".join(lines))
    if not passes:
        raise typer.Exit(EXIT_INPUT)


# ---- speed ----

@app.command(
    help="Training speed of resexp's pipeline against the usual DataLoader + PIL recipe, same model, same "
    "device, one process: ms/step, images/s, their ratio, peak memory and the projected time of the "
    "paper's 64k iterations. Example: resexp bench model=resnet56 --iters 50. With --runs K: K runs of a "
    "sweep one after another, as K processes and in lock-step. With --sweep: the sweep itself, for a window "
    "of --seconds; its runs' speeds and the whole sweep's projected wall time. Example: resexp bench --sweep "
    "figure6 data=synthetic --seconds 150. Writes JSON and Markdown.",
)
@error_boundary
def bench(
    ctx: typer.Context,
    overrides: Optional[list[str]] = OVERRIDES,
    iters: int = typer.Option(30, "--iters", min=1, help="timed steps per pipeline and round"),
    repeats: int = typer.Option(3, "--repeats", min=1, help="rounds; each visits every pipeline in turn"),
    warmup: int = typer.Option(10, "--warmup", min=0, help="untimed steps first (CUDA-graph capture, compilation, "
                               "worker start-up)"),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="batch size (same as trainer.batch_size=N; "
                                        "default: the config's, 128)", show_default=False),
    out: str = typer.Option("results/bench", "-o", "--out", help="folder for the JSON and Markdown"),
    force: bool = typer.Option(False, "--force", help="replace a report of the same name"),
    reference: bool = typer.Option(True, help="also time the DataLoader reference recipe"),
    precisions: str = typer.Option("auto,fp32,bf16", help="resexp precisions to time, comma-separated; auto = "
                                   "what training picks on this device (repeats are timed once)"),
    runs: int = typer.Option(1, "--runs", min=1, help="K >= 2: time a sweep's K runs instead: one after another, "
                             "as K processes at once, and as K lock-step models in one process (in the "
                             "training precision; --precisions and --reference do not apply)"),
    sweep: bool = typer.Option(False, "--sweep", help="time a whole sweep instead: the overrides describe it (a "
                               "preset first, as resexp sweep takes them); resexp sweep runs in a temporary "
                               "run.root and is stopped with SIGTERM after --seconds. Only --seconds, --batch, "
                               "-o and --force apply"),
    seconds: float = typer.Option(120.0, "--seconds", min=1, help="with --sweep: how long the sweep runs"),
) -> None:
    from resexp.bench.command import run_bench

    text, paths = run_bench(overrides or [], iters=iters, repeats=repeats, warmup=warmup, batch=batch, out=out,
                            force=force, reference=reference, precisions=precisions, runs=runs, sweep=sweep,
                            seconds=seconds, given=given_on_command_line(ctx))
    print(text)
    wrote(paths)


@app.command(help="Print the resexp version.")
@error_boundary
def version() -> None:
    import torch

    print(f"resexp {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})")


if __name__ == "__main__":
    app()
