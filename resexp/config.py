"""Run configs, composed from the Hydra tree in configs/ and validated (resexp.schema) here and
nowhere else, right after composition: `compose` for one run (train, --cfg, notebooks) and
`run_config` for one job of a sweep (resexp's Hydra sweeper); `compose_with_hydra` gives Hydra's whole
node, unvalidated, for its sweep and launcher settings. Hydra's errors become one line;
`run_identity` says when two configs are the same run.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from resexp.errors import ConfigError, ResexpError
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
of a sweep quoted where `sweep`)."""
    if isinstance(error, MissingConfigException):
        return ConfigError(explain_missing(str(error)))
    message = str(error)
    swept = re.search(r"(?:Ambiguous value for argument|Sweep parameters) '([^']+)'", message)
    if swept:
        words = " ".join(shlex.quote(o) for o in overrides)
        return ConfigError(f"{swept.group(1)} is a sweep: run it with resexp sweep {words} (or resexp train -m "
                           f"{words}); a list is written key=[a,b]")
    unreadable = unreadable_override(overrides, sweep)
    if unreadable:
        return ConfigError(unreadable)
    selections = [o for o in overrides if "." not in o.split("=", 1)[0]]
    try:
        reference = compose_selections(selections)
    except (HydraException, OmegaConfBaseException):
        reference = None
    return ConfigError(_explain(message, reference))


def explain_missing(message: str) -> str:
    found = re.search(r"Could not find '([\w/]+)/([^']+)'", message)
    if not found:
        return message.splitlines()[0]
    group, option = found.groups()
    return f"unknown {group} '{option}'; choose from: {', '.join(group_choices(group))}"


def _explain(message: str, reference: DictConfig | None) -> str:
    unknown = re.search(r"Could not override '([\w.]+)'", message)
    if unknown:
        key = unknown.group(1)
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(reference, parent) if reference is not None and parent else reference
        valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
        hint = f"; valid keys{' in ' + parent if parent else ''}: {', '.join(valid)}" if valid else ""
        return f"unknown key '{key}'{hint}"
    first = message.strip().splitlines()[0]
    if "override" in message.lower() or "parsing" in first.lower():
        return f"{first} (overrides look like key=value, e.g. model=plain56 trainer.max_iters=2000)"
    return first


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


# Keys of a data section that say where the files are, not what they hold.
DATA_LOCATION_KEYS = ("root", "download")


def run_identity(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """What makes two configs the same run, so that one may resume the other's checkpoint:
    model, data (not where it lives), optimizer and schedule, seed and batch size.

    How a run executes (device, precision, graph capture, logging) and how long it trains
    (max_iters: a run may be extended) are not part of it; train records them per segment in
    summary.json. Reports group runs by this identity less the seed, plus max_iters."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return with_schema_defaults({
        "model": plain["model"],
        "data": {k: v for k, v in plain["data"].items() if k not in DATA_LOCATION_KEYS},
        "optim": plain["optim"],
        "seed": plain["seed"],
        "batch_size": plain["trainer"]["batch_size"],
    })


# The identity's sections whose schema may gain a key with a default.
DEFAULTED_SECTIONS = ("model", "data", "optim")


def with_schema_defaults(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity with the schema's default (resexp.schema) filled in for every key its model,
    data and optim sections lack. A key added to the schema later with a default (model.zero_pad)
    is absent from the config.yaml and checkpoints of the runs written before it; filled in, it
    equals the default, so those runs still resume and group with new runs that keep the default.
    run_identity and identity_changes apply it, so identities read back from a checkpoint get it too."""
    filled = dict(identity)
    for group in DEFAULTED_SECTIONS:
        section = identity.get(group)
        if isinstance(section, dict):
            filled[group] = {**section_defaults(group, section), **section}
    return filled


def identity_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two identities, as 'key (a here, b there)'."""
    flat_before, flat_after = (flatten_keys(with_schema_defaults(identity)) for identity in (before, after))
    return [f"{key} ({_show(flat_before.get(key, _ABSENT))} there, {_show(flat_after.get(key, _ABSENT))} here)"
            for key in sorted(flat_before.keys() | flat_after.keys()) if flat_before.get(key) != flat_after.get(key)]


def flatten_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_ABSENT = object()


def _show(value: Any) -> str:
    return "absent" if value is _ABSENT else json.dumps(value)
