"""The `review` stages (select, export, import) on the Stage contract.

The pure functions live in `prefcli.stages.review`; this module holds their options (`Params`), what each stage
reads and writes, and the glue the CLI used to hold (voting first with `--rm`, building the embedder, the export
format dispatch, reading verdict files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from .. import io
from ..errors import InputError
from ..outputs import write_files_into
from ..result import StageResult
from ..stage import (SET_ASIDE, Context, Params, Read, Resources, Stage,
                     Write, option, register)
from . import review as rv
from .vote import EmbedAndVoteParams, enforce_failure_rate

EXPORT_MARKER = "prefcli-review.json"  # in every export directory (older exports have only this marker)
FORMATS = ("label-studio", "argilla", "csv")
VERDICT_FORMATS = ("auto", *FORMATS)
# Where set-aside rows go when the kept rows go to stdout (the name the command has always used).
STDOUT_REJECTS = "review.rejects.parquet"
VOTE_STATS = ("rows_in", "rows_no_vote", "failure_rate", "requests", "prompt_tokens", "completion_tokens", "failed",
              "remote")


def _where(call) -> str:
    return call.inputs[0] if call.inputs else "input"


# --------------------------------------------------------------------------- select

class SelectParams(EmbedAndVoteParams):
    budget: int = option(..., "Number of pairs to review.", low=1)
    audit_share: float = option(0.1, "Share of the budget picked uniformly at random, so calibration sees an "
                                     "unbiased sample.", low=0.0, high=1.0)
    groups: Literal["auto", "kmeans", "dedup", "none"] = option(
        "auto", "Diversity groups for round-robin picks: auto (k-means on embeddings), kmeans, dedup "
                "(dedup_cluster) or none.")
    neighbours: int = option(10, "Neighbours retrieved per gold error.", low=1)
    min_similarity: float = option(0.5, "Cosine similarity a neighbour of a gold error needs.", low=-1.0, high=1.0)
    on: Literal["prompt", "pair", "chosen", "rejected"] = option(
        "prompt", "Text embedded for groups and retrieval: prompt (the rendered conversation), pair (prompt and both "
                  "responses), chosen or rejected.")
    rm: list[str] | None = option(None, "Vote first with these reward models (specs as for `prefcli vote`, e.g. "
                                           "served: or judge:), for input that has no vote columns yet.")
    model: str | None = option("static", "Embedding model for topic groups and gold retrieval: static (the "
                                         "packaged MiniLM distilled; dedup has usually cached these vectors), "
                                         "minilm, or a sentence-transformers path or hub id.")


@register
class SelectStage(Stage):
    """Pick up to --budget pairs worth a human look (incorrect/ambiguous buckets, neighbours of known errors, high
    RM disagreement, random audit), topic-diverse."""

    name = "review select"
    Params = SelectParams
    summary = ("Pick up to --budget pairs worth a human look (incorrect/ambiguous buckets, neighbours of known "
               "errors, high RM disagreement, random audit), topic-diverse.")
    resources = Resources(mode="table", uses_models=True)
    uses_seed = True
    reads = (Read("gold", "--gold", "Earlier `review import` output: its pairs the AI got wrong pull in their "
                                    "embedding neighbours.", io.read_pairs),)

    def required_columns(self) -> dict[str, str] | None:
        # Without --rm the input must already carry vote's columns; with --rm the stage votes first.
        return None if self.params.rm else rv.SELECT_REQUIRES

    def columns_needed(self, ctx: Context) -> list[str] | None:
        """Vote's columns, pair_id, earlier verdicts, dedup clusters and the embedded text: the queue's other
        columns come back from the input for its few rows. With --rm (a vote first) every column."""
        if self.params.rm:
            return None
        texts = ["prompt", "chosen", "rejected"] if self.params.on == "pair" else [self.params.on]
        return ["pair_id", "review_verdict", "dedup_cluster", *rv.SELECT_REQUIRES, *texts]

    def run(self, table: pa.Table, ctx: Context) -> StageResult:
        p = self.params
        cache_dir = str(ctx.cache_dir) if ctx.cache_dir else None
        rows_in = table.num_rows
        voted = None
        if p.rm:
            from ..models.reward import parse_rm_spec
            from .vote import vote

            models = [parse_rm_spec(spec, device=ctx.device, cache_dir=cache_dir, use_cache=ctx.use_cache,
                                    tasks=ctx.tasks) for spec in p.rm]
            voted = vote(table, models)
            table = voted.out  # pairs no voter answered are set aside by vote: they cannot be ranked
        gold = ctx.inputs.get("gold")
        embedder = None
        if p.groups in ("auto", "kmeans") or gold is not None:
            from ..models.embed import build_embedder

            embedder = build_embedder(p.model, device=ctx.device, cache_dir=cache_dir, use_cache=ctx.use_cache,
                                      trust_remote_code=p.trust_remote_code)
        result = rv.select_for_review(table, p.budget, embedder=embedder, gold=gold, audit_share=p.audit_share,
                                      groups=p.groups, neighbours=p.neighbours, min_similarity=p.min_similarity,
                                      on=p.on, index_device=ctx.device, seed=ctx.seed)
        if voted is not None:
            result.stats["vote"] = {k: voted.stats[k] for k in VOTE_STATS if k in voted.stats}
        result.added = result.out.num_rows - rows_in  # a queue drawn from the input, not a partition of it
        return result

    def after_report(self, stats: dict[str, Any]) -> None:
        if "vote" in stats:
            enforce_failure_rate(stats["vote"], self.params.max_failure_rate)

    @classmethod
    def report_tables(cls, stats):
        from ..report import Table

        return [Table("by_reason", "Why pairs were picked", ["reason", "pairs"],
                      [[k, v] for k, v in stats["by_reason"].items()])]


# --------------------------------------------------------------------------- export

class ExportParams(Params):
    to: Literal["label-studio", "argilla", "csv"] = option(..., "label-studio, argilla or csv.")
    name: str = option("prefcli-review", "Dataset name (Argilla).")


def export_files(tasks: list, to: str, name: str = "prefcli-review") -> dict[str, Any]:
    """The files of one export format, by relative path (dict/list values are JSON documents)."""
    if to == "label-studio":
        return rv.label_studio_project(tasks)
    if to == "argilla":
        return rv.argilla_dataset(tasks, name=name)
    if to == "csv":
        return {"tasks.csv": rv.csv_text(rv.csv_tasks(tasks), rv.CSV_COLUMNS)}
    raise InputError(f"--to: expected one of {', '.join(FORMATS)}, got '{to}'")


@register
class ExportStage(Stage):
    """Write a review queue as annotation tasks: a Label Studio project (config.xml + tasks.json), an Argilla 2.x
    dataset directory, or a CSV for spreadsheets."""

    name = "review export"
    Params = ExportParams
    summary = ("Write a review queue as annotation tasks: a Label Studio project (config.xml + tasks.json), an "
               "Argilla 2.x dataset directory, or a CSV for spreadsheets.")
    output = "dir"
    output_help = "Directory to write (replaced only if it holds an earlier review export)."

    def validate(self, call) -> None:
        super().validate(call)
        if call.output == io.STDIO:
            raise InputError("-o -: a review export is a directory; give a directory path")
        self._queue, self._output = _where(call), call.output
        # an export written before prefcli marked its output directories has only the export marker
        out = Path(call.output)
        if out.is_dir() and (out / EXPORT_MARKER).is_file() and not (out / io.OUTPUT_MARKER).exists():
            call.overwrite = True

    def run(self, table: pa.Table, ctx: Context) -> StageResult:
        p = self.params
        tasks = rv.tasks_from_queue(table)
        if not tasks:
            raise InputError(f"{getattr(self, '_queue', 'queue')}: the queue has no tasks")
        files = export_files(tasks, p.to, p.name)
        files[EXPORT_MARKER] = {"command": "prefcli review export", "format": p.to, "tasks": len(tasks),
                                "queue": getattr(self, "_queue", None),
                                "note": "left/right order is random per task; the mapping stays in the queue"}
        stats = {"format": p.to, "tasks": len(tasks), "output": getattr(self, "_output", None),
                 "files": ",".join(sorted(f for f in files if f != EXPORT_MARKER))}
        return StageResult(out=None, stats=stats, artifacts={"files": files})

    def write(self, plan, paths, result) -> None:
        files = result.artifacts["files"]
        plan.write_with(paths["output"], lambda tmp: write_files_into(tmp, files))


# --------------------------------------------------------------------------- import

def load_queue(path: str) -> pa.Table:
    """The review queue (`--queue`): a `review select` output, which holds the left/right mapping."""
    from ..schema import validate

    return validate(io.read_table(path), where=path, require_stage={
        c: "use a `prefcli review select` output" for c in ("review_task_id", "review_left_is_chosen")})


def read_verdicts(paths: list[str], fmt: str = "auto") -> list:
    """Judgements from verdict files (Label Studio export JSON, Argilla records, the CSV)."""
    judgements = []
    for path in paths:
        records, lines = io.read_records(path)
        judgements.extend(rv.parse_verdicts(records, path, fmt=fmt, lines=lines))
    if not judgements:
        raise InputError(f"{', '.join(paths)}: no verdicts found (no annotations, or all unfilled)")
    return judgements


class ImportParams(Params):
    format: Literal["auto", "label-studio", "argilla", "csv"] = option("auto", "auto, label-studio, argilla or csv.")


@register
class ImportStage(Stage):
    """Apply human verdicts (Label Studio export JSON, Argilla records, or the CSV) to the pairs: flips swap
    chosen/rejected, ties and both-bad are set aside. Tasks an earlier import applied are skipped, so a cumulative
    export can be imported again."""

    name = "review import"
    Params = ImportParams
    summary = ("Apply human verdicts (Label Studio export JSON, Argilla records, or the CSV) to the pairs: flips "
               "swap chosen/rejected, ties and both-bad are set aside. Tasks an earlier import applied are "
               "skipped, so a cumulative export can be imported again.")
    input = "sources"
    input_help = "Verdict files (several annotators may be in one file or spread over several)."
    sets_aside = True
    reads = (Read("into", "--into", "The pairs Parquet the queue was selected from.", io.read_pairs, required=True),
             Read("queue", "--queue", "The review queue Parquet (holds the left/right mapping).", load_queue,
                  required=True))
    writes = (Write(SET_ASIDE, "--rejects", "Where ties and both-bad pairs go (default OUT.rejects.parquet).",
                    default_suffix=".rejects.parquet"),)

    def validate(self, call) -> None:
        super().validate(call)
        if call.output == io.STDIO and not call.writes.get(SET_ASIDE):
            call.writes[SET_ASIDE] = STDOUT_REJECTS

    def read(self, call) -> pa.Table:
        """The pairs (--into); the verdict files are parsed into ctx.inputs["verdicts"]."""
        call.ctx.inputs["verdicts"] = read_verdicts(call.inputs, self.params.format)
        return call.ctx.inputs["into"]

    def run(self, table: pa.Table, ctx: Context) -> StageResult:
        queue, judgements = ctx.inputs.get("queue"), ctx.inputs.get("verdicts")
        if queue is None:
            raise InputError("missing option '--queue'")
        if not judgements:
            raise InputError("no verdicts found (no annotations, or all unfilled)")
        # Label Studio exports are cumulative: tasks an earlier import applied are skipped and counted.
        judgements, already = rv.skip_applied(judgements, rv.applied_task_ids(table))
        result = rv.apply_verdicts(table, rv.aggregate(judgements, queue),
                                   queue_task_ids=queue.column("review_task_id").to_pylist(),
                                   already_applied=already)
        if result.stats["not_in_input"]:
            ctx.warn(f"{result.stats['not_in_input']} reviewed pairs are not in --into (set aside or removed after "
                     "an earlier import of this queue); their verdicts were skipped")
        if result.stats["flip"] and "margin" in table.column_names:
            ctx.warn(f"{result.stats['flip']} flipped pairs keep their vote columns as scored before the flip; "
                     "re-run `prefcli vote` to refresh pref_* (export already orients margin)")
        return result
