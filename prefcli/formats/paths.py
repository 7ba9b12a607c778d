"""Field paths into raw records: `a.b`, `a.0.b`, `a[0].b`, `a[-1]`, with JSON- or Python-literal-encoded
strings decoded on the fly, so nested and stringly-typed layouts map without special cases."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

MISSING = object()
_TOKEN = re.compile(r"\[(-?\d+)\]|([^.\[\]]+)")


def split_path(path: str) -> list[str | int]:
    """`a.b[0].c` -> ['a', 'b', 0, 'c']; a bare integer segment (`a.0`) is an index too."""
    tokens: list[str | int] = []
    for index, name in _TOKEN.findall(path):
        if index:
            tokens.append(int(index))
        elif re.fullmatch(r"-?\d+", name):
            tokens.append(int(name))
        else:
            tokens.append(name)
    return tokens


def decode_text(value: Any) -> Any:
    """A string holding a JSON (or Python-literal) object or array, decoded; anything else unchanged."""
    if not isinstance(value, str):
        return value
    stripped = value.strip()
    if stripped[:1] not in ("[", "{"):
        return value
    try:
        return json.loads(stripped)
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        return ast.literal_eval(stripped)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return value


def get_path(record: Any, path: str | list) -> Any:
    """The value at `path`, or MISSING. Dict keys containing dots are matched greedily (longest first)."""
    tokens = split_path(path) if isinstance(path, str) else path
    node = record
    i = 0
    while i < len(tokens):
        node = decode_text(node)
        token = tokens[i]
        if isinstance(node, dict):
            for j in range(len(tokens), i, -1):  # longest dotted key first: {"a.b": ...}
                parts = tokens[i:j]
                if all(isinstance(p, str) for p in parts):
                    key = ".".join(parts)
                    if key in node:
                        node, i = node[key], j
                        break
            else:
                if isinstance(token, int) and str(token) in node:
                    node, i = node[str(token)], i + 1
                else:
                    return MISSING
        elif isinstance(node, (list, tuple)) and isinstance(token, int):
            if not -len(node) <= token < len(node):
                return MISSING
            node, i = node[token], i + 1
        else:
            return MISSING
    return node


def has_path(record: Any, path: str) -> bool:
    return get_path(record, path) is not MISSING
