"""What every stage returns (kept rows, set-aside rows with a reason, stats, artefacts) and the accounting check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import pyarrow as pa

SET_ASIDE_REASON = "set_aside_reason"
SET_ASIDE_STAGE = "set_aside_stage"


@dataclass
class StageResult:
    """Kept rows (`table`), rows set aside with a reason (`set_aside`), `stats`, and named `artifacts`
    (a neighbour graph, a fitted model, a figure) that the caller may write."""

    out: pa.Table | None
    set_aside: pa.Table | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    added: int = 0  # rows the stage legitimately adds (mined pairs): in + added = out + set aside

    @property
    def table(self) -> pa.Table | None:
        return self.out

    @property
    def rows_set_aside(self) -> int:
        return 0 if self.set_aside is None else self.set_aside.num_rows


def row_tables(rows) -> Iterator[pa.Table]:
    """An Arrow table, or rows left on a cluster (`--engine ray`, prefcli.engines.ray_rows) block by block."""
    if hasattr(rows, "iter_tables"):
        yield from rows.iter_tables()
    elif rows is not None:
        yield rows


def whole_table(rows) -> pa.Table | None:
    """Every row as one Arrow table (fetches rows left on a cluster to this process)."""
    return rows.to_table() if hasattr(rows, "iter_tables") else rows


def mark_set_aside(rows: pa.Table, reasons: Sequence[str] | str, stage: str) -> pa.Table:
    """Attach a reason (one per row, or one for all) and the stage name to rows being set aside."""
    n = rows.num_rows
    reason_values = [reasons] * n if isinstance(reasons, str) else list(reasons)
    for name, values in ((SET_ASIDE_REASON, reason_values), (SET_ASIDE_STAGE, [stage] * n)):
        array = pa.array(values, pa.large_string())
        if name in rows.column_names:
            rows = rows.set_column(rows.column_names.index(name), name, array)
        else:
            rows = rows.append_column(name, array)
    return rows


def check_accounting(rows_in: int, result: StageResult, *, added: int = 0) -> None:
    """rows in (+ rows a stage legitimately adds, e.g. mined pairs) = rows out + rows set aside."""
    if result.out is None:
        return
    if rows_in + added != result.out.num_rows + result.rows_set_aside:
        raise AssertionError(f"row accounting broken: in {rows_in} + added {added} != "
                             f"out {result.out.num_rows} + set aside {result.rows_set_aside}")
