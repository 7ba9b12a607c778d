"""`prefcli cache info|prune`: inspect and trim the shared embedding/score cache, dedup graphs and ingest memo."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from ..ingest_cache import DIR as INGEST_DIR
from ..ingest_cache import IngestCache
from ..models.cache import STALE_TEMP_SECONDS, VectorStore, default_cache_dir, list_namespaces, remove_stale_temps
from ..report import Table
from .common import CacheDir, Json, Quiet, handle_errors, number, reporter
from .dedup import GRAPH_DIR

ORDER = 90
GRAPH_NAME = re.compile(r"^[0-9a-f]{32}\.parquet$")
DAY = 86400.0

app = typer.Typer(help="Inspect (info) or trim (prune) the on-disk embedding/score cache.", no_args_is_help=True,
                  add_completion=False, rich_markup_mode=None)


def _root(cache_dir: str | None) -> Path:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    if root.exists() and not root.is_dir():
        raise InputError(f"--cache-dir {root}: not a directory")
    return root


def _graphs(root: Path) -> list[Path]:
    folder = root / GRAPH_DIR  # graphs are named by their 32-hex fingerprint; anything else is not ours
    return sorted(p for p in folder.glob("*.parquet") if GRAPH_NAME.match(p.name)) if folder.is_dir() else []


def _rows(root: Path) -> list[list]:
    rows = []
    for path in list_namespaces(root):
        if path.name in (GRAPH_DIR, INGEST_DIR):
            continue
        shards = sorted(path.glob("shard-*.npz"))
        info = VectorStore.at_path(path)
        entries = info.info().entries if info else 0
        last = max((s.stat().st_mtime for s in shards), default=None)
        rows.append([path.name, "vectors", len(shards), entries, sum(s.stat().st_size for s in shards),
                     _age_days(last)])
    graphs = _graphs(root)
    if graphs:
        rows.append([GRAPH_DIR, "dedup graphs", len(graphs), None, sum(g.stat().st_size for g in graphs),
                     _age_days(max(g.stat().st_mtime for g in graphs))])
    entries = IngestCache(root).entries()
    if entries:
        rows.append([INGEST_DIR, "ingest files", len(entries), len(entries), sum(e[1] for e in entries),
                     _age_days(max(e[2] for e in entries))])
    return rows


def _age_days(mtime: float | None) -> float | None:
    return None if mtime is None else round((time.time() - mtime) / DAY, 2)


COLUMNS = ["namespace", "kind", "files", "entries", "bytes", "last_used_days_ago"]


@app.command("info")
@handle_errors
def info(cache_dir: CacheDir = None, quiet: Quiet = False, json_mode: Json = False) -> None:
    """Show each cache namespace (one per model), its entries and size, and the stored dedup graphs."""
    root = _root(cache_dir)
    rows = _rows(root)
    stats = {"cache_dir": str(root), "namespaces": len(rows), "bytes": sum(r[4] for r in rows)}
    reporter(quiet, json_mode, tables_to_stdout=True).summary("cache", stats, [Table("namespaces", "cache", COLUMNS,
                                                                                     rows)])


@app.command("prune")
@handle_errors
def prune(cache_dir: CacheDir = None,
          older_than: Annotated[Optional[float], typer.Option(
              "--older-than", parser=number(float, 0.0),
                  help="Drop vector shards, graphs and ingest entries not used for this many days.")] = None,
          quiet: Quiet = False, json_mode: Json = False) -> None:
    """Drop entries unused for --older-than days, merge each namespace's shards into one, remove stale temps.

    Covers vector namespaces, dedup graphs and ingest's per-file memo (entries last replayed or written
    longer ago than --older-than; hidden temp dirs that killed writers left, after an hour)."""
    if older_than is not None and older_than < 0:
        raise InputError(f"--older-than: expected a number of days >= 0, got {older_than}")
    root = _root(cache_dir)
    before = sum(r[4] for r in _rows(root))
    dropped_entries = dropped_graphs = temps = 0
    for path in list_namespaces(root):
        if path.name == INGEST_DIR:
            continue
        store = VectorStore.at_path(path)
        if path.name == GRAPH_DIR:
            temps += remove_stale_temps(path)
            continue
        if store is None:
            continue  # not a vector namespace (a --cache-dir may hold other folders): never touched
        temps += remove_stale_temps(path)
        if older_than is not None:
            dropped_entries += store.prune(older_than * DAY)
        store.compact()
    if older_than is not None:
        cutoff = time.time() - older_than * DAY
        for graph in _graphs(root):
            if graph.stat().st_mtime < cutoff:
                graph.unlink(missing_ok=True)
                dropped_graphs += 1
    ingest_dropped, ingest_leftovers = IngestCache(root).prune(None if older_than is None else older_than * DAY,
                                                               STALE_TEMP_SECONDS)
    after = sum(r[4] for r in _rows(root))
    stats = {"cache_dir": str(root), "entries_dropped": dropped_entries, "graphs_dropped": dropped_graphs,
             "ingest_files_dropped": ingest_dropped, "temps_removed": temps + ingest_leftovers,
             "bytes_before": before, "bytes_after": after}
    reporter(quiet, json_mode).summary("cache prune", stats)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="cache")
