"""`prefcli dedup IN -o OUT`: exact + semantic near-duplicates, eval-set decontamination, cached re-threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import pyarrow as pa
import typer

from .. import io
from ..errors import InputError
from ..models.cache import default_cache_dir
from ..models.embed import MINILM, STATIC, build_embedder
from ..outputs import OutputPlan
from ..report import Table, Timer, check_accounting
from ..stages.dedup import (DEFAULT_AGAINST_THRESHOLD, DEFAULT_PROPOSE, DEFAULT_THRESHOLD, KEEP_POLICIES, TEXT_VIEWS,
                            DedupOptions, dedup, explain)
from ..text import render_messages
from .common import (OUTPUT_PATH, TrustRemoteCode, CacheDir, Device, Input, Json, MaxRejectRate, Quiet,
                     Seed, enforce_reject_rate, handle_errors, number, reporter, side_path)

ORDER = 20
GRAPH_DIR = "dedup-graphs"


def load_eval_prompts(paths: list[str]) -> list[str]:
    """Eval prompts from any file ingest reads, or a plain .txt / JSON / JSONL list of prompts."""
    from ..stages.ingest import load_prompts

    prompts = [render_messages(m) for m in load_prompts(paths)]
    if not any(p.strip() for p in prompts):
        raise InputError(f"--against {' '.join(paths)}: no prompts found")
    return prompts


def graph_source(explicit: str | None, cache_root: Path | None):
    """Callback for the stage: fingerprint -> stored graph table (from --graph, else the cache), or None."""

    def find(fingerprint: str) -> pa.Table | None:
        for path in (explicit, cache_root and cache_root / GRAPH_DIR / f"{fingerprint}.parquet"):
            if path and Path(path).is_file():
                try:
                    return io.read_table(path)
                except InputError:
                    continue  # an unreadable graph is only a missed shortcut: it is rebuilt
        return None

    return find


@handle_errors
def dedup_command(
    input: Input,
    output: Annotated[Optional[str], typer.Option("--output", "-o", parser=OUTPUT_PATH,
                                                  help="Output Parquet file, or - for stdout "
                                                  "(optional with --explain).")] = None,
    on: Annotated[str, typer.Option("--on", help=f"Text compared: {'|'.join(TEXT_VIEWS)} (prompt = rendered "
                                    "conversation history; pair = prompt + both responses).")] = "prompt",
    threshold: Annotated[float, typer.Option("--threshold", parser=number(float, 0.0, 1.0),
                                             help="Cosine at or above which texts are duplicates.")
                         ] = DEFAULT_THRESHOLD,
    keep: Annotated[str, typer.Option("--keep", help=f"Representative per cluster: {'|'.join(KEEP_POLICIES)} "
                                      "(strongest = highest pref_mean, from `prefcli vote`).")] = "first",
    against: Annotated[Optional[list[str]], typer.Option(
        "--against", help="Eval file(s) to decontaminate against: any format ingest reads, or a .txt/.jsonl "
                          "list of prompts. Repeatable.")] = None,
    against_threshold: Annotated[float, typer.Option(
        "--against-threshold", parser=number(float, 0.0, 1.0),
            help="Cosine at or above which a prompt matches an eval prompt.")
    ] = DEFAULT_AGAINST_THRESHOLD,
    drop: Annotated[bool, typer.Option("--drop", help="Set duplicates and contaminated rows aside "
                                       "(default: keep every row, flagged).")] = False,
    removed: Annotated[Optional[str], typer.Option("--removed", parser=OUTPUT_PATH,
                                                   help="Where --drop writes removed rows "
                                                   "(default OUT.rejects.parquet).")] = None,
    lexical: Annotated[bool, typer.Option("--lexical/--no-lexical", help="Also link neighbours only a few "
                                          "character edits apart (typos), whatever their cosine.")] = True,
    model: Annotated[str, typer.Option(
        "--model", help="Embedding model that searches for neighbours: static (the packaged MiniLM distilled with "
                        "model2vec, built once into the cache dir), minilm (the packaged all-MiniLM-L6-v2), or a "
                        "sentence-transformers path or hub id (safetensors only).")] = STATIC,
    verify: Annotated[str, typer.Option(
        "--verify", help="With --model static: the model that re-scores the static model's candidate pairs "
                         "(minilm, a path or hub id), or none to decide on static cosines alone.")] = MINILM,
    propose: Annotated[float, typer.Option(
        "--propose-threshold", parser=number(float, 0.0, 1.0),
        help="With a --verify model: static cosine at which a pair becomes a candidate.")] = DEFAULT_PROPOSE,
    trust_remote_code: TrustRemoteCode = False,
    device: Device = "auto",
    cache_dir: CacheDir = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache.")] = False,
    graph: Annotated[Optional[str], typer.Option("--graph", parser=OUTPUT_PATH,
                                                 help="Neighbour graph Parquet: read when it matches "
                                                 "this input, else (re)written.")] = None,
    show_explain: Annotated[bool, typer.Option("--explain", help="Print the similarity histogram and sample pairs "
                                               "at several thresholds.")] = False,
    max_reject_rate: MaxRejectRate = None,
    quiet: Quiet = False,
    json_mode: Json = False,
    seed: Seed = 0,
) -> None:
    """Find exact and semantic near-duplicates (and eval-set contamination); flag them or --drop them."""
    if output is None and not show_explain:
        raise InputError("missing option '--output' / '-o' (or use --explain)")
    if removed and not drop:
        raise InputError("--removed needs --drop (without --drop every row is kept, flagged)")
    options = DedupOptions(on=on, threshold=threshold, keep=keep, seed=seed, against_threshold=against_threshold,
                           drop=drop, device=device, lexical=lexical, propose=propose)
    options.check()
    plan = OutputPlan(inputs=[input, *(against or [])])
    plan.add("--output", output)
    side = plan.add("--removed", side_path(output, removed, "dedup")) if output is not None and drop else None
    plan.add("--graph", graph)
    report = reporter(quiet, json_mode, output, tables_to_stdout=output is None)
    table = io.read_pairs(input)
    eval_prompts = load_eval_prompts(against) if against else []
    models = dict(device=device, cache_dir=cache_dir, use_cache=not no_cache, trust_remote_code=trust_remote_code)
    embedder = build_embedder(model, **models)
    verifier = build_embedder(verify, **models) if model == STATIC and verify != "none" else None
    cache_root = None if no_cache else (Path(cache_dir) if cache_dir else default_cache_dir())
    with Timer() as timer:
        run = dedup(table, embedder, options, against=eval_prompts, graph_source=graph_source(graph, cache_root),
                    verifier=verifier)
    result = run.result
    check_accounting(table.num_rows, result)
    graph_table = run.graph.to_table(run.groups, table.column("pair_id").to_pylist())
    if not result.stats["graph_reused"] and cache_root is not None:
        cached_graph = plan.add("cache", str(cache_root / GRAPH_DIR / f"{run.graph.fingerprint}.parquet"))
        plan.write(cached_graph, graph_table)
    if graph and not (result.stats["graph_reused"] and Path(graph).is_file()):
        plan.write(graph, graph_table)
    if output is not None:
        plan.write(output, result.out)
        if result.rows_set_aside:
            plan.write(side, result.set_aside)
    plan.commit()
    enforce_reject_rate(table.num_rows, result.rows_set_aside, max_reject_rate, "removed")
    stats = {**result.stats, "seconds": round(timer.seconds, 2)}
    tables = []
    if show_explain:
        explained = explain(run, seed=seed, lexical=lexical)
        if json_mode:
            stats["explain"] = explained
        else:
            tables = explain_tables(explained)
    report.summary("dedup", stats, tables)


def explain_tables(data: dict) -> list[Table]:
    hist = Table("histogram", "nearest-neighbour cosine of each unique text",
                 ["from", "to", "texts"],
                 [[h["from"] if h["from"] is not None else "<", h["to"], h["texts"]] for h in data["histogram"]])
    levels = Table("thresholds", "what each --threshold would do", ["threshold", "duplicates", "links",
                                                                     "largest_cluster"],
                   [[t["threshold"], t["duplicates"], t["links"], t["largest_cluster"]] for t in data["thresholds"]])
    samples = Table("samples", "sample pairs just above each threshold", ["threshold", "similarity", "text",
                                                                          "neighbour"],
                    [[t["threshold"], s["similarity"], s["text"], s["neighbour"]]
                     for t in data["thresholds"] for s in t["samples"]])
    tables = [hist, levels, samples]
    if "cascade" in data:
        tables.insert(0, Table("cascade", "cascade: the static model proposes, the verifier re-scores",
                               ["stage", "model", "threshold", "texts", "pairs"],
                               [[c["stage"], c["model"], c["threshold"], c["texts"], c["pairs"]]
                                for c in data["cascade"]]))
    return tables


def register(app: typer.Typer) -> None:
    app.command("dedup")(dedup_command)
