"""Dataclass configs read from YAML and overridden by command-line flags.

One dataclass per method; each field carries its help text in `metadata["help"]`. Unknown or
mistyped keys and values are reported with the file and field name, never silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from latentreason.errors import ConfigError


def field(default: Any = dataclasses.MISSING, help: str = "", **kw) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a help string (mutable defaults go through default_factory)."""
    if isinstance(default, (dict, list)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(underlying type, optional?) for annotations like `int | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value to the field's type; `where` names the field for the error."""
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: may not be empty (expected {getattr(base, '__name__', base)})")
    origin = typing.get_origin(base) or base
    if origin is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if origin in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value) if origin is float else int(str(value), 0)
        except ValueError:
            raise ConfigError(f"{where}: expected {origin.__name__}, got {value!r}") from None
        return number
    if origin is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
        if isinstance(value, bool):  # YAML reads `bf16: false` as a bool; keep its YAML spelling
            return "true" if value else "false"
        return str(value)
    if origin in (dict, list):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as err:
                raise ConfigError(f"{where}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(value, origin):
            raise ConfigError(f"{where}: expected a {origin.__name__}, got {value!r}")
        return value
    return value


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _checked(cls, values: dict, source: str) -> dict:
    """`values` coerced to `cls`'s field types; unknown keys rejected with a did-you-mean hint."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in types_:
            close = difflib.get_close_matches(key, types_, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: unknown field '{key}' for {cls.__name__}{hint}")
        kwargs[key] = coerce(value, types_[key], f"{source}, field '{key}'")
    return kwargs


def _construct(cls, kwargs: dict, source: str):
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{source}: {err}") from None


def from_dict(cls, values: dict, source: str = "config"):
    """Build `cls` from a mapping, rejecting unknown keys with a did-you-mean hint."""
    return _construct(cls, _checked(cls, values, source), source)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
    return data


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One `--field` flag per dataclass field, also spelt `--field-name` like the other commands' flags
    (values are parsed later against the field type)."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name
        if any(flag in a.option_strings for a in parser._actions):
            continue
        flags = dict.fromkeys([flag, flag.replace("_", "-")])  # one flag when the name has no '_'
        parser.add_argument(
            *flags, dest=f.name, default=argparse.SUPPRESS, metavar="VALUE", help=f.metadata.get("help", "")
        )


def load_config(cls, config_path: str | Path | None, overrides: dict[str, Any]):
    """YAML file (if any) then flag overrides; each checked against `cls` and blamed on its own source."""
    values = read_yaml(config_path) if config_path else {}
    values.pop("method", None)
    merged = {**_checked(cls, values, str(config_path)), **_checked(cls, overrides, "command line")}
    source = f"{config_path} and command line" if config_path and overrides else str(config_path or "command line")
    return _construct(cls, merged, source)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def seed_list(text: str, flag: str = "--seed") -> list[int]:
    """'42,1,2' -> [42, 1, 2]; anything else is a user mistake named in one line."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag}: expected whole numbers separated by commas, got {text!r}") from None
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"{flag}: {text!r} repeats a seed")
    return seeds


def yaml_mapping(text: str | None, flag: str) -> dict:
    """A flag's value read as a YAML mapping (--decoder-args, --latent-sampler-args); empty when not given."""
    return coerce(text, dict, flag) if text else {}
