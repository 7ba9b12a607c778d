"""Parquet in and out: zstd writes (whole tables or streamed through ParquetSink), and reads of pair
tables validated against the canonical schema, with one-line errors naming the file."""

from __future__ import annotations

import contextlib
import io as _io
import os
import re
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, SchemaError, exception_summary
from ..schema import validate
from .atomic import STDIO, atomic_path, remove_path, write_bytes, writing

BATCH_ROWS = 4096
ROW_GROUP_ROWS = 64 * 1024
ROW_GROUP_BYTES = 64 * 1024 * 1024  # ParquetSink also flushes at this much buffered data (long texts)


def parquet_file(source) -> pq.ParquetFile:
    """A Parquet file for reading in batches or row groups. Without pre-buffering: pyarrow's read cache keeps
    every row group read so far until the reader closes (streaming a 600 MB file held 650 MB; 80 without)."""
    return pq.ParquetFile(source, pre_buffer=False)


def _parquet_writer(sink, schema: pa.Schema, compression: str = "zstd") -> pq.ParquetWriter:
    return pq.ParquetWriter(sink, schema, compression=compression,
                            compression_level=3 if compression == "zstd" else None)


def write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write one Arrow table as zstd Parquet, atomically (or to stdout for `-`)."""
    if str(path) == STDIO:
        buffer = _io.BytesIO()
        _write_groups(table, buffer)
        write_bytes(buffer.getvalue(), STDIO)
        return
    with atomic_path(path) as tmp, writing(path):
        _write_groups(table, tmp)


def _write_groups(table: pa.Table, where) -> None:
    """Row groups of ROW_GROUP_ROWS, each written as one contiguous chunk: the bytes do not depend on how the
    table happens to be chunked (a whole table, or the same rows streamed block by block by write_tables)."""
    plain = _decoded(table.schema)
    with pq.ParquetWriter(where, plain, compression="zstd") as writer:
        _write_rows(writer, table, plain)


def _decoded(schema: pa.Schema) -> pa.Schema:
    """The schema with dictionary columns as their values: a dictionary kept in memory to share repeated values
    (e.g. the dedup graph's node keys) is written out decoded, a row group at a time, not once per row group."""
    fields = [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def _write_rows(writer: pq.ParquetWriter, table: pa.Table, plain: pa.Schema | None = None) -> None:
    plain = plain or table.schema
    if not table.num_rows:
        writer.write_table(table.cast(plain), row_group_size=ROW_GROUP_ROWS)
    for start in range(0, table.num_rows, ROW_GROUP_ROWS):
        group = table.slice(start, ROW_GROUP_ROWS).combine_chunks()
        writer.write_table(group.cast(plain) if group.schema != plain else group, row_group_size=ROW_GROUP_ROWS)


def write_tables(tables: Iterable[pa.Table], schema: pa.Schema, path: str | os.PathLike) -> None:
    """Write tables one after the other into one Parquet file at `path` (a staged temp: no rename here), in the
    same row groups and bytes as `write_table` of their concatenation."""
    pending: list[pa.Table] = []
    rows, written = 0, False
    plain = _decoded(schema)
    with pq.ParquetWriter(str(path), plain, compression="zstd") as writer:
        for table in tables:
            pending.append(table.cast(schema) if table.schema != schema else table)
            rows += table.num_rows
            if rows >= ROW_GROUP_ROWS:
                buffered = pa.concat_tables(pending)
                whole = rows - rows % ROW_GROUP_ROWS
                _write_rows(writer, buffered.slice(0, whole), plain)
                pending, rows, written = [buffered.slice(whole)], rows - whole, True
        if rows or not written:
            _write_rows(writer, pa.concat_tables(pending) if pending else schema.empty_table(), plain)


class ParquetSink:
    """Streaming atomic Parquet writer: `write(table)` many times, `commit()` once.

    Nothing is visible at `path` until commit; `abort()` (or an exception in a `with`) removes the temp.
    With `staged=TMP` it writes TMP and `commit()` only finishes the file: an OutputPlan renames it
    together with the command's other outputs. With `deliver`, stdout bytes are handed over at commit
    instead of written. An OSError while writing names `path` (exit 73 or 74).

    Row groups are encoded and compressed on a background thread (pyarrow releases the GIL there), one at a
    time and in order, while the caller prepares the next: the same bytes, with the second core put to work.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, *, keep_chunks: bool = False,
                 compression: str = "zstd", staged: Path | None = None, deliver=None):
        self.path = str(path)
        self.schema = schema
        self.keep_chunks = keep_chunks  # each write() is its own row group, so `iter_row_groups` gives it back
        self.rows = 0
        self._stdout = self.path == STDIO
        self._deliver = deliver
        self._buffer = _io.BytesIO() if self._stdout else None
        self._atomic = None if self._stdout or staged is not None else atomic_path(self.path)
        self._staged = staged
        with self._errors():
            target = self._buffer if self._stdout else (staged or self._atomic.__enter__())
            self._writer = _parquet_writer(target if self._stdout else str(target), schema, compression)
        self._pending: list[pa.Table] = []
        self._pending_rows = self._pending_bytes = 0
        self._encoder: ThreadPoolExecutor | None = None
        self._encoding: Future | None = None  # the row group being written, at most one

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            from ..errors import os_failure

            raise os_failure(exc, self.path) from None

    def write(self, table: pa.Table, *, nbytes: int | None = None) -> None:
        """Buffer `table`; `nbytes` is the size it counts for (default table.nbytes: a replay of
        recorded chunks passes the original sizes, so the row groups and the bytes come out the same)."""
        if table.num_rows == 0:
            return
        self._pending.append(table.cast(self.schema) if table.schema != self.schema else table)
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes if nbytes is None else nbytes
        self.rows += table.num_rows
        if self.keep_chunks or self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            group_rows = max(ROW_GROUP_ROWS, self._pending_rows) if self.keep_chunks else ROW_GROUP_ROWS
            group = pa.concat_tables(self._pending)
            self._pending, self._pending_rows, self._pending_bytes = [], 0, 0
            self._settle()
            if self._encoder is None:
                self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-sink")
            self._encoding = self._encoder.submit(self._writer.write_table, group, row_group_size=group_rows)

    def _settle(self) -> None:
        """Wait for the row group being written; its error is raised here."""
        if self._encoding is not None:
            encoding, self._encoding = self._encoding, None
            with self._errors():
                encoding.result()

    def _stop_encoder(self) -> None:
        if self._encoder is not None:
            self._encoder.shutdown(wait=True)
            self._encoder = None

    def commit(self) -> None:
        try:
            self._finish()
        except BaseException:
            self.abort()  # no temp left behind when the last writes fail (a full disk)
            raise

    def _finish(self) -> None:
        try:
            self._flush()
            self._settle()
        finally:
            self._stop_encoder()
        with self._errors():
            self._writer.close()
        if self._stdout:
            if self._deliver is not None:
                self._deliver(self._buffer.getvalue())
            else:
                write_bytes(self._buffer.getvalue(), STDIO)
        elif self._atomic is not None:
            atomic, self._atomic = self._atomic, None  # renamed, or its temp removed: nothing for abort
            with self._errors():
                atomic.__exit__(None, None, None)

    def abort(self) -> None:
        with contextlib.suppress(BaseException):
            self._settle()
        self._stop_encoder()
        with contextlib.suppress(Exception):
            self._writer.close()
        if self._atomic is not None:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
        elif self._staged is not None:
            remove_path(self._staged)

    def __enter__(self) -> "ParquetSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            with contextlib.suppress(BaseException):
                self.abort()
        return False


def _display_name(path: str | os.PathLike) -> str:
    return "<stdin>" if str(path) == STDIO else str(path)


def _parquet_source(path: str | os.PathLike):
    """A readable Parquet source for a path, or an in-memory buffer of stdin for `-`."""
    name = _display_name(path)
    if str(path) == STDIO:
        data = sys.stdin.buffer.read()
        if not data:
            raise InputError(f"{name}: empty input (expected Parquet)")
        return pa.BufferReader(data)
    if not Path(path).exists():
        raise InputError(f"{name}: no such file")
    if Path(path).is_dir():
        raise InputError(f"{name}: is a directory, expected a Parquet file")
    return str(path)


@contextlib.contextmanager
def _parquet_errors(path: str | os.PathLike) -> Iterator[None]:
    try:
        yield
    except InputError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{_display_name(path)}: not a readable Parquet file ({exception_summary(exc)})") from None


def read_table(path: str | os.PathLike, *, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file (or stdin for `-`) with a one-line error on failure. A directory of `*.parquet` part
    files (a Parquet dataset, as `--engine ray` and Spark write them) is read part by part in name order."""
    parts = dataset_parts(path)
    if parts:
        with _parquet_errors(path):
            tables = [pq.read_table(part, columns=columns) for part in parts]
            return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    with _parquet_errors(path):
        return pq.read_table(_parquet_source(path), columns=columns)


def dataset_parts(path: str | os.PathLike) -> list[str]:
    """The part files of a Parquet dataset directory, in name order (files starting with _ or . are metadata);
    [] for anything else."""
    if str(path) == STDIO or not Path(path).is_dir():
        return []
    return sorted(str(p) for p in Path(path).iterdir()
                  if p.is_file() and p.name.endswith(".parquet") and not p.name.startswith(("_", ".")))


def read_pairs(path: str | os.PathLike, *, require: dict[str, str] | None = None) -> pa.Table:
    """Read a pairs Parquet file and validate it against the canonical schema."""
    return validate(read_table(path), where=_display_name(path), require_stage=require)


def iter_pair_batches(path: str | os.PathLike, *, batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """Stream a pairs Parquet file (or stdin) as validated tables of at most `batch_rows` rows,
    so a reader never holds the whole file (e.g. `prefcli stats` on millions of pairs)."""
    name = _display_name(path)
    with _parquet_errors(path):
        source = parquet_file(_parquet_source(path))
        validate(source.schema_arrow.empty_table(), where=name)
        offset = 0
        for batch in source.iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            try:
                yield validate(table, where=name)
            except SchemaError as exc:  # re-number the row from the file's start
                raise SchemaError(_renumber(str(exc), offset)) from None
            offset += table.num_rows


def iter_row_groups(path: str | os.PathLike) -> Iterator[pa.Table]:
    """Each row group of a Parquet file as one table, in file order (one-line InputError if unreadable)."""
    with _parquet_errors(path):
        source = parquet_file(_parquet_source(path))
        for index in range(source.num_row_groups):
            yield source.read_row_group(index)


def _renumber(message: str, offset: int) -> str:
    return re.sub(r"row (\d+)", lambda m: f"row {int(m.group(1)) + offset}", message, count=1)


def parquet_rows(path: str | os.PathLike) -> int | None:
    """Row count from the Parquet footer (no data read); None when `path` is not Parquet."""
    try:
        return pq.read_metadata(path).num_rows
    except (pa.ArrowException, OSError, ValueError):
        return None


def parquet_columns(path: str | os.PathLike) -> list[str]:
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError, ValueError):
        return []


def take_rows(table: pa.Table, rows) -> pa.Table:
    """table.take(rows), each record batch giving its own rows: Arrow's take on a chunked column first
    concatenates every chunk (a copy of the whole column per call: 350 MB for a million responses)."""
    rows = np.asarray(rows, np.int64)
    batches = table.to_batches()  # zero-copy slices at the columns' chunk boundaries
    if len(batches) < 2 or not len(rows):
        return table.take(pa.array(rows))
    starts = np.cumsum([0] + [batch.num_rows for batch in batches])
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    if ordered[0] < 0 or ordered[-1] >= starts[-1]:
        raise IndexError(f"row {ordered[0] if ordered[0] < 0 else ordered[-1]} out of {starts[-1]} rows")
    pieces = [batch.take(pa.array(part - start))
              for batch, start, part in zip(batches, starts, np.split(ordered, np.searchsorted(ordered, starts[1:-1])))
              if len(part)]
    taken = pa.Table.from_batches(pieces, schema=table.schema).combine_chunks()
    return taken if np.all(order[1:] > order[:-1]) else taken.take(pa.array(np.argsort(order, kind="stable")))
