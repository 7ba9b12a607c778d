"""The local engine's streaming path: a stage that may run batch by batch in input order (`Stage.streams()`, e.g.
export) reads its Parquet input one batch at a time, runs on each, and spills its kept and set-aside rows to temp
Parquet files, from which the OutputPlan writes the real outputs block by block. Peak memory is a batch, not
the input. The outputs hold the same rows in the same order as a whole-table run (JSONL: the same bytes); the
set-aside file holds the same rows, grouped by reason within each batch instead of over the whole input.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .. import io
from ..result import StageResult, check_accounting
from ..stage import Context, Stage

STREAM_BATCH_ROWS = 16_384


class BatchInput:
    """A pairs Parquet file read batch by batch (validated per batch, rows named from the file's start)."""

    def __init__(self, path: str, rows: int, batch_rows: int = STREAM_BATCH_ROWS):
        self.path, self.num_rows, self.batch_rows = path, rows, batch_rows

    def batches(self) -> Iterator[pa.Table]:
        return io.iter_pair_batches(self.path, batch_rows=self.batch_rows)


def stream_input(stage: Stage, call) -> BatchInput | None:
    """The input as a BatchInput when the stage streams and reads a pairs Parquet file the default way."""
    found = large_parquet_input(stage, call) if stage.streams() else None
    if not found:
        return None
    check_required(stage, found[0])
    return BatchInput(*found, STREAM_BATCH_ROWS)


def check_required(stage: Stage, path: str) -> None:
    """The stage's required columns (`Stage.required_columns`) are in the file: else a one-line SchemaError
    before any work, as the whole-table read gives."""
    required = stage.required_columns()
    if required:
        from ..schema import validate

        validate(pq.read_schema(path).empty_table(), where=path, require_stage=required)


def large_parquet_input(stage: Stage, call) -> tuple[str, int] | None:
    """(path, rows) when the stage reads its rows from one local pairs Parquet file the default way, writes them
    in blocks, and the file holds more than one stream batch; None otherwise (small files are read whole)."""
    if (stage.input != "pairs" or type(stage).read is not Stage.read or not stage.takes_row_blocks()
            or not call.inputs):
        return None
    path = call.inputs[0]
    if path == io.STDIO or io.dataset_parts(path):
        return None
    rows = io.parquet_rows(path)
    if rows is None or rows <= STREAM_BATCH_ROWS:
        return None  # not Parquet (the reader gives the one-line error), or one batch: the whole-table path
    return path, rows


class SpilledRows:
    """Rows spilled to a temp Parquet file: `num_rows`, `schema`, `iter_tables()` (one row group at a time),
    `to_table()`. The temp directory goes when the object does."""

    def __init__(self, path: Path, rows: int, schema: pa.Schema, folder: "_Folder"):
        self.path, self.num_rows, self.schema, self._folder = path, rows, schema, folder

    @property
    def column_names(self) -> list[str]:
        return self.schema.names

    def iter_tables(self) -> Iterator[pa.Table]:
        source = io.parquet_file(self.path)
        for index in range(source.num_row_groups):
            yield source.read_row_group(index)

    def to_table(self) -> pa.Table:
        return pq.read_table(self.path)


class _Folder:
    """The temp directory of one stream's spill files, removed when the last SpilledRows using it is gone."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="prefcli-stream-"))
        self.remove = weakref.finalize(self, shutil.rmtree, self.path, True)


class _Spill:
    """One spill file, opened on the first batch with rows (its schema is that batch's)."""

    def __init__(self, folder: _Folder, name: str):
        self.folder, self.path, self.rows, self.writer, self.schema = folder, folder.path / name, 0, None, None

    def add(self, table: pa.Table | None) -> None:
        if table is None or not table.num_rows:
            return
        with self._errors():
            if self.writer is None:
                self.schema = table.schema
                self.writer = pq.ParquetWriter(str(self.path), self.schema, compression="lz4")
            self.writer.write_table(table.cast(self.schema) if table.schema != self.schema else table)
        self.rows += table.num_rows

    def close(self) -> SpilledRows | None:
        if self.writer is None:
            return None
        with self._errors():
            self.writer.close()
        return SpilledRows(self.path, self.rows, self.schema, self.folder)

    @contextlib.contextmanager
    def _errors(self):
        try:
            yield
        except OSError as exc:  # a full temp disk names the spill file (exit 73/74)
            from ..errors import os_failure

            raise os_failure(exc, f"temporary file {self.path}") from None


def run_streamed(stage: Stage, source: BatchInput, ctx: Context) -> StageResult:
    """`stage.run` on each batch of `source`, in order; every batch's accounting checked; one merged result whose
    rows are SpilledRows."""
    folder = _Folder()
    out, aside = _Spill(folder, "out.parquet"), _Spill(folder, "set_aside.parquet")
    results, empty_out = [], None
    stage.start_stream()
    try:
        if stage.has_first_pass():  # a first pass: what the batches need of the whole input
            with ctx.progress(f"{stage.name} (first pass)", total=source.num_rows) as advance:
                parts = []
                for batch in source.batches():
                    parts.append(stage.first_pass(batch, ctx))
                    advance(batch.num_rows)
            stage.prepare(pa.concat_tables(parts), ctx)
        with ctx.progress(stage.name, total=source.num_rows) as advance:
            for batch in source.batches():
                result = stage.run(batch, ctx)
                check_accounting(batch.num_rows, result, added=result.added)
                out.add(result.out)
                aside.add(result.set_aside)
                # the batch's rows are in the spill now; an empty table keeps their schema (a zero-row slice would
                # keep every buffer of the batch alive until the end: at 1M pairs, the whole output in memory)
                if result.out is not None:
                    result.out = result.out.schema.empty_table()
                    empty_out = result.out if empty_out is None else empty_out
                result.set_aside = None
                results.append(result)
                advance(batch.num_rows)
        kept, set_aside = out.close(), aside.close()
        merged = stage.merge_batches(pa.table({}), results, ctx)
    except BaseException:
        folder.remove()
        raise
    finally:
        stage.start_stream()  # no state left behind for a later call
    if merged.out is not None:
        merged.out = kept if kept is not None else empty_out
    merged.set_aside = set_aside
    return merged
