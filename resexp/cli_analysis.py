"""The `resexp` commands that read trained runs and show why residuals work (resexp/analysis/):
responses, lesion, landscape, eval and gradflow. resexp/cli.py takes them as root commands, so
they are `resexp responses ...` as every other command; each calls one function."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from resexp.cli_support import complete_overrides, error_boundary, wrote
from resexp.rundir import ANALYSIS_FOLDER

analysis_app = typer.Typer()  # only a list of commands: resexp/cli.py registers them on its app

RUNS = typer.Argument(..., help="run directories, or sweep directories (every trained run under them)")
LIMIT = typer.Option(None, "--limit", min=1, help="only the first N images of the evaluation split (default: all)",
                     show_default=False)
DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N")
UNFINISHED = typer.Option(False, "--unfinished", help="also analyse runs that have not finished (their last "
                          "checkpoint)")
ANALYSIS_OUT = typer.Option(None, "-o", "--out-dir", help="where the figure (PNG, PDF) and numbers go (default: "
                            "FIRST_PATH/analysis)", show_default=False)


def _analysis_dir(out: Optional[str], first: str) -> Path:
    return Path(out) if out is not None else Path(first) / ANALYSIS_FOLDER


@analysis_app.command(
    help="He et al.'s Figure 7: the std of each 3x3 conv's response (after BN, before the addition / ReLU) over "
    "the evaluation split, per layer in network order and sorted, one line per run. Example: resexp responses "
    "runs/sweeps/demo",
)
@error_boundary
def responses(paths: list[str] = RUNS, out: Optional[str] = ANALYSIS_OUT, limit: Optional[int] = LIMIT,
              device: str = DEVICE, unfinished: bool = UNFINISHED) -> None:
    from resexp.analysis.responses import responses as layer_responses

    wrote(layer_responses(paths, _analysis_dir(out, paths[0]), limit, device, unfinished))


@analysis_app.command(
    help="Veit et al.'s lesion study at test time: the error with each block deleted (its shortcut kept), with k "
    "random blocks deleted and with k random same-stage pairs swapped, several draws each. Plain nets get the same "
    "treatment. Example: resexp lesion runs/sweeps/demo/model=plain20 runs/sweeps/demo/model=resnet20",
)
@error_boundary
def lesion(paths: list[str] = RUNS, out: Optional[str] = ANALYSIS_OUT,
           ks: str = typer.Option("1,2,4,8", "--k", help="numbers of blocks deleted / pairs swapped, comma-separated"),
           draws: int = typer.Option(5, "--draws", min=1, help="random draws per k"),
           limit: Optional[int] = LIMIT, seed: int = typer.Option(0, "--seed", help="seed of the random draws"),
           device: str = DEVICE, unfinished: bool = UNFINISHED) -> None:
    from resexp.analysis.lesion import lesion as lesion_study, parse_counts

    wrote(lesion_study(paths, _analysis_dir(out, paths[0]), parse_counts(ks), draws, limit, device, seed,
                       unfinished))


@analysis_app.command(
    short_help="Loss landscape around the trained weights (Li et al. 2018), as contours, a surface or a line.",
    help="Loss landscape (Li et al. 2018): loss and error on a grid around the trained weights along random "
    "filter-normalised directions (BN and bias entries zeroed), with the run's BN statistics; contours and a 3-D "
    "surface (--dims 2) or a line (--dims 1), runs side by side. The grid is saved, so a re-plot with the same "
    "settings needs no re-evaluation. Example: resexp landscape runs/sweeps/demo/model=plain56 "
    "runs/sweeps/demo/model=resnet56 --grid 11 --limit 500",
)
@error_boundary
def landscape(paths: list[str] = RUNS, out: Optional[str] = ANALYSIS_OUT,
              grid: int = typer.Option(51, "--grid", help="points per axis (odd: the trained weights are the "
                                       "centre); 51 is Li et al.'s, 11-13 is enough for a coarse look on a CPU"),
              span: float = typer.Option(1.0, "--span", help="the grid covers [-span, span] per direction"),
              dims: int = typer.Option(2, "--dims", help="1 or 2 random directions"),
              limit: Optional[int] = LIMIT, seed: int = typer.Option(0, "--seed", help="seed of the directions"),
              force: bool = typer.Option(False, "--force", help="evaluate again even if a saved grid matches"),
              device: str = DEVICE, unfinished: bool = UNFINISHED) -> None:
    from resexp.analysis.landscape import landscape as loss_landscape

    wrote(loss_landscape(paths, _analysis_dir(out, paths[0]), grid, span, dims, limit, device, seed, unfinished,
                         force))


@analysis_app.command(
    name='eval',
    help="Test error and loss of a checkpoint, without training: a run's (resexp eval RUN), or published weights "
    "as a named model (resexp eval --weights resnet56-4bfd9763.th --from akamaster model=resnet56; data=cifar10 "
    "unless an override says otherwise). Writes nothing.",
)
@error_boundary
def evaluate(
    args: Optional[list[str]] = typer.Argument(None, help="a run directory, or (with --weights) overrides such as "
                                               "model=resnet56", show_default=False, autocompletion=complete_overrides),
    weights: Optional[str] = typer.Option(None, "--weights", help="a weights file from another codebase",
                                          show_default=False),
    source: str = typer.Option("akamaster", "--from", help="the weights file's codebase: akamaster "
                               "(akamaster/pytorch_resnet_cifar10's pretrained_models/*.th)"),
    limit: Optional[int] = LIMIT, device: str = DEVICE, unfinished: bool = UNFINISHED,
) -> None:
    from resexp.analysis.evaluation import eval_line

    print(eval_line(args or [], weights, source, device, unfinished, limit))


@analysis_app.command(
    help="Per-layer gradient norms of CIFAR CNNs (plain vs residual): at initialisation (the init the run had) and "
    "from the checkpoint, for runs; at initialisation for model names. With --shattered, also Balduzzi et al.'s "
    "shattered-gradients figure (dy/dx of deep plain vs residual nets over a 1-D input, and its autocorrelation). "
    "Example: resexp gradflow runs/plain56_synthetic_seed0 resnet56 data=synthetic --shattered",
)
@error_boundary
def gradflow(
    targets: Optional[list[str]] = typer.Argument(None, help="run directories or model names (plain56, resnet56, "
                                                  "...), and key=value overrides for the model names' data",
                                                  show_default=False, autocompletion=complete_overrides),
    out: Optional[str] = typer.Option(None, "-o", "--out-dir", help="where the figures (PNG, PDF) and numbers go "
                                      "(default: FIRST_RUN/analysis, or ./analysis)", show_default=False),
    batches: int = typer.Option(4, "--batches", min=1, help="training batches the norms are averaged over"),
    shattered: bool = typer.Option(False, "--shattered", help="also the shattered-gradients figure"),
    seed: int = typer.Option(0, "--seed", help="seed of the shattered-gradients nets"),
    device: str = DEVICE, unfinished: bool = UNFINISHED,
) -> None:
    from resexp.analysis.gradflow import run_gradflow

    wrote(run_gradflow(targets or [], out, batches, shattered, seed, device, unfinished))
