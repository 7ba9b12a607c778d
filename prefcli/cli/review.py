"""`prefcli review select|export|import`: the human side of the curation loop."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import io
from ..errors import InputError
from ..outputs import OutputPlan, write_files_into
from ..report import Table, check_accounting
from ..schema import validate
from ..stages import review as stage
from .common import (OUTPUT_PATH, TrustRemoteCode, CacheDir, Device, EmbedModel, Input, Json, MaxRejectRate, Output,
                     Overwrite, Quiet, Seed, enforce_reject_rate, handle_errors, number, plan_stage, reporter,
                     write_stage)
from .vote import MaxFailureRate, enforce_failure_rate

ORDER = 70
EXPORT_MARKER = "prefcli-review.json"
FORMATS = ("label-studio", "argilla", "csv")

app = typer.Typer(name="review", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Human review: select pairs for review, export annotation tasks, import verdicts.")


@app.command("select", help="Pick up to --budget pairs worth a human look (incorrect/ambiguous buckets, "
                            "neighbours of known errors, high RM disagreement, random audit), topic-diverse.")
@handle_errors
def select_command(
    input: Input,
    output: Output,
    budget: Annotated[int, typer.Option("--budget", parser=number(int, 1), help="Number of pairs to review.")],
    audit_share: Annotated[float, typer.Option("--audit-share", parser=number(float, 0.0, 1.0),
                                               help="Share of the budget picked uniformly at "
                                               "random, so calibration sees an unbiased sample.")] = 0.1,
    gold: Annotated[Optional[str], typer.Option("--gold", help="Earlier `review import` output: its pairs the AI "
                                                "got wrong pull in their embedding neighbours.")] = None,
    groups: Annotated[str, typer.Option("--groups", help="Diversity groups for round-robin picks: auto (k-means "
                                        "on embeddings), kmeans, dedup (dedup_cluster) or none.")] = "auto",
    neighbours: Annotated[int, typer.Option("--neighbours", parser=number(int, 1),
                                            help="Neighbours retrieved per gold error.")] = 10,
    min_similarity: Annotated[float, typer.Option("--min-similarity", parser=number(float, -1.0, 1.0),
                                                  help="Cosine similarity a neighbour of "
                                                  "a gold error needs.")] = 0.5,
    on: Annotated[str, typer.Option("--on", help="Text embedded for groups and retrieval: prompt or pair.")] = "prompt",
    rm: Annotated[Optional[list[str]], typer.Option(
        "--rm", help="Vote first with these reward models (specs as for `prefcli vote`, e.g. served: or judge:), "
                     "for input that has no vote columns yet.")] = None,
    max_failure_rate: MaxFailureRate = 0.05,
    model: EmbedModel = None,
    trust_remote_code: TrustRemoteCode = False,
    device: Device = "auto",
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
    json_mode: Json = False,
    seed: Seed = 0,
) -> None:
    rep = reporter(quiet, json_mode, output)
    plan = OutputPlan(inputs=[input, gold])
    plan.add("--output", output)
    voted = None
    if rm:
        from ..models.reward import parse_rm_spec
        from ..stages.vote import vote

        models = [parse_rm_spec(spec, device=device, cache_dir=cache_dir) for spec in rm]
        voted = vote(io.read_pairs(input), models)
        table = voted.out  # pairs no voter answered are set aside by vote: they cannot be ranked
    else:
        table = io.read_pairs(input, require=stage.SELECT_REQUIRES)
    gold_table = io.read_pairs(gold) if gold else None
    embedder = None
    if groups in ("auto", "kmeans") or gold_table is not None:
        from ..models.embed import build_embedder

        embedder = build_embedder(model, device=device, cache_dir=cache_dir, trust_remote_code=trust_remote_code)
    result = stage.select_for_review(table, budget, embedder=embedder, gold=gold_table, audit_share=audit_share,
                                     groups=groups, neighbours=neighbours, min_similarity=min_similarity, on=on,
                                     index_device=device, seed=seed)
    plan.write(output, result.out)
    plan.commit()
    reasons = Table("by_reason", "Why pairs were picked", ["reason", "pairs"],
                    [[k, v] for k, v in result.stats["by_reason"].items()])
    stats = dict(result.stats)
    if voted is not None:
        stats["vote"] = {k: voted.stats[k] for k in ("rows_in", "rows_no_vote", "failure_rate", "requests",
                                                      "prompt_tokens", "completion_tokens", "failed", "remote")
                         if k in voted.stats}
    rep.summary("review select", stats, [reasons])
    if voted is not None:
        enforce_failure_rate(voted.stats, max_failure_rate)


@app.command("export", help="Write a review queue as annotation tasks: a Label Studio project (config.xml + "
                            "tasks.json), an Argilla 2.x dataset directory, or a CSV for spreadsheets.")
@handle_errors
def export_command(
    queue: Annotated[str, typer.Argument(help="Review queue Parquet from `prefcli review select`.")],
    to: Annotated[str, typer.Option("--to", help="label-studio, argilla or csv.")],
    output: Annotated[str, typer.Option("--output", "-o", parser=OUTPUT_PATH, help="Directory to write "
                                        "(replaced only if it holds an earlier review export).")],
    name: Annotated[str, typer.Option("--name", help="Dataset name (Argilla).")] = "prefcli-review",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_mode: Json = False,
    seed: Seed = 0,
) -> None:
    rep = reporter(quiet, json_mode)
    if to not in FORMATS:
        raise InputError(f"--to: expected one of {', '.join(FORMATS)}, got '{to}'")
    if output == io.STDIO:
        raise InputError("-o -: a review export is a directory; give a directory path")
    plan = OutputPlan(inputs=[queue], overwrite=overwrite)
    plan.add("--output", output, kind="dir", markers=(EXPORT_MARKER,))
    tasks = stage.tasks_from_queue(io.read_pairs(queue))
    if not tasks:
        raise InputError(f"{queue}: the queue has no tasks")
    if to == "label-studio":
        files = stage.label_studio_project(tasks)
    elif to == "argilla":
        files = stage.argilla_dataset(tasks, name=name)
    else:
        files = {"tasks.csv": stage.csv_text(stage.csv_tasks(tasks), stage.CSV_COLUMNS)}
    files[EXPORT_MARKER] = {"command": "prefcli review export", "format": to, "tasks": len(tasks), "queue": queue,
                            "note": "left/right order is random per task; the mapping stays in the queue"}
    plan.write_with(output, lambda tmp: write_files_into(tmp, files))
    plan.commit()
    rep.summary("review export", {"format": to, "tasks": len(tasks), "output": output,
                                  "files": ",".join(sorted(f for f in files if f != EXPORT_MARKER))})


@app.command("import", help="Apply human verdicts (Label Studio export JSON, Argilla records, or the CSV) to "
                            "the pairs: flips swap chosen/rejected, ties and both-bad are set aside. Tasks an "
                            "earlier import applied are skipped, so a cumulative export can be imported again.")
@handle_errors
def import_command(
    verdicts: Annotated[list[str], typer.Argument(help="Verdict files (several annotators may be in one file "
                                                  "or spread over several).")],
    into: Annotated[str, typer.Option("--into", help="The pairs Parquet the queue was selected from.")],
    output: Output,
    queue: Annotated[str, typer.Option("--queue", help="The review queue Parquet (holds the left/right "
                                       "mapping).")],
    fmt: Annotated[str, typer.Option("--format", help="auto, label-studio, argilla or csv.")] = "auto",
    rejects: Annotated[Optional[str], typer.Option("--rejects", parser=OUTPUT_PATH,
                                                   help="Where ties and both-bad pairs go "
                                                   "(default OUT.rejects.parquet).")] = None,
    max_reject_rate: MaxRejectRate = None,
    quiet: Quiet = False,
    json_mode: Json = False,
    seed: Seed = 0,
) -> None:
    rep = reporter(quiet, json_mode, output)
    plan, side = plan_stage(into, output, "--rejects", rejects, "review", reads=(queue, *verdicts))
    queue_table = validate(io.read_table(queue), where=queue, require_stage={
        c: "use a `prefcli review select` output" for c in ("review_task_id", "review_left_is_chosen")})
    table = io.read_pairs(into)
    judgements = []
    for path in verdicts:
        records, lines = io.read_records(path)
        judgements.extend(stage.parse_verdicts(records, path, fmt=fmt, lines=lines))
    if not judgements:
        raise InputError(f"{', '.join(verdicts)}: no verdicts found (no annotations, or all unfilled)")
    # Label Studio exports are cumulative: tasks an earlier import applied are skipped and counted.
    judgements, already = stage.skip_applied(judgements, stage.applied_task_ids(table))
    queue_ids = queue_table.column("review_task_id").to_pylist()
    result = stage.apply_verdicts(table, stage.aggregate(judgements, queue_table), queue_task_ids=queue_ids,
                                  already_applied=already)
    check_accounting(table.num_rows, result)
    if result.stats["not_in_input"]:
        rep.warn(f"{result.stats['not_in_input']} reviewed pairs are not in --into (set aside or removed after an "
                 "earlier import of this queue); their verdicts were skipped")
    write_stage(plan, result, output, side)
    if result.stats["flip"] and "margin" in table.column_names:
        rep.warn(f"{result.stats['flip']} flipped pairs keep their vote columns as scored before the flip; "
                 "re-run `prefcli vote` to refresh pref_* (export already orients margin)")
    rep.summary("review import", result.stats)
    enforce_reject_rate(table.num_rows, result.rows_set_aside, max_reject_rate)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="review")

