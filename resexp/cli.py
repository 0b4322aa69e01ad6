"""The `resexp` command line: each command parses, composes a config and calls one function."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from resexp import __version__
from resexp.config import CFG_PARTS, GROUPS, compose, config_yaml, group_choices, refuse_repeated_keys
from resexp.errors import EXIT_INPUT, ResexpError, explain
from resexp.schema import PLACEMENTS

try:  # recent typer carries its own copy of click, whose errors are not click's
    from typer._click.exceptions import UsageError
except ImportError:
    from click.exceptions import UsageError


class _OneLineUsage(TyperGroup):
    """click's usage errors (an unknown command or option, an extra argument, a bad option value)
    end in the one line every resexp error is, naming what the command takes, not in a usage box.
    Subcommands parse inside the group's invoke, so the root group sees all of them."""

    def make_context(self, *args: Any, **kwargs: Any) -> typer.Context:
        with _usage_in_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: typer.Context) -> Any:
        with _usage_in_one_line():
            return super().invoke(ctx)


@contextlib.contextmanager
def _usage_in_one_line() -> Iterator[None]:
    try:
        yield
    except UsageError as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # a bare `resexp` or `resexp data`: the help, as asked
            raise
        _fail(_usage_line(error))


def _usage_line(error: UsageError) -> str:
    """click's message, then what the command takes: its arguments and options, or its commands.
    An extra key=value argument whose last part names an option is shown as that option."""
    message = error.format_message().rstrip(".")
    ctx = error.ctx
    if ctx is None:
        return message
    names, parent = [], ctx
    while parent.parent is not None:  # the root's name is the program's (or a test runner's)
        names.append(parent.info_name)
        parent = parent.parent
    path = " ".join(["resexp", *reversed(names)])
    where = f"{' '.join(reversed(names))}: " if names else ""
    command = ctx.command
    params = [p for p in command.params if p.name not in ("install_completion", "show_completion")]
    options = [max(p.opts, key=len) for p in params if p.param_type_name == "option"]
    extra = re.search(r"unexpected extra argument\S* \((.*)\)$", message)
    meant = []
    for argument in extra[1].split() if extra else []:  # data.root=/x where the command has --root
        key, equals, value = argument.partition("=")
        option = f"--{key.rpartition('.')[2].replace('_', '-')}"
        if equals and option in options:
            meant.append(f"{option} {value}")
    hint = f" (here that is {', '.join(meant)})" if meant else ""
    if hasattr(command, "list_commands"):  # a group
        takes = [f"a command ({', '.join(command.list_commands(ctx))})"]
    else:
        metavars = [_metavar(p) for p in params if p.param_type_name == "argument"]
        takes = [" ".join(metavars)] if metavars else []
    if options:
        takes.append(f"the option{'s' if len(options) > 1 else ''} {', '.join(options)}")
    return f"{where}{message[:1].lower()}{message[1:]}{hint}; it takes {' and '.join(takes)} (see {path} --help)"


def _metavar(argument: Any) -> str:
    """An argument as a usage line shows it: NAME, [NAME] if optional, NAME... if repeated."""
    name = f"{argument.name.upper()}{'...' if argument.nargs == -1 else ''}"
    return name if argument.required else f"[{name}]"


app = typer.Typer(cls=_OneLineUsage, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)


def _complete_override(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion (resexp --install-completion): group=option, keys, fixed-choice values.
    zsh and fish pass "model=res" whole; bash splits it at '=' (COMP_WORDBREAKS)."""
    from resexp.config import complete_override

    typed: list[str] = []
    for name in ("preset", "overrides"):  # the arguments before the word being completed
        value = ctx.params.get(name)
        typed += [value] if isinstance(value, str) else list(value or [])
    # bash completes the text after the '=' (readline breaks words there too): bare values.
    key = typed[-2] if typed[-1:] == ["="] and len(typed) >= 2 else None  # "key=val": "key", "=", "val"
    if typed and not incomplete and "=" not in typed[-1]:  # "key=": click drops the lone "="
        key = typed[-1]
    if key is not None:
        return [c.partition("=")[2] for c in complete_override(typed, f"{key}={incomplete}")]
    return complete_override(typed, incomplete)


def _complete_preset(ctx: typer.Context, incomplete: str) -> list[str]:
    presets = [name for name in group_choices("sweep") if name.startswith(incomplete)]
    return presets + _complete_override(ctx, incomplete)


OVERRIDES = typer.Argument(None, help="Hydra overrides: key=value, group=option", show_default=False,
                           autocompletion=_complete_override)
REPORT_KINDS = ("fig6", "norms")  # `figure` and `table`: He et al.'s Figure 6 / Table 6, or norm placements


def _groups_help() -> str:
    lines = [f"{group}: {', '.join(group_choices(group))}" for group in GROUPS]
    return "\n\n".join(["Config groups and their choices (group=option):", *lines])


def _fail(message: str, code: int = EXIT_INPUT) -> None:
    # The message is text, not markup: a path or 'resexp[app]' keeps its brackets.
    Console(stderr=True).print(f"resexp: [bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _debug() -> bool:
    return os.environ.get("RESEXP_DEBUG", "") not in ("", "0")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show the full traceback of an error "
                                        "(same as RESEXP_DEBUG=1), for bug reports")) -> None:
    if debug:
        os.environ["RESEXP_DEBUG"] = "1"  # also reaches sweep jobs in other processes


def _error_boundary(command: Callable) -> Callable:
    """Every error that ends a command becomes one line and an exit code (resexp.errors.explain):
    2 for bad input, missing or corrupt files and OS errors, 130 for Ctrl-C, 1 for a bug."""

    @functools.wraps(command)
    def guarded(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):  # SystemExit: 128 + signal after a checkpointed stop
            raise
        except BaseException as error:
            if _debug():
                raise
            code, message = explain(error)
            _fail(message, code)

    return guarded


@app.command(
    help="Train one run. Example: resexp train model=plain56 data=synthetic trainer.max_iters=2000\n\n"
    + _groups_help(),
)
@_error_boundary
def train(
    overrides: Optional[list[str]] = OVERRIDES,
    cfg_part: Optional[str] = typer.Option(None, "--cfg", help="print the resolved config and exit, creating "
                                           "nothing: job (what the run uses, as config.yaml records it) or all "
                                           "(with the Hydra sweep and launcher settings)", show_default=False,
                                           autocompletion=lambda incomplete: [p for p in CFG_PARTS
                                                                              if p.startswith(incomplete)]),
) -> None:
    refuse_repeated_keys(overrides or [])
    if cfg_part is not None:
        print(config_yaml(overrides or [], cfg_part), end="")
        return
    from resexp.engine.train import train as run_training  # torch import only when training

    cfg = compose(overrides or [])
    summary = run_training(cfg)
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
@_error_boundary
def sweep(
    preset: Optional[str] = typer.Argument(None, help="a preset name, or the first override", show_default=False,
                                           autocompletion=_complete_preset),
    overrides: Optional[list[str]] = OVERRIDES,
    dry_run: bool = typer.Option(False, "--dry-run", help="list the runs (start, resume at N, or skip), their "
                                 "directories and the launcher's settings, then exit without launching or writing"),
) -> None:
    from resexp.sweep.launch import run_sweep
    from resexp.sweep.plan import dry_run as plan_lines

    args = list(overrides or [])
    if preset is not None and "=" in preset:
        args.insert(0, preset)
    elif preset is not None:
        if preset not in group_choices("sweep"):
            _fail(f"unknown sweep preset '{preset}'; choose from: {', '.join(group_choices('sweep'))}")
        args.insert(0, f"sweep={preset}")
    if dry_run:
        print("\n".join(plan_lines(args)))
    else:
        run_sweep(args)


@app.command(help="Draw Figure 6 (plain left, residual right; dashed = train, bold = test error) or, with "
             "--kind norms, the norm-placement figure (per placement: training loss, gradient norm per block "
             "at init, residual-stream norm per block; for a sweep over optim.lr also norms_lr.png, or "
             "<stem>_lr.png beside -o, final loss against lr per depth) from a sweep directory's TensorBoard logs. "
             "Writes PNG and PDF.")
@_error_boundary
def figure(
    sweep_dir: str = typer.Argument(..., help="a sweep directory (or any folder of run directories)"),
    out: Optional[str] = typer.Option(None, "-o", "--out",
                                      help="output file (default SWEEP_DIR/figure6.png, or norms.png)"),
    kind: str = typer.Option("fig6", "--kind", help=f"{' or '.join(REPORT_KINDS)}: He et al. Figure 6, "
                             "or Transformer norm placements"),
    ylim: Optional[str] = typer.Option(None, "--ylim", help="LOW,HIGH error range (%) of every Figure 6 panel "
                                       "(default: each panel its own; the paper's 0,20 on CIFAR-10 where the "
                                       "curves end inside it)", show_default=False),
    log_y: bool = typer.Option(False, "--log-y", help="Figure 6's error on a log scale"),
) -> None:
    from pathlib import Path

    from resexp.report import figure6, lr_figure, norms_figure, varies_lr

    _check_kind(kind)
    limits = _parse_ylim(ylim) if ylim is not None else None
    if kind != "fig6" and (limits or log_y):
        raise ResexpError("--ylim and --log-y apply to --kind fig6")
    runs, _ = _scan_and_warn(sweep_dir)  # drawn without the unreadable ones
    if kind == "fig6":
        paths = figure6(runs, out or f"{sweep_dir}/figure6.png", limits, log_y)
    else:
        target = Path(out or f"{sweep_dir}/norms.png")
        paths = norms_figure(runs, target)
        if varies_lr(runs):  # a learning-rate sweep: final loss against lr beside it
            paths += lr_figure(runs, target.with_name(f"{target.stem}_lr{target.suffix}"))
    print("wrote " + ", ".join(map(str, paths)))


@app.command(help="Table 6 from a sweep directory: model, depth, params, test error (best, mean ± std "
             "over seeds), final training error, and the paper's numbers on CIFAR-10. Writes .md and .csv. "
             "With --kind norms: one row per norm placement (diverged depths with and without warmup, "
             "errors per depth, residual-stream growth, smallest relative update, angular distance, "
             "skip-loss change), plus norms_runs.csv, and for a sweep over optim.lr norms_lr.md/.csv "
             "(final loss per placement, depth and lr).")
@_error_boundary
def table(
    sweep_dir: str = typer.Argument(..., help="a sweep directory (or any folder of run directories)"),
    out_dir: Optional[str] = typer.Option(None, "-o", "--out-dir", help="where table6.md/.csv (or "
                                          "norms_table.md/.csv and norms_runs.csv) go (default SWEEP_DIR)"),
    kind: str = typer.Option("fig6", "--kind", help=f"{' or '.join(REPORT_KINDS)}: He et al. Table 6, "
                             "or Transformer norm placements"),
) -> None:
    from resexp.report import (
        lr_rows, norms_runs, norms_table, print_norms_table, print_table, table6, varies_lr, write_norms_table,
        write_table,
    )

    _check_kind(kind)
    runs, unreadable = _scan_and_warn(sweep_dir)  # the unreadable ones are listed under the table too
    if kind == "norms":
        rows = norms_table(runs)
        print_norms_table(rows, unreadable=unreadable)
        lrs = lr_rows(runs) if varies_lr(runs) else None
        paths = write_norms_table(rows, out_dir or sweep_dir, norms_runs(runs), unreadable, lrs)
    else:
        rows = table6(runs)
        print_table(rows, unreadable=unreadable)
        paths = write_table(rows, out_dir or sweep_dir, unreadable=unreadable)
    print("wrote " + ", ".join(map(str, paths)))


def _scan_and_warn(sweep_dir: str) -> tuple[list, list]:
    """The readable runs under sweep_dir and the unreadable ones, each of those a warning line."""
    from resexp.report import scan_runs

    runs, unreadable = scan_runs(sweep_dir)
    for run in unreadable:
        print(f"resexp: warning: {run}", file=sys.stderr)  # plain print: a path is not rich markup
    return runs, unreadable


def _parse_ylim(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ResexpError(f"--ylim takes LOW,HIGH in percent, e.g. 0,20; got '{text}'") from None
    if not 0 <= low < high:
        raise ResexpError(f"--ylim needs 0 <= LOW < HIGH; got '{text}'")
    return low, high


def _check_kind(kind: str) -> None:
    if kind not in REPORT_KINDS:
        _fail(f"unknown --kind '{kind}'; choose from: {', '.join(REPORT_KINDS)}")


@app.command(help="Where each run of a run or sweep directory is: status, iteration / max, it/s, ETA, latest "
             "train and evaluation error, device, last update. Reads only the run directories' summary.json, so it "
             "works from a login node while the jobs run elsewhere. A rich table on a terminal, plain columns "
             "otherwise. Example: resexp status runs/sweeps/figure6 --watch")
@_error_boundary
def status(
    directory: str = typer.Argument(..., help="a run directory, or a sweep directory (any folder of runs)"),
    watch: bool = typer.Option(False, "--watch", help="refresh until Ctrl-C"),
    interval: float = typer.Option(5.0, "--interval", min=0.5, help="seconds between refreshes with --watch"),
) -> None:
    import time
    from datetime import datetime, timezone
    from pathlib import Path

    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from resexp.report.status import run_statuses, status_notes, status_table, status_text

    console, root = Console(), Path(directory)

    def render():
        now = datetime.now(timezone.utc)
        statuses = run_statuses(root, now)
        if not console.is_terminal:
            return status_text(statuses, root, now)
        notes = [Text(line, style="dim") for line in status_notes(statuses, root)]
        return Group(status_table(statuses, root, now), *notes)

    view = render()  # a wrong directory fails here, before any refreshing
    if not watch:
        console.print(view, highlight=False, soft_wrap=True) if console.is_terminal else print(view)
        return
    try:
        if console.is_terminal:
            with Live(view, console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(render(), refresh=True)
        while True:  # a log file gets the table again at each refresh
            print(view, end="\n\n", flush=True)
            time.sleep(interval)
            view = render()
    except KeyboardInterrupt:  # the way to end --watch, not an error
        return


# ---- why residuals work: analyses of trained runs (resexp/analysis/) ----

RUNS = typer.Argument(..., help="run directories, or sweep directories (every trained run under them)")
LIMIT = typer.Option(None, "--limit", min=1, help="only the first N images of the evaluation split (default: all)",
                     show_default=False)
DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N")
UNFINISHED = typer.Option(False, "--unfinished", help="also analyse runs that have not finished (their last "
                          "checkpoint)")
ANALYSIS_OUT = typer.Option(None, "-o", "--out-dir", help="where the figure (PNG, PDF) and numbers go (default: "
                            "FIRST_PATH/analysis)", show_default=False)


def _analysis_dir(out: Optional[str], first: str):
    from pathlib import Path

    return Path(out) if out is not None else Path(first) / "analysis"


def _wrote(paths: list) -> None:
    print("wrote " + ", ".join(map(str, paths)))


@app.command(help="He et al.'s Figure 7: the std of each 3x3 conv's response (after BN, before the addition / "
             "ReLU) over the evaluation split, per layer in network order and sorted, one line per run. "
             "Example: resexp responses runs/sweeps/demo")
@_error_boundary
def responses(paths: list[str] = RUNS, out: Optional[str] = ANALYSIS_OUT, limit: Optional[int] = LIMIT,
              device: str = DEVICE, unfinished: bool = UNFINISHED) -> None:
    from resexp.analysis.responses import responses as layer_responses

    _wrote(layer_responses(paths, _analysis_dir(out, paths[0]), limit, device, unfinished))


@app.command(help="Veit et al.'s lesion study at test time: the error with each block deleted (its shortcut "
             "kept), with k random blocks deleted and with k random same-stage pairs swapped, several draws "
             "each. Plain nets get the same treatment. Example: resexp lesion runs/sweeps/demo/model=plain20 "
             "runs/sweeps/demo/model=resnet20")
@_error_boundary
def lesion(paths: list[str] = RUNS, out: Optional[str] = ANALYSIS_OUT,
           ks: str = typer.Option("1,2,4,8", "--k", help="numbers of blocks deleted / pairs swapped, comma-separated"),
           draws: int = typer.Option(5, "--draws", min=1, help="random draws per k"),
           limit: Optional[int] = LIMIT, seed: int = typer.Option(0, "--seed", help="seed of the random draws"),
           device: str = DEVICE, unfinished: bool = UNFINISHED) -> None:
    from resexp.analysis.lesion import lesion as lesion_study

    try:
        counts = sorted({int(k) for k in ks.split(",")})
    except ValueError:
        raise ResexpError(f"--k takes positive integers separated by commas, e.g. 1,2,4,8; got '{ks}'") from None
    if not counts or counts[0] < 1:
        raise ResexpError(f"--k takes positive integers separated by commas, e.g. 1,2,4,8; got '{ks}'")
    _wrote(lesion_study(paths, _analysis_dir(out, paths[0]), counts, draws, limit, device, seed, unfinished))


@app.command(help="Loss landscape (Li et al. 2018): loss and error on a grid around the trained weights along "
             "random filter-normalised directions (BN and bias entries zeroed), with the run's BN statistics; "
             "contours and a 3-D surface (--dims 2) or a line (--dims 1), runs side by side. The grid is saved, "
             "so a re-plot with the same settings needs no re-evaluation. Example: resexp landscape "
             "runs/sweeps/demo/model=plain56 runs/sweeps/demo/model=resnet56 --grid 11 --limit 500")
@_error_boundary
def landscape(paths: list[str] = RUNS, out: Optional[str] = ANALYSIS_OUT,
              grid: int = typer.Option(51, "--grid", help="points per axis (odd: the trained weights are the "
                                       "centre); 51 is Li et al.'s, 11-13 is enough for a coarse look on a CPU"),
              span: float = typer.Option(1.0, "--span", help="the grid covers [-span, span] per direction"),
              dims: int = typer.Option(2, "--dims", help="1 or 2 random directions"),
              limit: Optional[int] = LIMIT, seed: int = typer.Option(0, "--seed", help="seed of the directions"),
              force: bool = typer.Option(False, "--force", help="evaluate again even if a saved grid matches"),
              device: str = DEVICE, unfinished: bool = UNFINISHED) -> None:
    from resexp.analysis.landscape import landscape as loss_landscape

    _wrote(loss_landscape(paths, _analysis_dir(out, paths[0]), grid, span, dims, limit, device, seed, unfinished,
                          force))


@app.command(name="eval", help="Test error and loss of a checkpoint, without training: a run's (resexp eval RUN), or "
             "published weights as a named model (resexp eval --weights resnet56-4bfd9763.th --from akamaster "
             "model=resnet56; data=cifar10 unless an override says otherwise). Writes nothing.")
@_error_boundary
def evaluate(
    args: Optional[list[str]] = typer.Argument(None, help="a run directory, or (with --weights) overrides such as "
                                               "model=resnet56", show_default=False, autocompletion=_complete_override),
    weights: Optional[str] = typer.Option(None, "--weights", help="a weights file from another codebase",
                                          show_default=False),
    source: str = typer.Option("akamaster", "--from", help="the weights file's codebase: akamaster "
                               "(akamaster/pytorch_resnet_cifar10's pretrained_models/*.th)"),
    limit: Optional[int] = LIMIT, device: str = DEVICE, unfinished: bool = UNFINISHED,
) -> None:
    from pathlib import Path

    from resexp.analysis.evaluation import eval_run, eval_weights

    given = args or []
    if weights is not None:
        result = eval_weights(weights, source, given, device, limit)
        what = f"{result['weights']} ({result['source']}) as {result['model']}"
    else:
        if len(given) != 1 or not Path(given[0]).is_dir() and "=" in given[0]:  # sweep runs' names hold '='
            raise ResexpError("give one run directory (resexp eval RUN), or --weights FILE with model=NAME")
        result = eval_run(given[0], device, unfinished, limit)
        what = f"{result['run']} ({result['model']}, iteration {result['iteration']})"
    print(f"{what} on {result['data']} {result['split']} ({result['images']} images): "
          f"error {result['error']:.2f}%, loss {result['loss']:.4f}")


@app.command(help="Per-layer gradient norms of CIFAR CNNs (plain vs residual): at initialisation (the init the run "
             "had) and from the checkpoint, for runs; at initialisation for model names. With --shattered, also "
             "Balduzzi et al.'s shattered-gradients figure (dy/dx of deep plain vs residual nets over a 1-D input, "
             "and its autocorrelation). Example: resexp gradflow runs/plain56_synthetic_seed0 resnet56 "
             "data=synthetic --shattered")
@_error_boundary
def gradflow(
    targets: Optional[list[str]] = typer.Argument(None, help="run directories or model names (plain56, resnet56, "
                                                  "...), and key=value overrides for the model names' data",
                                                  show_default=False, autocompletion=_complete_override),
    out: Optional[str] = typer.Option(None, "-o", "--out-dir", help="where the figures (PNG, PDF) and numbers go "
                                      "(default: FIRST_RUN/analysis, or ./analysis)", show_default=False),
    batches: int = typer.Option(4, "--batches", min=1, help="training batches the norms are averaged over"),
    shattered: bool = typer.Option(False, "--shattered", help="also the shattered-gradients figure"),
    seed: int = typer.Option(0, "--seed", help="seed of the shattered-gradients nets"),
    device: str = DEVICE, unfinished: bool = UNFINISHED,
) -> None:
    from pathlib import Path

    from resexp.analysis import gradflow as flow

    given = targets or []
    is_override = [("=" in t and not Path(t).is_dir()) for t in given]  # sweep runs' directory names hold '='
    overrides = [t for t, o in zip(given, is_override) if o]
    names = [t for t, o in zip(given, is_override) if not o]
    if not names and not shattered:
        raise ResexpError("give run directories or model names (e.g. plain56 resnet56 data=synthetic), or --shattered")
    first_run = next((n for n in names if Path(n).is_dir()), None)
    out_dir = Path(out) if out is not None else Path(first_run) / "analysis" if first_run else Path("analysis")
    paths = flow.gradflow(names, out_dir, overrides, device, batches, unfinished) if names else []
    if shattered:
        paths += flow.shattered(out_dir, seed)
    _wrote(paths)


@app.command(help="One Transformer block on one vector, step by step: a linear sublayer G(x) = Wx + b "
             "(seeded W, b) and LayerNorms, under a norm placement. Prints each step and draws them as "
             "a bar chart. Example: resexp block --placement post --x 1,2,3,4")
@_error_boundary
def block(
    placement: str = typer.Option("pre", "--placement", help=f"one of: {', '.join(PLACEMENTS)}"),
    dim: int = typer.Option(4, "--dim", help="size of the vector"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of W, b and x (default 42)", show_default=False),
    x: Optional[str] = typer.Option(None, "--x", help="the input vector instead of a random one, e.g. 1,2,3,4"),
    blocks: int = typer.Option(1, "--blocks", help="N, the model's depth: DeepNorm's α = (2N)^(1/4), and Mix-LN's "
                               "Post-LN share floor(0.25 N) (the block shown is block 1)"),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="PNG path (default block_PLACEMENT.png)"),
) -> None:
    from resexp.report.block_view import block_steps, check_placement, draw_block, parse_vector, rule_text

    check_placement(placement)
    if seed is not None and x is not None:
        raise ResexpError("give --seed or --x, not both: --seed draws x at random, --x sets it")
    vector = parse_vector(x, dim) if x is not None else None
    steps = block_steps(placement, dim, seed if seed is not None else 42, vector, blocks)
    title = f"{placement}: x ← {rule_text(placement, blocks)}"
    table = Table("step", *(f"x[{i}]" for i in range(dim)), "‖·‖", title=title)
    for name, values in steps:
        table.add_row(name, *(f"{v:+.4f}" for v in values.tolist()), f"{values.norm():.4f}")
    Console().print(table)
    print(f"wrote {draw_block(steps, placement, out or f'block_{placement}.png', blocks)}")


@app.command(name="app", help="A Streamlit page in the browser: the single-block view (resexp block, with "
             "sliders) and a run browser (Figure 6 / Table 6 or the norm-placement report of a sweep directory). "
             "Needs pip install 'resexp[app]'. Example: resexp app --port 8501")
@_error_boundary
def app_command(
    port: int = typer.Option(8501, "--port", help="the port the page is served on (http://localhost:PORT)"),
) -> None:
    import importlib.util
    import signal
    import subprocess
    from pathlib import Path

    if importlib.util.find_spec("streamlit") is None:
        # \[ : _fail prints with rich markup, which would swallow a bare [app]
        raise ResexpError("resexp app needs Streamlit: pip install 'resexp[app]'")
    script = Path(__file__).with_name("app.py")
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
               "--server.port", str(port)]
    print(f"resexp: serving {script} on http://localhost:{port} (Ctrl-C stops it)", file=sys.stderr)
    process = subprocess.Popen(command)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        # From a terminal the server got the same SIGINT; otherwise pass it on. Then let it shut down.
        try:
            code = process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)


data_app = typer.Typer(no_args_is_help=True, help="Stage the torchvision datasets (CIFAR-10, CIFAR-100, "
                       "Fashion-MNIST) under the data root (data.root, or RESEXP_DATA): download them where there is "
                       "internet (a login node), check them where training will read them.")
app.add_typer(data_app, name="data")
ROOT = typer.Option(None, "--root", help="the data root (default: data.root of the config, i.e. RESEXP_DATA or "
                    "~/.cache/resexp/data)", show_default=False)


def _data_root(name: str, root: Optional[str]):
    from pathlib import Path

    from resexp.data.sources import data_root

    return Path(root).expanduser() if root is not None else data_root(compose([f"data={name}"]).data)


@data_app.command("download", help="Download a dataset with torchvision (progress bar; md5-checked), extract "
                  "it and check it. Example: resexp data download cifar10")
@_error_boundary
def data_download(
    name: str = typer.Argument(..., help="cifar10, cifar100 or fashion_mnist"),
    root: Optional[str] = ROOT,
) -> None:
    from resexp.data.sources import check_dataset
    from resexp.data.staging import dataset_files, stage

    spec = dataset_files(name)
    where = _data_root(name, root)
    stage(spec, where, allow_download=True)  # a DataError says what is missing and why
    result = check_dataset(name, where)
    if result.state != "ok":
        raise ResexpError(f"{name} in {result.folder} is {result.state} after the download: {result.detail}")
    print(f"{name}: ok, {result.detail}, in {result.folder}")


@data_app.command("check", help="Check that a dataset (or, without NAME, each one) is present and whole under the "
                  "data root: md5 of every file torchvision lists, then image and label counts, shapes and label "
                  "ranges as training reads them. Exits 2 if a named dataset is not usable, or if any is corrupt.")
@_error_boundary
def data_check(
    name: Optional[str] = typer.Argument(None, help="cifar10, cifar100 or fashion_mnist (default: all)",
                                         show_default=False),
    root: Optional[str] = ROOT,
) -> None:
    from resexp.data.sources import check_dataset
    from resexp.data.staging import DOWNLOADABLE, dataset_files

    names = list(DOWNLOADABLE) if name is None else [dataset_files(name).name]
    results = [check_dataset(n, _data_root(n, root)) for n in names]
    width = max(len(n) for n in names)
    for result in results:
        fix = f"; resexp data download {result.name}" if result.state == "missing" else ""
        print(f"{result.name:<{width}}  {result.state:<7}  {result.detail}{fix}"
              + (f"  ({result.folder})" if result.state == "ok" else ""))
    bad = [r for r in results if r.state == "corrupt" or (name is not None and r.state != "ok")]
    if bad:
        raise typer.Exit(EXIT_INPUT)


@app.command(help="List every named model with its parameters and forward MACs per image.")
@_error_boundary
def models() -> None:
    from resexp.models import build_model, count_macs, count_params

    table = Table("model", "arch", "depth", "residual", "params", "MACs / image")
    for name in group_choices("model"):
        cfg = compose([f"model={name}"]).model
        model = build_model(cfg)
        residual = str(cfg.get("residual", "-"))
        # The detail that matters per arch: the ResNet shortcut option, the ViT norm placement.
        detail = cfg.get("shortcut") if cfg.get("residual") else None
        detail = cfg.get("norm_placement", detail)
        if detail:
            residual += f" ({detail})"
        table.add_row(
            name, cfg.arch, str(cfg.depth), residual,
            f"{count_params(model) / 1e6:.3f}M", f"{count_macs(model) / 1e6:,.2f}M",
        )
    Console().print(table)


@app.command(
    help="Training speed of resexp's pipeline against the usual DataLoader + PIL recipe, same model, same "
    "device, one process: ms/step, images/s, their ratio, peak memory and the projected time of the "
    "paper's 64k iterations. Example: resexp bench model=resnet56 --iters 50. With --runs K: K runs of a "
    "sweep one after another, as K processes and in lock-step. With --sweep: the sweep itself, for a window "
    "of --seconds; its runs' speeds and the whole sweep's projected wall time. Example: resexp bench --sweep "
    "figure6 data=synthetic --seconds 150. Writes JSON and Markdown.",
)
@_error_boundary
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
    from pathlib import Path
    from tempfile import TemporaryDirectory

    from resexp.bench import runs as runs_bench, single, sweep as sweep_bench
    from resexp.bench.report import check_not_written, report_stem, write_report
    from resexp.engine.runtime import explain_compile_errors

    words = [*(overrides or []), *([f"trainer.batch_size={batch}"] if batch is not None else [])]
    other_mode = ("iters", "repeats", "warmup", "precisions", "reference", "runs") if sweep else ("seconds",)
    # where a value came from (click's enum, or newer typers' copy of it): only the command line's are refused
    misplaced = [name for name in other_mode if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"]
    if misplaced:
        raise ResexpError(f"--{misplaced[0]} does not apply {'to --sweep' if sweep else 'without --sweep'}")
    if sweep:
        with TemporaryDirectory(prefix="resexp-bench-sweep-") as root:
            target = sweep_bench.plan_target(words, Path(root))
            stem = sweep_bench.sweep_stem(Path(out), target.plan)
            check_not_written(stem, force)
            report = sweep_bench.bench_sweep(target, seconds)
        text, headline = sweep_bench.markdown(report), sweep_bench.headline(report)
    else:
        cfg = compose(words)
        stem = report_stem(Path(out), cfg, runs)
        check_not_written(stem, force)
        with explain_compile_errors():
            if runs > 1:
                report = runs_bench.bench_runs(cfg, runs, iters, warmup, repeats)
                text, headline = runs_bench.markdown(report), None
            else:
                report = single.bench_single(cfg, iters, warmup, repeats, reference,
                                             [p for p in precisions.split(",") if p])
                text, headline = single.markdown(report), single.ratio_line(report)
    paths = write_report(stem, report, text)
    print(text)
    if headline:
        print(headline)
    print("wrote " + ", ".join(map(str, paths)))


@app.command(help="Print the resexp version.")
@_error_boundary
def version() -> None:
    import torch

    print(f"resexp {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})")


if __name__ == "__main__":
    app()
