"""Config sections, checked with pydantic, and their violations as one line.

Each section of a run config (resexp.schema; the models' in resexp.model_config) is a Section:
only its keys, each of the exact kind its type says (Literal for a fixed set of choices), then
`relations` between keys. `rule` adds a range and the words that complete "KEY must be ...".
`check` raises every violation together as one ConfigError line naming the key, the bad value
and what is allowed. The sections of a group (model, data, optim) are told apart by their
first key, the tag (arch or name).
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import (BaseModel, ConfigDict, TypeAdapter, ValidationError, ValidatorFunctionWrapHandler, WrapValidator,
                      model_validator)
from pydantic_core import PydanticCustomError

from resexp.errors import ConfigError


def rule(allowed: str, check: Callable[[Any], bool] = lambda value: True) -> WrapValidator:
    """A field's value must have the field's type and pass `check`; `allowed` completes
    "KEY must be ..." for either failure. A null that the type allows is not checked."""
    def validate_value(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            value = handler(value)
        except ValidationError:
            raise PydanticCustomError("rule", "{allowed}", {"allowed": allowed}) from None
        if value is not None and not check(value):
            raise PydanticCustomError("rule", "{allowed}", {"allowed": allowed})
        return value
    return WrapValidator(validate_value)


PositiveInt = Annotated[int, rule("a positive integer", lambda v: v >= 1)]
NonNegativeInt = Annotated[int, rule("an integer >= 0", lambda v: v >= 0)]
Positive = Annotated[float, rule("a positive number", lambda v: v > 0)]
NonNegative = Annotated[float, rule("a number >= 0", lambda v: v >= 0)]
Label = Annotated[Optional[str], rule("a string or null")]


class Section(BaseModel):
    """A mapping of known keys, each of the exact kind its field says (no conversions)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="after")
    def _check_relations(self) -> Section:  # pydantic runs it once every field has passed
        problems = self.relations()
        if problems:
            raise PydanticCustomError("relation", "{problems}", {"problems": "; ".join(problems)})
        return self

    def relations(self) -> list[str]:
        return []


def check(cfg: DictConfig | Mapping[str, Any], section: Any, key: str = "") -> dict[str, Any]:
    """Check a config against a Section (or a tagged group of them), its keys named under `key`;
    raise one ConfigError listing every violation. Returns it as plain values, defaults filled in."""
    return _adapter(section).dump_python(parse(cfg, section, key))


def parse(cfg: DictConfig | Mapping[str, Any], section: Any, key: str = "") -> Any:
    """check's validation, returning the Section object itself (attributes, not string keys)."""
    plain = _plain(cfg)
    try:
        return _adapter(section).validate_python(plain)
    except ValidationError as error:
        bare = typing.get_args(section)[0] if typing.get_origin(section) is Annotated else section
        raise ConfigError("; ".join(_explain(e, bare, plain, key) for e in error.errors())) from None


@functools.cache
def _adapter(section: Any) -> TypeAdapter:
    return TypeAdapter(section)


def sections(hint: Any) -> list[type[Section]]:
    """The sections a field's type holds: a group's members, an optional section, the section itself."""
    return [m for m in typing.get_args(hint) or (hint,) if isinstance(m, type) and issubclass(m, Section)]


def by_tag(group: Any) -> tuple[str, dict[Any, type[Section]]]:
    """A group's tag (its sections' first key: arch or name) and its sections by the tag's values."""
    members = sections(group)
    tag = next(iter(members[0].model_fields))
    return tag, {value: m for m in members for value in typing.get_args(m.model_fields[tag].annotation)}


def _explain(error: Mapping[str, Any], hint: Any, value: Any, key: str) -> str:
    """One pydantic error as "KEY must be ...; got VALUE", or an unknown or missing key. Its loc
    names keys, and a group's member by its tag, which the key leaves out."""
    keys, section = [key] if key else [], None
    for part in error["loc"]:
        members = sections(hint)
        if len(members) > 1:
            hint = by_tag(hint)[1][part]
            continue
        section = members[0]
        keys.append(str(part))
        field = section.model_fields.get(part)
        hint, value = field and field.annotation, value.get(part) if isinstance(value, dict) else None
    key, kind = ".".join(keys), error["type"]
    if kind == "extra_forbidden":
        parent = key.rpartition(".")[0]
        return f"unknown key '{key}'; valid keys{' in ' + parent if parent else ''}: {', '.join(section.model_fields)}"
    if kind == "missing":
        return f"missing key '{key}'"
    if kind == "relation":
        return error["msg"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag, members = by_tag(hint)
        return f"{key}.{tag} must be one of {', '.join(map(str, members))}; got {value.get(tag)!r}"
    allowed = {"rule": error["msg"], "bool_type": "true or false", "model_type": "a mapping",
               "model_attributes_type": "a mapping",
               "literal_error": f"one of {', '.join(map(str, typing.get_args(hint)))}"}.get(kind, error["msg"])
    return f"{key} must be {allowed}; got {_show(error['input'])}"


def _plain(cfg: DictConfig | Mapping[str, Any]) -> Any:
    if isinstance(cfg, DictConfig):
        try:
            return OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as e:  # e.g. ${oc.env:X} without X set
            raise ConfigError(str(e).strip().splitlines()[0]) from None
    return dict(cfg)


def _show(value: Any) -> str:
    """A value as the command line writes it where that differs from Python's repr."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)
