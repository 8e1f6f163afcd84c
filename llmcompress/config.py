"""Typed, validated config dataclasses that round-trip through plain dicts (YAML)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError


@dataclass
class ConfigBase:
    """A dataclass built from a dict, rejecting unknown keys and values of the wrong type.

    Fields carry ``metadata={"help": ...}``; ``__post_init__`` validates values and
    raises :class:`ConfigError` naming the field and the allowed values.
    """

    # The name used in error messages ("method 'gptq'", "calibration").
    @classmethod
    def _label(cls) -> str:
        return cls.__name__

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None):
        """Build a config from a plain dict, rejecting unknown keys and wrong types."""
        data = dict(data or {})
        known = {f.name: f for f in fields(cls) if f.init}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown key '{unknown[0]}' in {cls._label()}; allowed keys: "
                f"{', '.join(sorted(known))}",
                key=unknown[0],
            )
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(k, v, hints.get(k)) for k, v in data.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (YAML-ready)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text, for docs and error messages."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def check_choice(key: str, value: Any, allowed) -> None:
    """Raise a ConfigError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(
            f"'{key}' must be one of {', '.join(map(repr, allowed))}; got {value!r}", key
        )


def check_range(key: str, value, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    """Raise a ConfigError unless lo <= value <= hi (open ends when asked)."""
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
        hi is not None and (value > hi or (hi_open and value == hi))
    )
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ConfigError(
            f"'{key}' must be in {left}{lo if lo is not None else '-inf'}, "
            f"{hi if hi is not None else 'inf'}{right}; got {value!r}",
            key,
        )


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a YAML value against a field's type hint (ints are accepted for floats)."""
    if hint is None or value is None:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"bad value for '{key}'", key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}", key)
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}", key)
        return value
    if origin is typing.Literal:
        check_choice(key, value, args)
        return value
    if hint in (int, float, str, bool):
        ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
        if not ok:
            raise ConfigError(
                f"'{key}' must be of type {hint.__name__}, got {value!r} ({type(value).__name__})",
                key,
            )
    return value
