"""stats: a streaming summary of a pairs table (rows, sources, lengths, chosen-longer share, turns,
stage columns present). Accumulate batch by batch, so millions of pairs fit in little memory."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..result import StageResult
from ..schema import stage_columns_present
from ..stage import Context, Params, Stage, register

QUANTILES = (0.05, 0.5, 0.95)
_WORD = r"\S+"


def _chars(texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64)


def _words(texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.count_substring_regex(texts, pattern=_WORD).to_numpy(zero_copy_only=False).astype(np.int64)


def _per_list_sum(lists: pa.Array, values: np.ndarray) -> np.ndarray:
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    return np.bincount(parents, weights=values, minlength=len(lists)).astype(np.int64)


class StatsAccumulator:
    """Feed pair tables with `add`; `result()` returns the summary dict (JSON-ready)."""

    def __init__(self):
        self.rows = 0
        self.sources: Counter = Counter()
        self.label_sources: Counter = Counter()
        self.ties = 0
        self.scored = 0
        self.chosen_longer = 0
        self.same_length = 0
        self.lengths: dict[str, list[np.ndarray]] = {k: [] for k in (
            "prompt_chars", "prompt_words", "chosen_chars", "chosen_words", "rejected_chars", "rejected_words")}
        self.turns: list[np.ndarray] = []
        self.stage_columns: dict[str, list[str]] = {}

    def add(self, table: pa.Table) -> None:
        if not self.stage_columns:
            self.stage_columns = stage_columns_present(table)
        self.rows += table.num_rows
        for name, counts in ((self.sources, "source"), (self.label_sources, "label_source")):
            for item in pc.value_counts(table.column(counts).combine_chunks()).to_pylist():
                name[item["values"]] += item["counts"]
        self.ties += pc.sum(table.column("tie")).as_py() or 0
        self.scored += table.num_rows - table.column("chosen_score").null_count
        prompt = table.column("prompt").combine_chunks()
        contents = pc.struct_field(pc.list_flatten(prompt), "content")
        self.lengths["prompt_chars"].append(_per_list_sum(prompt, _chars(contents)))
        self.lengths["prompt_words"].append(_per_list_sum(prompt, _words(contents)))
        for side in ("chosen", "rejected"):
            self.lengths[f"{side}_chars"].append(_chars(table.column(side)))
            self.lengths[f"{side}_words"].append(_words(table.column(side)))
        chosen, rejected = self.lengths["chosen_chars"][-1], self.lengths["rejected_chars"][-1]
        self.chosen_longer += int((chosen > rejected).sum())
        self.same_length += int((chosen == rejected).sum())
        self.turns.append(pc.list_value_length(prompt).to_numpy(zero_copy_only=False).astype(np.int64))

    def result(self) -> dict[str, Any]:
        lengths = {}
        for key, parts in self.lengths.items():
            values = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            lengths[key] = _distribution(values)
        turns = np.concatenate(self.turns) if self.turns else np.zeros(0, np.int64)
        return {
            "rows": self.rows,
            "sources": dict(self.sources.most_common()),
            "label_sources": dict(self.label_sources.most_common()),
            "ties": self.ties,
            "scored_rows": self.scored,
            "chosen_longer_share": self.chosen_longer / self.rows if self.rows else None,
            "same_length_share": self.same_length / self.rows if self.rows else None,
            "lengths": lengths,
            "turns": {"mean": float(turns.mean()) if len(turns) else None, "histogram": _turn_hist(turns)},
            "stage_columns": self.stage_columns,
        }


def _turn_hist(turns: np.ndarray) -> dict[str, int]:
    capped = np.minimum(turns, 5)
    values, counts = np.unique(capped, return_counts=True)
    return {("5+" if v >= 5 else str(int(v))): int(c) for v, c in zip(values, counts)}


def _distribution(values: np.ndarray) -> dict[str, float | int | None]:
    if not len(values):
        return {"min": None, "mean": None, **{f"p{int(q * 100)}": None for q in QUANTILES}, "max": None}
    qs = np.quantile(values, QUANTILES)
    return {"min": int(values.min()), "mean": round(float(values.mean()), 2),
            **{f"p{int(q * 100)}": round(float(v), 1) for q, v in zip(QUANTILES, qs)}, "max": int(values.max())}


def pair_stats(table: pa.Table) -> dict[str, Any]:
    acc = StatsAccumulator()
    acc.add(table)
    return acc.result()


def summary_tables(result: dict) -> list:
    """The report tables of a stats summary (a `StatsAccumulator.result()`, or the command's stats)."""
    from ..report import Table

    rows = result["rows"] or 1
    lengths = result["lengths"]
    stat_names = list(next(iter(lengths.values())))
    return [
        Table("sources", "sources", ["source", "pairs", "share"],
              [[k, v, v / rows] for k, v in result["sources"].items()]),
        Table("label_sources", "label sources", ["label_source", "pairs", "share"],
              [[k, v, v / rows] for k, v in result["label_sources"].items()]),
        Table("lengths", "lengths (chars; words = whitespace tokens)", ["text", *stat_names],
              [[k.replace("_", " "), *v.values()] for k, v in lengths.items()]),
        Table("turns", "turns per prompt", ["turns", "pairs"],
              [[k, v] for k, v in result["turns"]["histogram"].items()]),
        Table("stage_columns", "stage columns present", ["stage", "columns"],
              [[stage, ", ".join(cols)] for stage, cols in result["stage_columns"].items()] or [["none", ""]]),
    ]


class StatsParams(Params):
    pass


@register
class StatsStage(Stage):
    """Rows, sources, label sources, length distributions, chosen-longer share, turns, stage columns.

    Read-only: no output. On the file path `read` hands the stage a lazy batch reader
    (`ctx.inputs["batches"]`, with the file name in `ctx.inputs["file"]`), so millions of pairs fit in
    little memory; the Python API passes the table itself."""

    name = "stats"
    Params = StatsParams
    output = "none"

    def read(self, call) -> pa.Table | None:
        from .. import io

        call.ctx.inputs["file"] = call.inputs[0]
        call.ctx.inputs["batches"] = io.iter_pair_batches(call.inputs[0])  # a generator: nothing read yet
        return None

    def run(self, table: pa.Table | None, ctx: Context) -> StageResult:
        batches = [table] if table is not None else ctx.inputs["batches"]
        acc = StatsAccumulator()
        with ctx.progress("stats") as advance:
            for batch in batches:
                acc.add(batch)
                advance(batch.num_rows)
        result = acc.result()
        head = {"file": ctx.inputs.get("file"), "rows": result["rows"], "ties": result["ties"],
                "scored_rows": result["scored_rows"], "chosen_longer_share": result["chosen_longer_share"],
                "same_length_share": result["same_length_share"], "mean_turns": result["turns"]["mean"]}
        return StageResult(out=None, stats={**head, **{k: result[k] for k in result if k not in head}})

    def final_stats(self, result: StageResult, rows_in: int, seconds: float) -> dict[str, Any]:
        return dict(result.stats)

    def tables_to_stdout(self, output: str | None) -> bool:
        return True

    @classmethod
    def report_tables(cls, stats: dict[str, Any]) -> list:
        return summary_tables(stats)
