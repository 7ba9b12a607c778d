"""The local engine's column projection: a whole-table stage whose global step needs only a few columns
(`Stage.columns_needed`, e.g. dedup: the texts it compares, pair_id and the keep columns) is handed just those,
plus a row number; its kept and set-aside rows get the input's other columns back, from the input file, a
block at a time, when they are written. Peak memory is the needed columns, not the input. The input is read
and validated batch by batch first, so a bad row fails the command before any work, as in a whole-table read;
the rows written are the rows, columns and order a whole-table run gives.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from .. import io
from ..stage import Stage
from . import stream

ROW = "__prefcli_row"  # the input row number a projected table carries through the stage


class ProjectedInput:
    """The needed columns of a pairs Parquet file (validated), with each row's number in ROW."""

    def __init__(self, path: str, table: pa.Table, schema: pa.Schema):
        self.path, self.table, self.schema = path, table, schema  # schema: the validated input's, every column
        self.num_rows = table.num_rows

    def take(self, indices) -> "ProjectedInput":
        return ProjectedInput(self.path, io.take_rows(self.table, indices), self.schema)


def project_input(stage: Stage, call) -> ProjectedInput | None:
    """The input as a ProjectedInput when the stage names the columns it needs and reads one pairs Parquet file
    the default way; None otherwise (small files too: they are read whole)."""
    found = stream.large_parquet_input(stage, call)
    wanted = stage.columns_needed(call.ctx) if found else None
    if wanted is None:
        return None
    path = found[0]
    parts, schema, offset = [], None, 0
    stream.check_required(stage, path)
    for batch in io.iter_pair_batches(path, batch_rows=stream.STREAM_BATCH_ROWS):
        schema = schema or batch.schema
        part = batch.select([name for name in batch.column_names if name in wanted])
        parts.append(part.append_column(ROW, pa.array(np.arange(offset, offset + batch.num_rows), pa.int64())))
        offset += batch.num_rows
    table = pa.concat_tables(parts)
    pa.default_memory_pool().release_unused()  # the other columns' batches, freed but still held by the pool
    return ProjectedInput(path, table, schema)


def run_projected(stage: Stage, source: ProjectedInput, ctx) -> "StageResult":  # noqa: F821
    from dataclasses import replace

    restored = frozenset(name for name in source.table.column_names if name != ROW)  # rejoin takes them from the file
    result = stage.run(source.table, replace(ctx, restored=ctx.restored | restored))
    source.table = None  # written from the result and the input file: the projected columns can go before then
    result.out = rejoin(source, result.out)
    result.set_aside = rejoin(source, result.set_aside)
    return result


def rejoin(source: ProjectedInput, rows: pa.Table | None) -> "RejoinedRows | None":
    if rows is None:
        return None
    if ROW not in rows.column_names:
        raise AssertionError(f"a projected stage dropped the row number column {ROW}")
    return RejoinedRows(source, rows)


class RejoinedRows:
    """Rows of a stage's result over projected columns, with the input's columns that the result lacks (those not
    projected, and projected ones the stage left out: Context.restored) taken back from the input file:
    `num_rows`, `schema`, `column_names`, `iter_tables()` (a block at a time), `to_table()`."""

    def __init__(self, source: ProjectedInput, rows: pa.Table):
        self.source = source
        self.rows = rows.column(ROW).to_numpy()
        self.result = rows.drop_columns([ROW])
        given = self.result.schema
        names = source.schema.names
        fields = [given.field(n) if n in given.names else source.schema.field(n) for n in names]
        fields += [given.field(n) for n in given.names if n not in names]
        self.schema = pa.schema(fields, metadata=given.metadata)
        self.num_rows = rows.num_rows

    @property
    def column_names(self) -> list[str]:
        return self.schema.names

    def _join(self, full: pa.Table, part: pa.Table) -> pa.Table:
        given = set(part.column_names)
        return pa.Table.from_arrays([part.column(n) if n in given else full.column(n) for n in self.schema.names],
                                    schema=self.schema)

    def iter_tables(self) -> Iterator[pa.Table]:
        if not self.num_rows:
            return
        order = None if np.all(np.diff(self.rows) > 0) else np.argsort(self.rows, kind="stable")
        rows = self.rows if order is None else self.rows[order]
        result = self.result if order is None else self.result.take(pa.array(order))
        blocks, pos, start = [], 0, 0
        for batch in io.iter_pair_batches(self.source.path, batch_rows=stream.STREAM_BATCH_ROWS):
            end = start + batch.num_rows
            stop = int(np.searchsorted(rows, end))
            if stop > pos:
                block = self._join(batch.take(pa.array(rows[pos:stop] - start)), result.slice(pos, stop - pos))
                if order is None:
                    yield block
                else:
                    blocks.append(block)
            pos, start = stop, end
            if pos == len(rows):
                break
        if order is not None:  # rows not in input order (e.g. set aside grouped by reason): put them back
            yield pa.concat_tables(blocks).take(pa.array(np.argsort(order, kind="stable")))

    def to_table(self) -> pa.Table:
        tables = list(self.iter_tables())
        return pa.concat_tables(tables) if tables else self.schema.empty_table()
