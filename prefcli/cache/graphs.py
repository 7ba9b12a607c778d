"""Stored dedup neighbour graphs: <cache>/dedup-graphs/<fingerprint>.parquet, one per (texts, model, search)
fingerprint, so a re-run at another threshold skips the neighbour search."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import pyarrow as pa

from .. import io
from ..errors import InputError

GRAPH_DIR = "dedup-graphs"
GRAPH_NAME = re.compile(r"^[0-9a-f]{32}\.parquet$")  # graphs are named by their fingerprint; anything else is not ours


def graph_path(cache_root: str | os.PathLike, fingerprint: str) -> Path:
    return Path(cache_root) / GRAPH_DIR / f"{fingerprint}.parquet"


def graph_source(explicit: str | None, cache_root: str | os.PathLike | None) -> Callable[[str], pa.Table | None]:
    """Callback for the dedup stage: fingerprint -> stored graph table (from --graph, else the cache), or None."""

    def find(fingerprint: str) -> pa.Table | None:
        for path in (explicit, cache_root and graph_path(cache_root, fingerprint)):
            if path and Path(path).is_file():
                try:
                    return io.read_table(path)
                except InputError:
                    continue  # an unreadable graph is only a missed shortcut: it is rebuilt
        return None

    return find


def stored_graphs(cache_root: Path) -> list[Path]:
    """The graph files under `cache_root`, sorted."""
    folder = cache_root / GRAPH_DIR
    return sorted(p for p in folder.glob("*.parquet") if GRAPH_NAME.match(p.name)) if folder.is_dir() else []
