"""Validation of the typed configuration dataclasses: the base every config derives from.

A config is a `@dataclass` subclassing `Validated`. Building one (from code, a preset, `--set` overrides or a
saved `config.json`) checks every field against its annotation (`Literal` choices, tuples, numbers that must be
finite), the fields a subclass names as positive, non-negative or fractions, the upper bound of every size, and its own
rules across fields. A
bad value raises one `ValueError` naming the dotted key, the value and what is valid.

This module imports nothing else from otseg: it is the bottom of the configuration layer.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar, Literal

from otseg.errors import BadValueError

__all__ = ["Validated", "coerce_text", "field_hint", "strict_build"]


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = [repr(c) for c in typing.get_args(hint)]
        return " or ".join(choices) if len(choices) == 2 else "one of " + ", ".join(choices)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        inner = _type_name(args[0]) if args else "values"
        return f"a list of {inner}" + ("" if len(args) == 2 and args[1] is Ellipsis else f" ({len(args)} of them)")
    if hint is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` has the type `hint` (the subset of typing these configs use)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return True


class Validated:
    """Base of the typed configs: checks every field against its annotation when the dataclass is built (and
    again on `dataclasses.replace`); subclasses name their positive / non-negative / fraction fields and add rules
    across fields in `_check`."""

    _section: ClassVar[str] = ""  # dotted prefix of this config's keys in overrides ("vision.", ...)
    _positive: ClassVar[tuple[str, ...]] = ()  # fields that must be > 0
    _non_negative: ClassVar[tuple[str, ...]] = ()  # fields that must be >= 0
    _fractions: ClassVar[tuple[str, ...]] = ()  # fields that must lie in [0, 1)
    # Upper bounds of sizes (field -> largest value): every dimension a file can declare is bounded, so that no
    # config (a preset, `--set`, a config.json inside a downloaded folder) asks for unbounded memory or time.
    _at_most: ClassVar[dict[str, int]] = {}

    def _fail(self, name: str, value: Any, expected: str) -> ValueError:
        return BadValueError(f"config key {self._section}{name} = {value!r}: expected {expected}")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, list):  # JSON has no tuples
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            hint = hints[f.name]
            if not _matches(value, hint):
                raise self._fail(f.name, value, _type_name(hint))
        for name in self._positive:
            if getattr(self, name) <= 0:
                raise self._fail(name, getattr(self, name), "a positive number")
        for name in self._non_negative:
            if getattr(self, name) < 0:
                raise self._fail(name, getattr(self, name), "zero or more")
        for name in self._fractions:
            if not 0 <= getattr(self, name) < 1:
                raise self._fail(name, getattr(self, name), "a fraction in [0, 1)")
        for name, limit in self._at_most.items():
            if getattr(self, name) > limit:
                raise self._fail(name, getattr(self, name), f"at most {limit:,} (otseg's limit for this size)")
        self._check()

    def _check(self) -> None:
        """Rules across fields (overridden)."""


def strict_build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise BadValueError(f"unknown {where} config key(s) {unknown}; valid keys: {sorted(names)}")
    return cls(**values)


def field_hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def coerce_text(value: Any, current: Any, key: str, hint: Any = None) -> Any:
    """A command-line string -> the type of `current` (or of `hint`); other values are returned unchanged."""
    if not isinstance(value, str) or isinstance(current, str):
        return value
    literal = hint is not None and typing.get_origin(hint) is Literal
    if literal:
        return value
    try:
        if isinstance(current, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise BadValueError(value)
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, tuple):
            items = [v.strip() for v in value.split(",") if v.strip()]
            if current and isinstance(current[0], int):
                return tuple(int(v) for v in items)
            if current and isinstance(current[0], float):
                return tuple(float(v) for v in items)
            return tuple(items)
        if current is None:
            return None if value.lower() == "none" else value
    except ValueError:
        kind = "true or false" if isinstance(current, bool) else f"a {type(current).__name__}"
        raise BadValueError(f"config key {key} = {value!r}: expected {kind} (currently {current!r})") from None
    return value
