"""Compose run configs from the Hydra tree in configs/ and turn Hydra's errors into one line."""

from __future__ import annotations

import re
from pathlib import Path
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
        raise ConfigError(_explain_missing(str(e))) from None
    except (HydraException, OmegaConfBaseException) as e:
        message = str(e)
    # The config with only the user's group choices tells which keys would have been valid.
    selections = [o for o in overrides if "." not in o.split("=", 1)[0]]
    try:
        reference = hydra_compose(config_name=config_name, overrides=selections)
    except (HydraException, OmegaConfBaseException):
        reference = None
    raise ConfigError(_explain(message, reference))


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
