"""Build canonical pair tables from columns (the one constructor used by ingest adapters, stages and tests),
and swap the sides of chosen/rejected pairs."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .schema import pair_schema
from .text import pair_id as _pair_id, prompt_id as _prompt_id


def build_pairs(
    prompt: Sequence[Sequence[dict]],
    chosen: Sequence[str],
    rejected: Sequence[str],
    *,
    source: str | Sequence[str],
    chosen_score: Sequence[float | None] | None = None,
    rejected_score: Sequence[float | None] | None = None,
    label_source: str | Sequence[str] = "human",
    annotator_agreement: Sequence[float | None] | None = None,
    tie: Sequence[bool] | None = None,
    meta: Sequence[dict | str | None] | None = None,
) -> pa.Table:
    """Columns in, canonical pairs table out; pair_id and prompt_id are computed here."""
    n = len(chosen)
    if not (len(prompt) == len(rejected) == n):
        raise ValueError("prompt, chosen and rejected must have the same length")

    def spread(value, default=None):
        if value is None:
            return [default] * n
        if isinstance(value, str):
            return [value] * n
        return list(value)

    messages = [[{"role": m["role"], "content": m["content"]} for m in turns] for turns in prompt]
    metas = [m if isinstance(m, str) else json.dumps(m or {}, ensure_ascii=False, sort_keys=True, default=str)
             for m in spread(meta)]
    columns: dict[str, Any] = {
        "pair_id": [_pair_id(p, c, r) for p, c, r in zip(messages, chosen, rejected)],
        "prompt_id": [_prompt_id(p) for p in messages],
        "source": spread(source),
        "prompt": messages,
        "chosen": list(chosen),
        "rejected": list(rejected),
        "chosen_score": spread(chosen_score),
        "rejected_score": spread(rejected_score),
        "label_source": spread(label_source),
        "annotator_agreement": spread(annotator_agreement),
        "tie": spread(tie, False),
        "meta": metas,
    }
    schema = pair_schema()
    return pa.Table.from_pydict(columns, schema=schema)


def user_prompt(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def swap_sides(table: pa.Table, mask: np.ndarray) -> pa.Table:
    """chosen <-> rejected (and their scores) where mask; pair_id keeps naming the original pair."""
    if not mask.any():
        return table
    m = pa.array(mask)
    for a, b in (("chosen", "rejected"), ("chosen_score", "rejected_score")):
        col_a, col_b = table.column(a), table.column(b)
        new_a, new_b = pc.if_else(m, col_b, col_a), pc.if_else(m, col_a, col_b)
        table = table.set_column(table.column_names.index(a), a, new_a)
        table = table.set_column(table.column_names.index(b), b, new_b)
    return table
