"""Training exports: the curated pairs in the shapes trainers read.

- `trl`: TRL standard preference rows {prompt, chosen, rejected} as text (+ margin).
- `trl-conversational`: TRL conversational rows: prompt = message list, chosen/rejected = one
  assistant message each (+ margin). `hf-dataset` and `parquet` use this shape too.
- `openrlhf`: OpenRLHF reward/DPO JSONL: `prompt`, `chosen`, `rejected` text and `margin`
  (its default --prompt_key/--chosen_key/--rejected_key; margin is read with --margin_loss).
- `jsonl`: every column, one JSON object per line (for piping into a custom training job).

`margin` comes from the vote stage when present. Tie rows (`tie = true`) carry no preference and
are left out of the training shapes (not of `jsonl`).
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..report import StageResult
from ..schema import MESSAGE_TYPE
from ..text import texts_for

FORMATS = ("trl", "trl-conversational", "openrlhf", "jsonl", "hf-dataset", "parquet")
JSONL_FORMATS = ("trl", "trl-conversational", "openrlhf", "jsonl")
SHAPE = {"trl": "standard", "openrlhf": "standard", "trl-conversational": "conversational",
         "hf-dataset": "conversational", "parquet": "conversational", "jsonl": "all"}


# Words that start a query or name a table; a row filter needs none of them. Checked before polars parses the
# expression, because polars runs table functions such as read_csv('/path') while it parses a subquery.
_QUERY_WORDS = {"select", "from", "with", "values", "table", "union", "intersect", "except", "join", "lateral",
                "unnest", "into", "copy", "attach", "pragma", "execute", "call"}
_SQL_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|([A-Za-z_][A-Za-z0-9_]*)\s*(\()?|(;)")


def check_where(expression: str | None) -> None:
    """Refuse anything but a filter over the table's own columns: no subqueries, table functions or
    statements. Runs before any data is read; one-line InputError naming the offending word."""
    if not expression:
        return
    quotes = expression.count("'") - 2 * expression.count("''")
    if quotes % 2:
        raise InputError(f"--where: unterminated string in '{expression}'")
    for match in _SQL_TOKENS.finditer(expression):
        word, call, semicolon = match.groups()
        if semicolon:
            raise InputError("--where: ';' is not allowed; give one filter expression over the table's columns")
        if word and word.lower() in _QUERY_WORDS:
            raise InputError(f"--where: '{word}' is not allowed; give a filter over the table's own columns "
                             f"(no subqueries or table functions)")
        if word and call and word.lower().startswith(("read_", "scan_")):
            raise InputError(f"--where: '{word}(' is not allowed; --where reads no files")


def filter_where(table: pa.Table, expression: str | None) -> pa.Table:
    """Rows where a polars SQL expression is true (null counts as false); one-line error otherwise."""
    if not expression:
        return table
    import polars as pl

    check_where(expression)
    try:
        frame = pl.from_arrow(table)
        parsed = pl.sql_expr(expression)
        unknown = [name for name in parsed.meta.root_names() if name not in frame.columns]
        if unknown:
            raise InputError(f"--where: unknown column '{unknown[0]}' in '{expression}'")
        mask = frame.select(parsed.alias("__where__")).to_series()
    except pl.exceptions.ColumnNotFoundError as exc:
        found = re.search(r'column "([^"]+)"', str(exc))
        name = found.group(1) if found else _first_line(exc).split(";")[0]
        raise InputError(f"--where: unknown column '{name}' in '{expression}'") from None
    except (pl.exceptions.PolarsError, ValueError, TypeError) as exc:
        raise InputError(f"--where: cannot evaluate '{expression}' ({_first_line(exc)})") from None
    if mask.dtype != pl.Boolean:
        raise InputError(f"--where: '{expression}' is not a condition (it gives {mask.dtype}, expected Boolean)")
    if len(mask) != table.num_rows:  # an aggregate such as `count(*) > 1`
        raise InputError(f"--where: '{expression}' does not give one value per row")
    return table.filter(pa.array(mask.fill_null(False).to_numpy()))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def assistant_messages(texts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Each text as a one-message list [{role: assistant, content: text}] (vectorised)."""
    content = (texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts).cast(pa.large_string())
    n = len(content)
    roles = pa.repeat(pa.scalar("assistant", pa.large_string()), n)
    structs = pa.StructArray.from_arrays([roles, content], fields=list(MESSAGE_TYPE))
    return pa.LargeListArray.from_arrays(pa.array(np.arange(n + 1), pa.int64()), structs)


def oriented_margin(table: pa.Table) -> pa.ChunkedArray:
    """`margin` for the stored orientation (missing -> 0).

    A pair humans flipped in `review import` after the vote still carries the vote's margin for the
    old orientation (the review stage may not rewrite vote columns); it is negated here until
    `prefcli vote` is re-run (detected as margin still equal to its `review_margin` snapshot).
    """
    margin = pc.fill_null(table.column("margin").cast(pa.float64()), 0.0)
    if "review_flipped" in table.column_names and "review_margin" in table.column_names:
        stale = pc.fill_null(pc.and_(table.column("review_flipped"),
                                     pc.equal(margin, table.column("review_margin").cast(pa.float64()))), False)
        margin = pc.if_else(stale, pc.negate(margin), margin)
    return margin


def training_table(table: pa.Table, fmt: str, *, keep: Sequence[str] = ()) -> pa.Table:
    """The rows in `fmt`'s shape, plus `margin` when present and any `keep` columns."""
    if fmt not in FORMATS:
        raise InputError(f"--to: expected one of {', '.join(FORMATS)}, got '{fmt}'")
    missing = [c for c in keep if c not in table.column_names]
    if missing:
        raise InputError(f"--keep: unknown column '{missing[0]}'")
    shape = SHAPE[fmt]
    if shape == "all":
        return table
    columns: dict[str, Any] = {}
    if shape == "standard":
        columns["prompt"] = pa.array(texts_for(table, "prompt"), pa.large_string())
        columns["chosen"] = table.column("chosen")
        columns["rejected"] = table.column("rejected")
    else:
        columns["prompt"] = table.column("prompt")
        columns["chosen"] = assistant_messages(table.column("chosen"))
        columns["rejected"] = assistant_messages(table.column("rejected"))
    if "margin" in table.column_names:
        columns["margin"] = oriented_margin(table)
    for name in keep:
        columns.setdefault(name, table.column(name))
    return pa.table(columns)


def export_pairs(table: pa.Table, fmt: str, *, where: str | None = None, keep: Sequence[str] = (),
                 shuffle: bool = False, seed: int = 0) -> StageResult:
    """Filter (--where), drop ties from training shapes, optionally shuffle, and reshape."""
    rows_in = table.num_rows
    selected = filter_where(table, where)
    stats: dict[str, Any] = {"rows_in": rows_in, "filtered_out": rows_in - selected.num_rows, "format": fmt}
    if SHAPE.get(fmt) != "all":
        ties = pc.fill_null(selected.column("tie"), False)
        stats["ties_left_out"] = int(pc.sum(ties.cast(pa.int64())).as_py() or 0)
        selected = selected.filter(pc.invert(ties))
    if "margin" in selected.column_names:
        stats["margin_missing"] = selected.column("margin").null_count
    if shuffle:
        selected = selected.take(pa.array(np.random.default_rng(seed).permutation(selected.num_rows)))
    out = training_table(selected, fmt, keep=keep)
    stats["rows_out"] = out.num_rows
    stats["has_margin"] = "margin" in out.column_names
    return StageResult(out=out, stats=stats)


def iter_rows(table: pa.Table, batch_rows: int = 4096) -> Iterator[dict]:
    """Python dicts batch by batch, for streaming JSONL writes."""
    for batch in table.to_batches(max_chunksize=batch_rows):
        yield from batch.to_pylist()


def to_hf_dataset(table: pa.Table):
    """An in-memory `datasets.Dataset` over the same Arrow data."""
    import datasets

    return datasets.Dataset(datasets.table.InMemoryTable(table))
