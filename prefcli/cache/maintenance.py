"""What `prefcli cache info|prune` does: list a cache dir's vector namespaces, dedup graphs and ingest memo
entries, and trim them (drop unused entries, merge shards, remove what killed writers left)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from .graphs import GRAPH_DIR, stored_graphs
from .ingest import DIR as INGEST_DIR
from .ingest import IngestCache
from .vectors import STALE_TEMP_SECONDS, VectorStore, default_cache_dir, list_namespaces, remove_stale_temps

DAY = 86400.0
COLUMNS = ["namespace", "kind", "files", "entries", "bytes", "last_used_days_ago"]  # of each `cache_rows` row


def cache_root(cache_dir: str | None) -> Path:
    """The cache dir (--cache-dir, else the default); a path that is not a directory is an InputError."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    if root.exists() and not root.is_dir():
        raise InputError(f"--cache-dir {root}: not a directory")
    return root


def cache_rows(root: Path) -> list[list]:
    """One row (see COLUMNS) per vector namespace, one for the dedup graphs and one for the ingest memo."""
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
    graphs = stored_graphs(root)
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


def prune_cache(root: Path, older_than_days: float | None) -> dict[str, Any]:
    """Drop entries unused for `older_than_days` (None: keep all), merge each namespace's shards into one,
    remove stale temps; returns the counts and the bytes before and after."""
    before = sum(r[4] for r in cache_rows(root))
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
        if older_than_days is not None:
            dropped_entries += store.prune(older_than_days * DAY)
        store.compact()
    if older_than_days is not None:
        cutoff = time.time() - older_than_days * DAY
        for graph in stored_graphs(root):
            if graph.stat().st_mtime < cutoff:
                graph.unlink(missing_ok=True)
                dropped_graphs += 1
    ingest_dropped, ingest_leftovers = IngestCache(root).prune(
        None if older_than_days is None else older_than_days * DAY, STALE_TEMP_SECONDS)
    after = sum(r[4] for r in cache_rows(root))
    return {"entries_dropped": dropped_entries, "graphs_dropped": dropped_graphs,
            "ingest_files_dropped": ingest_dropped, "temps_removed": temps + ingest_leftovers,
            "bytes_before": before, "bytes_after": after}
