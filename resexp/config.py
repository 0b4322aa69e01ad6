"""Compose run configs from the Hydra tree in configs/ and turn Hydra's errors into one line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resexp.errors import ConfigError

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
    """Compose one run's config; raise ConfigError with a one-line message on bad overrides."""
    overrides = list(overrides)
    # Hydra accepts any scalar for any key: the config with only the user's group choices is
    # the reference for valid keys and value types.
    selections = [o for o in overrides if "." not in o.split("=", 1)[0]]
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        reference = _compose_or_explain(config_name, selections, None)
        cfg = _compose_or_explain(config_name, overrides, reference)
    _check_types(cfg, reference, overrides)
    return cfg


def load_model_config(name: str) -> DictConfig:
    """The `model` section of a named model config, e.g. "resnet56"."""
    if name not in group_choices("model"):
        raise ConfigError(f"unknown model '{name}'; choose from: {', '.join(group_choices('model'))}")
    return compose([f"model={name}"]).model


def _compose_or_explain(config_name: str, overrides: list[str], reference: DictConfig | None) -> DictConfig:
    try:
        return hydra_compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as e:
        raise ConfigError(_explain_missing(str(e))) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_explain(str(e), reference)) from None


def _explain_missing(message: str) -> str:
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


def _check_types(cfg: DictConfig, reference: DictConfig, overrides: list[str]) -> None:
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "." not in key:
            continue
        expected = OmegaConf.select(reference, key, default=None)
        got = OmegaConf.select(cfg, key, default=None)
        if expected is None or got is None:
            continue  # null defaults (e.g. optim.error_warmup) take any value
        if not _same_kind(expected, got):
            raise ConfigError(
                f"{key} must be {_kind_name(expected)} (default {_show(expected)}); got {_show(got)}"
            )


def _same_kind(expected: Any, got: Any) -> bool:
    if isinstance(expected, bool):
        return isinstance(got, bool)
    if isinstance(expected, int):
        return isinstance(got, int) and not isinstance(got, bool)
    if isinstance(expected, float):
        return isinstance(got, (int, float)) and not isinstance(got, bool)
    if isinstance(expected, (ListConfig, list)):
        return isinstance(got, (ListConfig, list))
    if isinstance(expected, (DictConfig, dict)):
        return isinstance(got, (DictConfig, dict))
    return isinstance(got, str)


def _kind_name(value: Any) -> str:
    for kind, name in ((bool, "true or false"), (int, "an integer"), (float, "a number"),
                       (ListConfig, "a list"), (DictConfig, "a mapping")):
        if isinstance(value, kind):
            return name
    return "a string"


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        return str(OmegaConf.to_container(value))
    return repr(value)
