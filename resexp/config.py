"""Compose run configs from the Hydra tree in configs/ and turn Hydra's errors into one line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resexp.errors import ConfigError
from resexp.schema import validate

GROUPS = ("model", "data", "optim", "trainer")


def config_dir() -> Path:
    """The config tree: shipped as resexp/configs when installed, ./configs in a checkout."""
    packaged = Path(__file__).resolve().parent / "configs"
    if (packaged / "train.yaml").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "configs"


def group_choices(group: str) -> list[str]:
    """Selectable options of a config group (files in configs/<group>, not its base/ parts)."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train") -> DictConfig:
    """Compose one run's config and validate it (resexp.schema); bad input is a one-line ConfigError."""
    overrides = list(overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = _compose_or_explain(config_name, overrides)
    validate(cfg)
    return cfg


def load_model_config(name: str) -> DictConfig:
    """The `model` section of a named model config, e.g. "resnet56"."""
    if name not in group_choices("model"):
        raise ConfigError(f"unknown model '{name}'; choose from: {', '.join(group_choices('model'))}")
    return compose([f"model={name}"]).model


def _compose_or_explain(config_name: str, overrides: list[str]) -> DictConfig:
    try:
        return hydra_compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as e:
        raise ConfigError(explain_missing(str(e))) from None
    except (HydraException, OmegaConfBaseException) as e:
        message = str(e)
    # The config with only the user's group choices tells which keys would have been valid.
    selections = [o for o in overrides if "." not in o.split("=", 1)[0]]
    try:
        reference = hydra_compose(config_name=config_name, overrides=selections)
    except (HydraException, OmegaConfBaseException):
        reference = None
    raise ConfigError(_explain(message, reference))


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


# Keys of a data section that say where the files are, not what they hold.
DATA_LOCATION_KEYS = ("root", "download")


def run_identity(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """What makes two configs the same run, so that one may resume the other's checkpoint:
    model, data (not where it lives), optimizer and schedule, seed and batch size.

    How a run executes (device, precision, graph capture, logging) and how long it trains
    (max_iters: a run may be extended) are not part of it; train records them per segment in
    summary.json. Reports group runs by this identity less the seed, plus max_iters."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return {
        "model": plain["model"],
        "data": {k: v for k, v in plain["data"].items() if k not in DATA_LOCATION_KEYS},
        "optim": plain["optim"],
        "seed": plain["seed"],
        "batch_size": plain["trainer"]["batch_size"],
    }


def identity_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two identities, as 'key (a here, b there)'."""
    flat_before, flat_after = flatten_keys(before), flatten_keys(after)
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
