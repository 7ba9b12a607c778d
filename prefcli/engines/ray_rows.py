"""Rows that stay on the Ray cluster: a stage's input read by the workers and its output written block by block,
so the driver holds one block at a time, whatever the size of the data.

`ClusterRows` is what `--engine ray` hands `execute` in place of an Arrow table, in both directions: object refs
to Arrow blocks (in order) and their row counts. `execute` only needs `num_rows` (the accounting check); the
OutputPlan writes it with `iter_tables()` into the same staged file as a table (prefcli.outputs). The blocks are
owned by the driver (they are the return values of its tasks), so Ray rebuilds a lost block from its lineage.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from ..errors import SchemaError
from . import require_ray
from .ray_data import ROW, ordered_context

BLOCK_ROWS = 50_000  # rows per block a one-task stage hands back (the driver fetches one at a time)


class ClusterRows:
    """Rows as Arrow blocks in the Ray object store: `refs` (in row order) and `counts` (rows per block)."""

    def __init__(self, refs: Sequence, counts: Sequence[int], schema: pa.Schema | None = None):
        self.refs, self.counts = list(refs), [int(c) for c in counts]
        self._schema = schema

    @property
    def num_rows(self) -> int:
        return sum(self.counts)

    @property
    def column_names(self) -> list[str]:
        return self.schema.names

    @property
    def schema(self) -> pa.Schema:
        """Every block's columns, unified (a block may carry a null-typed column where another has text)."""
        if self._schema is None:
            ray = require_ray()
            schemas = ray.get([_schema_of.remote(ref) for ref in self.refs]) if self.refs else []
            self._schema = (pa.unify_schemas(schemas, promote_options="permissive") if schemas
                            else pa.schema([]))
        return self._schema

    def iter_tables(self) -> Iterator[pa.Table]:
        """Each non-empty block, in order, fetched one at a time."""
        ray = require_ray()
        for ref, count in zip(self.refs, self.counts):
            if count:
                yield ray.get(ref)

    def to_table(self) -> pa.Table:
        """Every row on the driver: only for outputs that need the whole table (an hf-dataset, --push-to-hub)."""
        tables = list(self.iter_tables())
        if not tables:
            return self.schema.empty_table()
        return pa.concat_tables(tables, promote_options="permissive").cast(self.schema)

    def dataset(self):
        """The blocks as a Ray dataset (no rows move)."""
        ray = require_ray()
        ordered_context()
        refs = [ref for ref, count in zip(self.refs, self.counts) if count] or self.refs[:1]
        return ray.data.from_arrow_refs(refs)

    @classmethod
    def of_dataset(cls, ds) -> "ClusterRows":
        """A dataset's blocks (executed, left in the object store) and their row counts from the block metadata."""
        return cls(*refs_and_counts(ds))


def refs_and_counts(ds) -> tuple[list, list[int]]:
    """The dataset's blocks, executed and left in the object store, in order, with their row counts (counted
    where the blocks are: only numbers reach the driver)."""
    ray = require_ray()
    refs = list(ds.to_arrow_refs())
    counts = ray.get([_rows_of.remote(ref) for ref in refs]) if refs else []
    return refs, counts


# --------------------------------------------------------------------------- reading a stage's input

def read_pairs(path: str, *, where: str, require: dict[str, str] | None = None) -> ClusterRows:
    """A pairs Parquet file or dataset directory read by the workers, in file and row-group order: one task per
    run of row groups (up to BLOCK_ROWS rows), each validating its block against the schema (an error names the
    row from the start of the input, as the local reader does). Ray Data's own Parquet reader (2.60) may hand
    back a file's fragments out of order, and the row order is part of the output (ties go to the earlier row),
    so the pieces are planned here from the footers."""
    from .. import io
    from ..io.parquet import _parquet_errors
    from ..schema import validate
    import pyarrow.parquet as pq

    ray = require_ray()
    files = io.dataset_parts(path) or [path]
    pieces: list[tuple[str, list[int], int]] = []  # (file, row groups, rows)
    with _parquet_errors(path):
        # a missing column fails before any work
        validate(pq.read_schema(files[0]).empty_table(), where=where, require_stage=require)
        for file in files:
            meta = pq.read_metadata(file)
            groups, rows = [], 0
            for index in range(meta.num_row_groups):
                count = meta.row_group(index).num_rows
                if groups and rows + count > BLOCK_ROWS:
                    pieces.append((file, groups, rows))
                    groups, rows = [], 0
                groups.append(index)
                rows += count
            if groups or not meta.num_row_groups:
                pieces.append((file, groups, rows))
    counts = [rows for _, _, rows in pieces]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if counts else []
    checked = [_read_block.options(num_returns=2).remote(file, groups, int(start), where)
               for (file, groups, _), start in zip(pieces, offsets)]
    problems = ray.get([problem for _, problem in checked])
    for problem in problems:
        if problem is not None:
            raise SchemaError(problem)
    return ClusterRows([block for block, _ in checked], counts)


def _read(file: str, groups: list[int], start: int, where: str):
    import pyarrow.parquet as pq

    from ..io.parquet import _parquet_errors

    with _parquet_errors(where):
        source = pq.ParquetFile(file)
        block = source.read_row_groups(groups) if groups else source.schema_arrow.empty_table()
    return _validate(block, start, where)


def _validate(block: pa.Table, start: int, where: str):
    from ..io.parquet import _renumber
    from ..schema import validate

    try:
        return validate(block, where=where), None
    except SchemaError as exc:
        return block.slice(0, 0), _renumber(str(exc), start)


class _Lazy:
    """A remote function made on first use, so that importing this module does not import Ray."""

    def __init__(self, fn, **options):
        self.fn, self.options_, self._remote = fn, options, None

    def _made(self):
        if self._remote is None:
            self._remote = require_ray().remote(**self.options_)(self.fn)
        return self._remote

    def remote(self, *args, **kwargs):
        return self._made().remote(*args, **kwargs)

    def options(self, **options):
        return self._made().options(**options)


def _schema(block: pa.Table) -> pa.Schema:
    return block.schema


def _rows(block: pa.Table) -> int:
    return block.num_rows


_rows_of = _Lazy(_rows, num_cpus=0.25)
_schema_of = _Lazy(_schema, num_cpus=0.25)
_read_block = _Lazy(_read, num_cpus=1)


def take_rows(rows: ClusterRows, indices) -> ClusterRows:
    """The rows at sorted global `indices`, each block's share taken by a task where the block is."""
    indices = np.asarray(indices, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(rows.counts)]).astype(np.int64)
    refs, counts = [], []
    for ref, lo, hi in zip(rows.refs, starts[:-1], starts[1:]):
        local = indices[(indices >= lo) & (indices < hi)] - lo
        if len(local):
            refs.append(_take.remote(ref, local))
            counts.append(len(local))
    return ClusterRows(refs, counts)


def _take_block(block: pa.Table, local) -> pa.Table:
    return block.take(pa.array(local))


_take = _Lazy(_take_block, num_cpus=0.25)


# --------------------------------------------------------------------------- results that stay on the cluster

def slices(table: pa.Table | None, rows: int = BLOCK_ROWS) -> list[pa.Table]:
    if table is None:
        return []
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)] or [table.slice(0, 0)]


class Header(NamedTuple):
    """The last item of a streamed result (Ray serialises it, local functions in artefacts included)."""

    result: Any
    head: Any
    out_counts: list
    aside_counts: list
    has_out: bool


def stream_result(result, head: Any) -> Iterator[Any]:
    """The body of a streaming-generator task: the kept rows and the set-aside rows in blocks, then a header
    (`head`, the result without its rows, and the block counts) as the last item."""
    out, aside = slices(result.out), slices(result.set_aside)
    for part in (*out, *aside):
        yield part
    result.out, result.set_aside = (None if result.out is None else result.out.slice(0, 0)), None
    yield Header(result, head, [p.num_rows for p in out], [p.num_rows for p in aside], result.out is not None)


def collect_streamed(refs: list) -> tuple[Any, Any]:
    """(the result with ClusterRows for its rows, the header) from the refs of a `stream_result` task."""
    ray = require_ray()
    result, head, out_counts, aside_counts, has_out = ray.get(refs[-1])
    blocks = refs[:-1]
    out_refs, aside_refs = blocks[:len(out_counts)], blocks[len(out_counts):]
    schema = result.out.schema if result.out is not None else None
    result.out = ClusterRows(out_refs, out_counts, schema) if has_out else None
    result.set_aside = ClusterRows(aside_refs, aside_counts) if aside_counts and sum(aside_counts) else None
    return result, head


def drop_row_index(batch: pa.Table) -> pa.Table:
    return batch.drop_columns([ROW]) if ROW in batch.column_names else batch


def in_row_order(ds) -> ClusterRows:
    """A dataset's rows sorted by the global row index (a distributed sort), without the index column."""
    if ROW not in ds.schema().names:
        return ClusterRows.of_dataset(ds.materialize())
    ordered = ds.sort(ROW).map_batches(drop_row_index, batch_format="pyarrow").materialize()
    return ClusterRows.of_dataset(ordered)
