"""`prefcli cache info|prune`: inspect and trim the shared embedding/score cache, dedup graphs and ingest memo."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..cache.maintenance import COLUMNS, cache_root, cache_rows, prune_cache
from ..errors import InputError
from ..report import Table
from .common import CacheDir, Json, Quiet, handle_errors, number, reporter

ORDER = 90

app = typer.Typer(help="Inspect (info) or trim (prune) the on-disk embedding/score cache.", no_args_is_help=True,
                  add_completion=False, rich_markup_mode=None)


@app.command("info")
@handle_errors
def info(cache_dir: CacheDir = None, quiet: Quiet = False, json_mode: Json = False) -> None:
    """Show each cache namespace (one per model), its entries and size, and the stored dedup graphs."""
    root = cache_root(cache_dir)
    rows = cache_rows(root)
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
    root = cache_root(cache_dir)
    stats = {"cache_dir": str(root), **prune_cache(root, older_than)}
    reporter(quiet, json_mode).summary("cache prune", stats)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="cache")
