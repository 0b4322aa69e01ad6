"""Run configs, composed from the Hydra tree in configs/ and validated (resexp.schema) here and
nowhere else, right after composition: `compose` for one run (train, --cfg, notebooks) and
`run_config` for one job of a sweep (resexp's Hydra sweeper); `compose_with_hydra` gives Hydra's whole
node, unvalidated, for its sweep and launcher settings. Hydra's errors become one line, from its
exception types and their fields where it has them. What makes two configs the same run is the
run directory's (resexp.rundir.run_identity); shell completion is the CLI's (resexp.cli_support).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from resexp.errors import ConfigError
from resexp.schema import key_choices, section_defaults, validate

GROUPS = ("model", "data", "optim", "trainer")


def _store_model_defaults() -> None:
    """The defaults the models declare (resexp/model_config.py, through the schema) as Hydra's
    nodes model/code_defaults/<arch>, which each model config includes after its base YAML: the
    composed config has every key, no YAML file repeats a default. `name` is each config's own."""
    for arch in key_choices("model.arch"):
        defaults = section_defaults("model", {"arch": arch})
        del defaults["name"]
        ConfigStore.instance().store(group="model/code_defaults", name=arch, node=defaults)


_store_model_defaults()  # before any composition; Hydra's launchers hand the store on to their workers


def config_dir() -> Path:
    """The config tree: shipped as resexp/configs when installed, ./configs in a checkout."""
    packaged = Path(__file__).resolve().parent / "configs"
    if (packaged / "train.yaml").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "configs"


def group_choices(group: str) -> list[str]:
    """Selectable options of a config group (files in configs/<group>, not its base/ parts), numbers in
    names in numeric order: plain20 before plain110."""
    return sorted((p.stem for p in (config_dir() / group).glob("*.yaml")), key=natural_key)


def natural_key(name: str) -> tuple:
    """Sort key that compares the digit runs of a name as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train") -> DictConfig:
    """Compose one run's config and validate it (resexp.schema); bad input is a one-line ConfigError.
    train() and the analyses expect a config composed here, in a notebook too."""
    overrides = list(overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose_with_hydra(overrides, config_name, return_hydra_config=False)
    validate(cfg)
    return at_home(cfg)


def at_home(cfg: DictConfig) -> DictConfig:
    """The one rule for '~': at the start of run.root or run.dir it is the home folder, for train
    and sweep alike (run.dir follows run.root unless set itself)."""
    if "run" in cfg:
        cfg.run.root = str(Path(cfg.run.root).expanduser())
        if not OmegaConf.is_interpolation(cfg.run, "dir"):
            cfg.run.dir = str(Path(cfg.run.dir).expanduser())
    return cfg


CFG_PARTS = ("job", "all")  # `resexp train --cfg`, as Hydra's own --cfg names them


def config_yaml(overrides: list[str] | tuple[str, ...], part: str = "job") -> str:
    """The composed, validated and resolved config as YAML: "job" is what train would run (and
    write to config.yaml); "all" adds the Hydra settings a sweep uses (hydra.sweep.dir,
    .sweeper, .launcher). The rest of Hydra's node describes a Hydra-run process, which train is not."""
    if part not in CFG_PARTS:
        raise ConfigError(f"unknown --cfg '{part}'; choose from: {', '.join(CFG_PARTS)}")
    text = OmegaConf.to_yaml(compose(overrides), resolve=True)
    if part == "all":
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            full = compose_with_hydra(list(overrides))
            HydraConfig.instance().set_config(full)  # resolves ${hydra:job.override_dirname}
            hydra = {key: OmegaConf.to_container(full.hydra[key], resolve=True) for key in ("sweeper", "launcher")}
            # Not the run's sub-directory: resexp sweep names it by the swept keys (--dry-run shows it).
            hydra = {"sweep": {"dir": full.hydra.sweep.dir}, **hydra}
        text += OmegaConf.to_yaml({"hydra": hydra})
    return text


def load_model_config(name: str) -> DictConfig:
    """The `model` section of a named model config, e.g. "resnet56"."""
    if name not in group_choices("model"):
        raise ConfigError(f"unknown model '{name}'; choose from: {', '.join(group_choices('model'))}")
    return compose([f"model={name}"]).model


def sweep_at_home(master: DictConfig) -> None:
    """at_home's rule for a multirun's own config: '~' in hydra.sweep.dir is the home folder, for
    the launcher (which makes that folder) and, as an override every job is composed after
    (load_sweep_config), for each job."""
    sweep_dir = str(master.hydra.sweep.dir)
    home = str(Path(sweep_dir).expanduser())
    if home != sweep_dir:
        with read_write(master):
            master.hydra.sweep.dir = home
            master.hydra.overrides.hydra.append(f"hydra.sweep.dir={hydra_quote(home)}")


def run_config(cfg: DictConfig) -> DictConfig:
    """A sweep job's run config from the config Hydra composed for it (its HydraConfig set):
    run.dir its sub-directory of the sweep, the hydra node dropped, '~' the home folder, validated."""
    run_dir = Path(cfg.hydra.sweep.dir) / cfg.hydra.sweep.subdir
    cfg = cfg.copy()
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.run.dir = str(run_dir)
    validate(cfg)
    return at_home(cfg)


def compose_with_hydra(overrides: list[str], config_name: str = "train", return_hydra_config: bool = True) -> DictConfig:
    """Hydra's composition (inside initialize_config_dir), its errors as a one-line ConfigError;
    not validated: compose and run_config give the configs that runs read."""
    try:
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException) as error:
        raise hydra_error(error, overrides,
                          lambda selections: hydra_compose(config_name=config_name, overrides=selections)) from None


def hydra_error(error: Exception, overrides: list[str], compose_selections, sweep: bool = False) -> ConfigError:
    """A Hydra composition error as one line: an unknown group option names the choices, an
    unknown key the valid ones (from the config that `compose_selections` composes with only the
    group choices of `overrides`), an override outside Hydra's grammar how to write it (each value
    of a sweep quoted where `sweep`). Read from the error's type and fields; its text only for the
    first line where Hydra says no more."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return ConfigError(f"unknown {group} '{option}'; choose from: {', '.join(group_choices(group))}")
    swept = first_sweep(overrides)
    if swept is not None and not sweep and not isinstance(error, OverrideParseException):
        words = " ".join(shlex.quote(o) for o in overrides)
        return ConfigError(f"{swept} is a sweep: run it with resexp sweep {words} (or resexp train -m "
                           f"{words}); a list is written key=[a,b]")
    unreadable = unreadable_override(overrides, sweep)
    if unreadable:
        return ConfigError(unreadable)
    first = str(error).strip().splitlines()[0]
    cause = error.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:  # Could not override
        return ConfigError(unknown_key(cause.full_key, overrides, compose_selections))
    if isinstance(error, OverrideParseException) or "override" in str(error).lower():
        return ConfigError(f"{first} (overrides look like key=value, e.g. model=plain56 trainer.max_iters=2000)")
    return ConfigError(first)


def first_sweep(overrides: list[str]) -> str | None:
    """The first override that is a sweep (a,b or range(...)): Hydra refuses it in one run."""
    parser = OverridesParser.create()
    for override in overrides:
        try:
            if parser.parse_override(override).is_sweep_override():
                return override
        except HydraException:
            continue
    return None


def unknown_key(key: str, overrides: list[str], compose_selections) -> str:
    """'unknown key' with the keys valid beside it, in the config of the overrides' group choices."""
    selections = [o for o in overrides if "." not in o.split("=", 1)[0]]
    try:
        reference = compose_selections(selections)
    except (HydraException, OmegaConfBaseException):
        reference = None
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(reference, parent) if reference is not None and parent else reference
    valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
    hint = f"; valid keys{' in ' + parent if parent else ''}: {', '.join(valid)}" if valid else ""
    return f"unknown key '{key}'{hint}"


def unreadable_override(overrides: list[str], sweep: bool = False) -> str | None:
    """How to write the first override that Hydra's grammar cannot read, where that is known: a
    value with characters it reads only in quotes (run.name=é must be run.name='é'; each item
    quoted in a sweep), or a value the shell split at a space ("run.root=/tmp/a b" is one argument)."""
    parser = OverridesParser.create()
    for index, override in enumerate(overrides):
        try:
            parser.parse_override(override)
            continue
        except HydraException as error:
            reason = str(error)
        key, equals, value = override.partition("=")
        if not equals:
            previous = overrides[index - 1] if index else ""
            if "=" not in previous:
                return None
            joined = f"{previous} {override}"
            return (f"'{override}' is not an override (overrides look like key=value); if it belongs to "
                    f"{previous}, the shell split the value at a space: quote the whole argument, "
                    f"{shlex.quote(joined)}")
        # a[b, [1,2: quoting would hide the real mistake; [a,é]: the list's items want quotes, not the list
        if "token recognition error" not in reason or set(value) & set("[]{}()"):
            return None
        quoted = f"{key}={','.join(map(hydra_quote, value.split(',') if sweep else [value]))}"
        try:
            parser.parse_override(quoted)
        except HydraException:  # the key itself, say
            return None
        shell = f'"{quoted}"' if not set(quoted) & set('"$`\\!') else shlex.quote(quoted)
        return (f"cannot read override '{override}': outside quotes, Hydra's override grammar takes only ASCII "
                r"letters, digits, spaces and _-/\+.$%*@?| in a value; quote the value inside the argument: "
                f"{quoted} (in a shell: {shell})")
    return None


def refuse_repeated_keys(overrides: list[str]) -> None:
    """A key given twice on the command line: Hydra would keep the last silently (a sweep would
    run its values only), so it is refused. key, +key and ++key are one key."""
    first: dict[str, str] = {}
    for override in overrides:
        key, equals, value = override.partition("=")  # a key never holds '='
        key = key.strip().lstrip("+~")
        if key in first:
            raise ConfigError(f"{key} is given twice ({first[key]}, then {key}{equals}{value}); give each key once")
        first[key] = f"{key}{equals}{value}"


def hydra_quote(value: str) -> str:
    """A value as a Hydra quoted string: in single quotes, else double quotes, else escaped."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return "'" + value.replace("'", "\\'") + "'"
