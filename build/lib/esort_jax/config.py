"""Typed configuration: plain mappings (e.g. a Hydra DictConfig converted to a dict) into
frozen dataclasses, with errors that name the offending key.

The library only ever sees dataclasses. `from_dict(SomeConfig, mapping, where="data")` checks
that every key is a field (unknown keys are errors: they are usually typos), fills defaults,
recurses into nested dataclasses, coerces ints/floats/tuples, and finally calls the
dataclass's own `validate()` if it has one.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

__all__ = ["ConfigError", "from_dict", "to_dict", "require"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range. The message names the key."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError(f"{key}: {message}") unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def to_dict(config: Any) -> Any:
    """A dataclass (possibly nested) as plain dicts/lists, for JSON and hashing."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def from_dict(cls: type[T], mapping: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from `mapping`; errors name the dotted key (prefixed by `where`)."""
    mapping = {} if mapping is None else mapping
    if dataclasses.is_dataclass(mapping) and isinstance(mapping, cls):
        return mapping
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping; got {type(mapping).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(
            f"{_join(where, unknown[0])}: unknown key for {cls.__name__} "
            f"(known: {', '.join(sorted(fields))})"
        )
    values = {}
    for name, field in fields.items():
        key = _join(where, name)
        if name in mapping:
            values[name] = _coerce(hints[name], mapping[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required value is missing")
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate(where)
    return instance


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ConfigError(f"{key}: expected a list; got {value!r}")
        items = list(value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values; got {len(items)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, items)))
        item_hint = args[0] if args else Any
        coerced = [_coerce(item_hint, v, f"{key}[{i}]") for i, v in enumerate(items)]
        return tuple(coerced) if origin is tuple else coerced
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping; got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number; got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string; got {value!r}")
        return value
    return value
