"""Per-file memo for `prefcli ingest --cache-dir`: each raw file's parsed pairs, rejects and counts.

A cron refresh that adds one raw file parses only that file; every unchanged file is replayed from
its entry. Layout: <cache>/ingest-files/<key[:2]>/<key>/{pairs.parquet, rejects.parquet, entry.json},
written as a whole directory (atomic rename), so an entry is complete or absent.

The key covers the file's bytes and path, its `source` label, --format and every parsing option,
the pairs schema version, the prefcli version and the parser's own source code: a hit can only
give what parsing would. Each parsed chunk is kept as one row group together with the size the
output sink counted for it, so a replay feeds the sink exactly what parsing did and the output is
byte-identical to a cold ingest. A damaged or unreadable entry is a miss: the file is parsed again
and its entry rewritten. Failing to write an entry (disk full, read-only cache) only loses the memo.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from .. import __version__, io
from ..errors import CannotCreate, InputError, IOFailure
from ..formats import REJECTS_SCHEMA
from ..io import RawBatch
from ..schema import SCHEMA_VERSION, pair_schema
from ..stages.ingest import SourceIngest
from ..text import digest

DIR = "ingest-files"
ENTRY_FORMAT = "prefcli-ingest-cache/1"
ENTRY = "entry.json"
PARTS = {"pairs": pair_schema, "rejects": lambda: REJECTS_SCHEMA}  # part -> schema; file = <part>.parquet
PARSER_CODE = ("formats", "stages/ingest.py", "pairs.py", "text.py", "schema.py", "io")
CACHE_WRITE_ERRORS = (OSError, pa.ArrowException, CannotCreate, IOFailure)  # the sinks name their path
ENTRY_COMPRESSION = "lz4"  # ~2x the size of zstd, but written and replayed several times faster

Chunk = tuple[str, pa.Table, int]  # (part, table, size the output sink counts for it)


@lru_cache(maxsize=1)
def parser_digest() -> str:
    """Digest of the source files that decide how raw records become pairs (edits invalidate entries)."""
    package = Path(__file__).parent.parent
    files = sorted(p for name in PARSER_CODE for p in ((package / name).glob("*.py") if (package / name).is_dir()
                                                      else [package / name]))
    return digest("\n".join(f"{p.relative_to(package)}:{io.file_digest(p)}" for p in files))


class IngestCache:
    """Entries under `root`; `key()` is None for sources that cannot be fingerprinted (stdin, hf:)."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / DIR

    def key(self, job: SourceIngest) -> str | None:
        file = job.file
        if file == io.STDIO or file.startswith("hf:") or not Path(file).exists():
            return None
        material = {"format": ENTRY_FORMAT, "prefcli": __version__, "schema": SCHEMA_VERSION,
                    "parser": parser_digest(), "content": io.file_digest(file), "file": file,
                    "source": job.source, "fmt": job.fmt, "options": asdict(job.options)}
        return digest(json.dumps(material, sort_keys=True, ensure_ascii=False, default=str))

    def entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def load(self, key: str) -> dict | None:
        """The entry for `key` when it is complete and its files are intact, else None."""
        directory = self.entry_dir(key)
        try:
            entry = io.read_json(directory / ENTRY)
            if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT or entry.get("key") != key \
                    or not isinstance(entry.get("summary"), dict):
                return None
            for part in PARTS:
                sizes = entry[part]["nbytes"]
                if not (isinstance(sizes, list) and all(isinstance(n, int) for n in sizes)) \
                        or io.file_digest(directory / f"{part}.parquet") != entry[part]["digest"]:
                    return None
        except (InputError, KeyError, TypeError):
            return None
        with contextlib.suppress(OSError):  # last use, for `cache prune --older-than`; a read-only cache still works
            os.utime(directory / ENTRY)
        return entry

    def entries(self) -> list[tuple[Path, int, float]]:
        """(entry dir, bytes, last use as an mtime) for every complete entry."""
        out = []
        for marker in self.root.glob(f"??/*/{ENTRY}") if self.root.is_dir() else []:
            if not _ours(marker.parent):
                continue
            with contextlib.suppress(FileNotFoundError):
                size = sum(f.stat().st_size for f in marker.parent.iterdir())
                out.append((marker.parent, size, marker.stat().st_mtime))
        return out

    def prune(self, max_age_seconds: float | None, stale_seconds: float) -> tuple[int, int]:
        """Drop entries unused for `max_age_seconds` (None: keep all) and what killed writers left behind:
        hidden temp dirs and entries without `entry.json`, once older than `stale_seconds`. Returns
        (entries dropped, leftovers removed)."""
        now = time.time()
        old = [d for d, _, used in self.entries() if max_age_seconds is not None and used < now - max_age_seconds]
        for directory in old:
            io.remove_path(directory)
        leftovers = 0
        for shard in self.root.iterdir() if self.root.is_dir() else []:
            if not SHARD_NAME.match(shard.name):
                continue  # not prefcli's: a --cache-dir may hold other things
            for item in shard.iterdir() if shard.is_dir() else []:
                if not _ours(item):
                    continue
                incomplete = item.name.startswith(".") or not (item / ENTRY).exists()
                with contextlib.suppress(FileNotFoundError):
                    if incomplete and item.lstat().st_mtime < now - stale_seconds:
                        io.remove_path(item)
                        leftovers += 1
            with contextlib.suppress(OSError):
                shard.rmdir()  # only when empty
        return len(old), leftovers


SHARD_NAME = re.compile(r"^[0-9a-f]{2}$")
ENTRY_NAME = re.compile(r"^\.?[0-9a-f]{32}(\..+\.tmp)?$")  # an entry, or the temp dir of one being written


def _ours(item: Path) -> bool:
    """An entry folder by its names alone: a hex shard and a hex key (or that key's temp dir)."""
    return bool(SHARD_NAME.match(item.parent.name) and ENTRY_NAME.match(item.name)
                and item.name[1 if item.name.startswith(".") else 0:][:2] == item.parent.name)


class CachedSource:
    """One source's (part, table, nbytes) chunks: replayed from the cache on a hit, else parsed
    (and recorded when the source can be cached). `summary()` and `cached` once `chunks()` is done."""

    def __init__(self, job: SourceIngest, cache: IngestCache | None):
        self.job = job
        self.cache = cache
        self.key = cache.key(job) if cache is not None else None
        self.entry = cache.load(self.key) if self.key is not None else None
        self.cached = self.entry is not None

    def chunks(self, batches: Callable[[], Iterable[RawBatch]]) -> Iterator[Chunk]:
        if self.entry is not None:
            yield from self._replay()
            return
        recorder = _Recorder(self.cache.entry_dir(self.key)) if self.key is not None else None
        try:
            for pairs, rejects in self.job.run(batches()):
                for part, table in (("pairs", pairs), ("rejects", rejects)):
                    if table.num_rows:
                        if recorder is not None:
                            recorder.add(part, table)
                        yield part, table, table.nbytes
        except BaseException:
            if recorder is not None:
                recorder.abort()
            raise
        if recorder is not None:
            recorder.commit(self.key, self.job.summary())

    def _replay(self) -> Iterator[Chunk]:
        directory = self.cache.entry_dir(self.key)
        for part in PARTS:
            sizes = self.entry[part]["nbytes"]
            for table, size in zip(io.iter_row_groups(directory / f"{part}.parquet"), sizes, strict=True):
                yield part, table, size

    def summary(self) -> dict[str, Any]:
        return self.entry["summary"] if self.entry is not None else self.job.summary()


class _Recorder:
    """Writes one entry as parsing goes; any write failure drops the entry, never the ingest."""

    def __init__(self, directory: Path):
        self.sizes: dict[str, list[int]] = {part: [] for part in PARTS}
        self.sinks: dict[str, io.ParquetSink] = {}
        self._atomic = io.atomic_path(directory)
        try:
            self.work = self._atomic.__enter__()
            self.work.mkdir(parents=True)
            self.sinks = {part: io.ParquetSink(self.work / f"{part}.parquet", schema(), keep_chunks=True,
                                               compression=ENTRY_COMPRESSION) for part, schema in PARTS.items()}
        except CACHE_WRITE_ERRORS:
            self.abort()

    def add(self, part: str, table: pa.Table) -> None:
        if not self.sinks:
            return
        try:
            self.sinks[part].write(table)
            self.sizes[part].append(table.nbytes)
        except CACHE_WRITE_ERRORS:
            self.abort()

    def commit(self, key: str, summary: dict) -> None:
        if not self.sinks:
            return
        try:
            entry: dict[str, Any] = {"format": ENTRY_FORMAT, "key": key, "summary": summary}
            for part, sink in self.sinks.items():
                sink.commit()
                entry[part] = {"digest": io.file_digest(sink.path), "nbytes": self.sizes[part]}
            io.write_json(entry, self.work / ENTRY)
            self.sinks = {}
            self._atomic.__exit__(None, None, None)
        except (*CACHE_WRITE_ERRORS, InputError):
            self.abort()

    def abort(self) -> None:
        for sink in self.sinks.values():
            sink.abort()
        self.sinks = {}
        if self._atomic is not None:
            try:
                self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except (RuntimeError, *CACHE_WRITE_ERRORS):
                pass
            self._atomic = None
