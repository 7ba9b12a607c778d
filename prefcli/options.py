"""Comma-separated `key=value` option values (`--map`, `--thresholds`, the options of an `--rm` backend):
the one parser, and the one coercion of a value to the type of its default."""

from __future__ import annotations

from typing import Any, Sequence

from .errors import InputError

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


def parse_key_values(items: str | Sequence[str], where: str, *, empty_values: bool = True) -> dict[str, str]:
    """`a=1,b=x` (or its items, already split) -> {"a": "1", "b": "x"}: keys and values stripped, a repeated
    key's last value wins. An item without `=` or a key (or a value, unless `empty_values`) is a one-line
    InputError naming `where`."""
    if isinstance(items, str):
        items = items.split(",") if items else []
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or (not empty_values and not value.strip()):
            raise InputError(f"{where}: expected key=value, got '{item}'")
        out[key.strip()] = value.strip()
    return out


def coerce(value: str, default: Any, where: str, key: str) -> Any:
    """`value` as the type of `default`: a bool (true/false, 1/0, yes/no), an int, a float, else the text.
    A value that does not parse is a one-line InputError naming `where` and `key`."""
    try:
        if isinstance(default, bool):
            if value.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError(value)
            return value.lower() in TRUE_WORDS
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return value
    except ValueError:
        raise InputError(f"{where}: {key}={value!r} is not a valid {type(default).__name__}") from None
