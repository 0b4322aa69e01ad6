"""What every `resexp` command shares, so that resexp/cli.py only declares commands: usage errors
and command errors as one line and an exit code, and the shell completion of overrides."""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import typer
from omegaconf import OmegaConf
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from resexp.config import GROUPS, compose, group_choices
from resexp.errors import EXIT_INPUT, ResexpError, explain
from resexp.rundir import flatten_keys
from resexp.schema import key_choices

try:  # recent typer carries its own copy of click, whose errors are not click's
    from typer._click.exceptions import UsageError
except ImportError:
    from click.exceptions import UsageError


class OneLineUsage(TyperGroup):
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


def _fail(message: str, code: int = EXIT_INPUT) -> NoReturn:
    # The message is text, not markup: a path or 'resexp[app]' keeps its brackets.
    Console(stderr=True).print(f"resexp: [bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _debug() -> bool:
    return os.environ.get("RESEXP_DEBUG", "") not in ("", "0")


def error_boundary(command: Callable) -> Callable:
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


def wrote(paths: Iterable[Any]) -> None:
    """The last line of every command that writes files: what it wrote."""
    print("wrote " + ", ".join(map(str, paths)))


def given_on_command_line(ctx: typer.Context) -> set[str]:
    """The options the command line set, not left at their defaults."""
    # where a value came from (click's enum, or newer typers' copy of it), by the enum member's name
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}


def complete_overrides(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion (resexp --install-completion): group=option, keys, fixed-choice values.
    zsh and fish pass "model=res" whole; bash splits it at '=' (COMP_WORDBREAKS)."""
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


def complete_preset(ctx: typer.Context, incomplete: str) -> list[str]:
    presets = [name for name in group_choices("sweep") if name.startswith(incomplete)]
    return presets + complete_overrides(ctx, incomplete)


# hydra/launcher= choices: Hydra's own and its plugins', then resexp's configs/hydra/launcher.
LAUNCHER_PLUGINS = ("basic", "joblib", "submitit_local", "submitit_slurm")


def launcher_choices() -> list[str]:
    return [*LAUNCHER_PLUGINS, *group_choices("hydra/launcher")]


def complete_override(typed: list[str], incomplete: str) -> list[str]:
    """Shell completion of one override: group=option (the last item of a sweep a,b,c too),
    key=value where the schema has a fixed set of values, and the keys of the config that the
    group choices typed so far compose."""
    key, equals, value = incomplete.partition("=")
    if equals:
        choices = (launcher_choices() if key == "hydra/launcher" else
                   group_choices(key) if key in (*GROUPS, "sweep") else list(key_choices(key)))
        head, _, last = value.rpartition(",")
        prefix = f"{key}={head}," if head else f"{key}="
        return [prefix + choice for choice in choices if choice.startswith(last)]
    selections = [o for o in typed if o.partition("=")[0] in GROUPS and "," not in o]
    try:
        cfg = compose(selections)
    except ResexpError:
        cfg = compose()
    keys = [f"{group}=" for group in (*GROUPS, "sweep")] + ["hydra/launcher="]
    keys += [f"{k}=" for k in flatten_keys(OmegaConf.to_container(cfg))]
    return [k for k in keys if k.startswith(incomplete)]
