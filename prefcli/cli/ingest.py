"""`prefcli ingest SRC... -o OUT`: raw preference data in any supported layout -> canonical pairs Parquet."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from .. import io
from ..cache.ingest import CachedSource, IngestCache
from ..formats import FORMAT_NAMES, REJECTS_SCHEMA, IngestOptions, check_format, parse_mapping
from ..formats.base import LABEL_SCHEMES, LABEL_SOURCES, PAIRINGS
from ..options import parse_key_values
from ..outputs import OutputPlan
from ..report import Table
from ..schema import pair_schema
from ..stages.ingest import SourceIngest, source_label
from .common import (OUTPUT_PATH, Json, MaxRejectRate, Output, Quiet, Seed, enforce_reject_rate, handle_errors, number,
                     reporter, side_path)

ORDER = 10


@handle_errors
def ingest(
    sources: Annotated[list[str], typer.Argument(help="Files, globs, directories, - (stdin), hf:NAME[:CONFIG][@SPLIT], "
                                                      "or a datasets.save_to_disk directory.")],
    output: Output = ...,
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"One of {', '.join(FORMAT_NAMES)}.")] = "auto",
    mapping: Annotated[Optional[str], typer.Option(
        "--map", help="Field paths, e.g. prompt=conversation_input,chosen=chosen.answer,rejected=reject.answer "
                      "(dotted paths, [i] indices, JSON strings decoded). Roles: prompt, system, input, chosen, "
                      "rejected, first, second, label, votes (A+B+C), responses, response, score, group, "
                      "chosen_score, rejected_score, first_score, second_score, agreement.")] = None,
    pairing: Annotated[str, typer.Option(help=f"Multi-response/oasst expansion: {'|'.join(PAIRINGS)}.")] = "all",
    min_margin: Annotated[float, typer.Option("--min-margin", parser=number(float, 0.0),
                                              help="Set aside expanded pairs whose score gap is "
                                                                   "below this (equal scores are ties).")] = 0.0,
    keep_ties: Annotated[bool, typer.Option("--keep-ties", help="Write ties with tie=True instead of "
                                                                "setting them aside.")] = False,
    label_source: Annotated[str, typer.Option("--label-source", help=f"Who labelled: {'|'.join(LABEL_SOURCES)}.")
                            ] = "human",
    label_scheme: Annotated[str, typer.Option("--label-scheme", help=f"Numeric pairwise labels: "
                                              f"{'|'.join(LABEL_SCHEMES)}; index = 1/2 (AlpacaEval floats in 1..2), "
                                              "signed = negative means first better.")] = "auto",
    rejects: Annotated[Optional[str], typer.Option("--rejects", parser=OUTPUT_PATH,
                                                   help="Rejects file (default OUT.rejects.parquet).")
                       ] = None,
    max_reject_rate: MaxRejectRate = None,
    source_name: Annotated[Optional[str], typer.Option("--source-name", help="Value of `source` for every pair "
                                                       "(default: the file name).")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(
        "--cache-dir", help="Keep each raw file's parsed result here (keyed by its content and these options) "
                            "and re-parse only new or changed files; the output is the same bytes. `prefcli run` "
                            "passes its cache dir. Default: no per-file cache.")] = None,
    quiet: Quiet = False,
    json_mode: Json = False,
    seed: Seed = 0,
) -> None:
    """Convert raw preference data (hh-rlhf, trl, pairwise, votes, multi-response, oasst, or --map) to pairs."""
    report = reporter(quiet, json_mode, output)
    options = IngestOptions(pairing=pairing, min_margin=min_margin, keep_ties=keep_ties, label_source=label_source,
                            label_scheme=label_scheme, mapping=parse_mapping(parse_key_values(mapping or "", "--map")),
                            columnar=os.environ.get("PREFCLI_INGEST_COLUMNAR", "1") != "0")
    check_format(fmt)
    files = [(spec, file) for spec in sources for file in io.expand_sources([spec])]
    plan = OutputPlan(inputs=[file for _, file in files])
    plan.add("--output", output)
    rejects_path = plan.add("--rejects", side_path(output, rejects, "ingest"))
    cache = IngestCache(cache_dir) if cache_dir else None
    summaries, files_cached = [], 0
    with plan:
        sinks = {"pairs": plan.sink(output, pair_schema()), "rejects": plan.sink(rejects_path, REJECTS_SCHEMA)}
        with report.progress("ingest") as advance:
            for spec, file in files:
                job = SourceIngest(source_name or source_label(spec, file), file, fmt=fmt, options=options)
                source = CachedSource(job, cache)
                for part, table, nbytes in source.chunks(lambda: io.iter_raw(file, columnar=options.columnar)):
                    sinks[part].write(table, nbytes=nbytes)
                    advance(table.num_rows)
                summaries.append(source.summary())
                files_cached += source.cached
        for sink in sinks.values():
            sink.commit()
        # A file output always gets its rejects file (possibly empty, so no stale one survives); stdout only when needed.
        if not sinks["rejects"].rows and output == io.STDIO:
            plan.drop(rejects_path)
        plan.commit()
    totals = {key: sum(s[key] for s in summaries) for key in ("records", "read", "written", "set_aside")}
    stats = {"output": output, "sources": len(summaries), **totals,
             "files_parsed": len(summaries) - files_cached, "files_cached": files_cached,
             "rejects": rejects_path if totals["set_aside"] or output != io.STDIO else None,
             "per_source": summaries}
    table = Table("per_source", "per source", ["source", "format", "records", "read", "written", "set_aside",
                                               "reasons"],
                  [[s["source"], s["format"], s["records"], s["read"], s["written"], s["set_aside"],
                    ", ".join(f"{k} {v}" for k, v in s["reasons"].items())] for s in summaries])
    report.summary("ingest", stats, [table])
    enforce_reject_rate(totals["read"], totals["set_aside"], max_reject_rate)


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
