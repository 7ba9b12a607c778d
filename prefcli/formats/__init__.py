"""Ingest adapters: one module per raw layout, plus auto-detection (`detect.py`)."""

from __future__ import annotations

from ..errors import InputError
from .base import MAP_ROLES, Adapter, Collector, IngestOptions, REJECTS_SCHEMA
from .detect import detect_format
from .multi_response import MultiResponse
from .oasst import Oasst
from .pairs_passthrough import Pairs
from .pairwise import Pairwise
from .trl import HhRlhf, Trl
from .votes import Votes

ADAPTERS: dict[str, type[Adapter]] = {a.name: a for a in (HhRlhf, Trl, Pairwise, MultiResponse, Oasst, Votes, Pairs)}
FORMAT_NAMES = ("auto", *ADAPTERS)


def check_format(fmt: str) -> None:
    if fmt not in FORMAT_NAMES:
        raise InputError(f"--format: unknown format '{fmt}' (expected one of {', '.join(FORMAT_NAMES)})")


def make_adapter(fmt: str, options: IngestOptions, records: list[dict], file: str) -> Adapter:
    """The adapter for one source: `fmt`, or detected from its first records when 'auto'."""
    if fmt == "auto":
        fmt = detect_format(records, file, options.mapping)
    check_format(fmt)
    return ADAPTERS[fmt](options, records, file)


def parse_mapping(pairs: dict[str, str]) -> dict[str, str]:
    """Check `--map role=path` roles; one-line error naming an unknown role or an empty path."""
    for role, path in pairs.items():
        if role not in MAP_ROLES:
            raise InputError(f"--map: unknown field '{role}' (expected one of {', '.join(MAP_ROLES)})")
        if not path:
            raise InputError(f"--map: empty path for '{role}'")
    return dict(pairs)


__all__ = ["ADAPTERS", "FORMAT_NAMES", "Collector", "check_format", "IngestOptions", "REJECTS_SCHEMA", "detect_format",
           "make_adapter", "parse_mapping"]
