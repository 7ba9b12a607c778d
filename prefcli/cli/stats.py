"""`prefcli stats FILE`: what a pairs file holds, as rich tables (or --json for scripts)."""

from __future__ import annotations

from .. import io
from ..report import Table
from ..stages.stats import StatsAccumulator
from .common import Input, Json, Quiet, Seed, handle_errors, reporter

ORDER = 15


@handle_errors
def stats(path: Input, quiet: Quiet = False, json_mode: Json = False, seed: Seed = 0) -> None:
    """Rows, sources, label sources, length distributions, chosen-longer share, turns, stage columns."""
    report = reporter(quiet, json_mode, tables_to_stdout=True)
    acc = StatsAccumulator()
    with report.progress("stats") as advance:
        for batch in io.iter_pair_batches(path):
            acc.add(batch)
            advance(batch.num_rows)
    result = acc.result()
    head = {"file": path, "rows": result["rows"], "ties": result["ties"], "scored_rows": result["scored_rows"],
            "chosen_longer_share": result["chosen_longer_share"], "same_length_share": result["same_length_share"],
            "mean_turns": result["turns"]["mean"]}
    report.summary("stats", {**head, **{k: result[k] for k in result if k not in head}}, tables(result))


def tables(result: dict) -> list[Table]:
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
        Table("turns", "turns per prompt", ["turns", "pairs"], [[k, v] for k, v in result["turns"]["histogram"].items()]),
        Table("stage_columns", "stage columns present", ["stage", "columns"],
              [[stage, ", ".join(cols)] for stage, cols in result["stage_columns"].items()] or [["none", ""]]),
    ]


def register(app) -> None:
    app.command("stats")(stats)
