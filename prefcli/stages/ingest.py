"""ingest: raw records -> canonical pairs, batch by batch, with per-source row accounting.

Plain functions over RawBatch streams, and the IngestStage at the end: `open_sources` is the only code that
handles paths (the I/O side); the stage turns the sources' batches into a stream of chunks that the caller writes.
Per source: read = written + set aside, where `read` counts candidate pairs (one per record for 1:1
formats; expanding formats such as multi-response and oasst count each candidate pair, plus each
record that yields none).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import pyarrow as pa
from pydantic import field_validator

from .. import io
from ..errors import InputError, ProblemsReported
from ..formats import (FORMAT_NAMES, REJECTS_SCHEMA, Adapter, Collector, IngestOptions, columnar, make_adapter,
                       parse_mapping)
from ..formats.base import (LABEL_SCHEMES, LABEL_SOURCES, PAIRINGS, PROMPT_ALIASES, Reject, as_messages, find_alias,
                            sample_columns, value)
from ..formats.detect import detect_format
from ..io import ColumnarBatch, RawBatch
from ..result import StageResult
from ..schema import empty_pairs, pair_schema
from ..stage import SET_ASIDE, Context, Params, Resources, Stage, Write, option, register

ADAPTER_SAMPLE = 64  # detect_format and Adapter read only the first 64 records of a source


def source_label(spec: str, file: str) -> str:
    """The `source` of pairs from `file`: its path under a directory spec, else its name."""
    if spec == io.STDIO or spec.startswith("hf:"):
        return io.source_name(spec)
    root = Path(spec)
    if root.is_dir() and file != spec:
        return str(Path(file).relative_to(root.parent))
    return Path(file).name


class SourceIngest:
    """Converts one source's batches; `summary()` gives its counts once `run` is exhausted."""

    def __init__(self, source: str, file: str, *, fmt: str = "auto", options: IngestOptions | None = None):
        self.source, self.file, self.fmt = source, file, fmt
        self.options = options or IngestOptions()
        self.collector = Collector(source, file, self.options)
        self.adapter: Adapter | None = None
        self.plan: columnar.Plan | None = None
        self.records = 0

    def run(self, batches: Iterable[RawBatch | ColumnarBatch]) -> Iterator[tuple[pa.Table, pa.Table]]:
        """Yield (pairs, rejects) per batch, then once more for rows grouped across batches."""
        for batch in batches:
            if isinstance(batch, ColumnarBatch):
                if self.adapter is None and self.options.columnar:
                    self._columnar_adapter(batch)
                done = columnar.convert(self.plan, batch, self.collector) if self.plan is not None else None
                if done is not None:
                    self.records += len(batch)
                    yield done
                    continue
                batch = batch.raw()
            self.records += len(batch.records)
            if batch.problems:  # records the reader already knows are bad (e.g. a repeated key)
                for index, reason in batch.problems.items():
                    self.collector.reject(batch.records[index], batch.lines[index], reason)
                keep = [i for i in range(len(batch.records)) if i not in batch.problems]
                batch = RawBatch(batch.source, batch.file, [batch.records[i] for i in keep],
                                 [batch.lines[i] for i in keep])
            if batch.records:
                if self.adapter is None:
                    self.adapter = make_adapter(self.fmt, self.options, batch.records, batch.file)
                    if self.options.columnar:
                        self.plan = columnar.plan_for(self.adapter)
                self.adapter.convert(batch, self.collector)
            yield self.collector.drain()
        if self.adapter is None and not self.collector.read:
            raise InputError(f"{self.file}: no records (empty input)")
        if self.adapter is None:  # every record was set aside before conversion
            yield self.collector.drain()
            self._check()
            return
        self.adapter.finish(self.collector)
        yield self.collector.drain()
        self._check()

    def _columnar_adapter(self, batch: ColumnarBatch) -> None:
        """Set up the adapter from the batch's first records (all that detection and adapters look at)
        when its layout has a fast path; otherwise the batch is read per record as before."""
        if batch.table is None:
            return
        head, problems = batch.records(range(min(len(batch), ADAPTER_SAMPLE)))
        if problems or not head:
            return
        adapter = make_adapter(self.fmt, self.options, head, batch.file)
        plan = columnar.plan_for(adapter)
        if plan is not None:
            self.adapter, self.plan = adapter, plan

    def _check(self) -> None:
        c = self.collector
        expands = self.adapter is not None and self.adapter.expands
        if c.read != c.written + c.set_aside or (not expands and c.read != self.records):
            raise AssertionError(f"{self.file}: row accounting broken: records {self.records}, read {c.read}, "
                                 f"written {c.written}, set aside {c.set_aside}")

    def summary(self) -> dict[str, Any]:
        c = self.collector
        return {"source": self.source, "file": self.file, "format": self.adapter.name if self.adapter else self.fmt,
                "records": self.records, "read": c.read, "written": c.written, "set_aside": c.set_aside,
                "ties_kept": c.ties_kept, "reasons": dict(sorted(c.reasons.items()))}


def ingest_tables(batches: Iterable[RawBatch], *, source: str, file: str, fmt: str = "auto",
                  options: IngestOptions | None = None) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """Whole-source convenience: (pairs, rejects, summary) for batches that fit in memory."""
    job = SourceIngest(source, file, fmt=fmt, options=options)
    parts = list(job.run(batches))
    pairs = pa.concat_tables([p for p, _ in parts]) if parts else empty_pairs()
    rejects = pa.concat_tables([r for _, r in parts])
    return pairs, rejects, job.summary()


def load_pairs(specs: list[str] | str, *, fmt: str = "auto", source_name: str | None = None,
               **options: Any) -> pa.Table:
    """Every pair `prefcli ingest` would write for these sources, as one table (for small files,
    e.g. eval sets for decontamination). Options are IngestOptions fields (pairing, min_margin, ...)."""
    opts = IngestOptions(**options)
    tables = []
    for spec in [specs] if isinstance(specs, str) else specs:
        for file in io.expand_sources([spec]):
            pairs, _, _ = ingest_tables(io.iter_raw(file), source=source_name or source_label(spec, file),
                                        file=file, fmt=fmt, options=opts)
            tables.append(pairs)
    return pa.concat_tables(tables) if tables else empty_pairs()


def load_prompts(specs: list[str] | str, *, mapping: dict[str, str] | None = None) -> list[list[dict]]:
    """The prompts of any source ingest reads, or of a plain prompt list (.txt lines, or JSON/JSONL
    records with a prompt-like field such as prompt/instruction/question, or `--map prompt=PATH`)."""
    prompts: list[list[dict]] = []
    for spec in [specs] if isinstance(specs, str) else specs:
        for file in io.expand_sources([spec]):
            if file.lower().endswith((".txt", ".txt.gz")):
                prompts.extend([{"role": "user", "content": t}] for t in io.read_text_list(file))
                continue
            prompts.extend(_prompts_of_records(io.iter_raw(file), file, mapping or {}))
    return prompts


def _prompts_of_records(batches: Iterable[RawBatch], file: str, mapping: dict[str, str]) -> list[list[dict]]:
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        return []
    try:
        detect_format(first.records, file, mapping)
        preference_data = True
    except InputError:
        preference_data = False
    if preference_data:  # a full preference format: its pairs' prompts
        pairs, _, _ = ingest_tables([first, *batches], source="eval", file=file,
                                    options=IngestOptions(mapping=mapping))
        return pairs.column("prompt").to_pylist()
    path = mapping.get("prompt") or find_alias(sample_columns(first.records), "prompt")
    if path is None:
        raise InputError(f"{file}: no prompt field found (looked for {', '.join(PROMPT_ALIASES[:6])}, ...; "
                         f"columns seen: {', '.join(sample_columns(first.records)[:20])}); use --map prompt=PATH")
    found = []
    for batch in [first, *batches]:
        for record, line in zip(batch.records, batch.lines):
            try:
                found.append(as_messages(value(record, path)))
            except Reject as problem:
                raise InputError(f"{file}: line {line}: {problem}") from None
    return found


# --------------------------------------------------------------------------- the I/O side: sources to read

@dataclass(frozen=True)
class RawSource:
    """One raw source as the I/O layer hands it to the stage: its `source` label, the file it comes from
    (named in messages and fingerprinted by the ingest memo), and its record batches, read on demand."""

    label: str
    file: str

    def batches(self, columnar: bool = True) -> Iterator[RawBatch | ColumnarBatch]:
        return io.iter_raw(self.file, columnar=columnar)


def open_sources(specs: Sequence[str]) -> list[RawSource]:
    """Every source named by files, globs, directories, `-` and `hf:` specs, in order (one-line error for
    a spec that names nothing). The only place ingest handles paths; nothing is read yet."""
    return [RawSource(source_label(spec, file), file) for spec in specs for file in io.expand_sources([spec])]


# --------------------------------------------------------------------------- the stage

Chunk = tuple[str, pa.Table, int]  # ("pairs" | "rejects", table, the size the output sink counts for it)


@dataclass(frozen=True)
class SourceDone:
    """The end of one source's chunks: its summary row and whether it was replayed from the memo."""

    summary: dict[str, Any]
    cached: bool


class IngestStream:
    """The chunks of every source, parsed or replayed from the memo, consumed once (by the writer, or by
    `collect()`); `stats` is filled in when the last source is done."""

    def __init__(self, sources: Sequence[RawSource], *, fmt: str, options: IngestOptions, source_name: str | None,
                 cache, ctx: Context):
        self.sources, self.fmt, self.options, self.source_name = list(sources), fmt, options, source_name
        self.cache, self.ctx = cache, ctx
        self.stats: dict[str, Any] = {}
        self._used = False

    def parse_source(self, raw: RawSource) -> Iterator[Chunk | SourceDone]:
        """One source's chunks, parsed or replayed from the memo, then its SourceDone."""
        from ..cache.ingest import CachedSource

        job = SourceIngest(self.source_name or raw.label, raw.file, fmt=self.fmt, options=self.options)
        source = CachedSource(job, self.cache)
        yield from source.chunks(functools.partial(raw.batches, self.options.columnar))
        yield SourceDone(source.summary(), source.cached)

    def parsed_sources(self) -> Iterator[Iterator[Chunk | SourceDone]]:
        """Each source's `parse_source`, in order (the Ray engine parses them on workers, one task each)."""
        return (self.parse_source(raw) for raw in self.sources)

    def __iter__(self) -> Iterator[Chunk]:
        if self._used:
            raise RuntimeError("an ingest stream is read once")
        self._used = True
        summaries, files_cached = [], 0
        with self.ctx.progress("ingest") as advance:
            for items in self.parsed_sources():
                for item in items:
                    if isinstance(item, SourceDone):
                        summaries.append(item.summary)
                        files_cached += item.cached
                        continue
                    yield item
                    advance(item[1].num_rows)
        totals = {key: sum(s[key] for s in summaries) for key in ("records", "read", "written", "set_aside")}
        self.stats.update({"sources": len(summaries), **totals, "files_parsed": len(summaries) - files_cached,
                           "files_cached": files_cached, "per_source": summaries})

    def collect(self) -> tuple[pa.Table, pa.Table]:
        """(pairs, rejects) as whole tables, for sources that fit in memory."""
        parts: dict[str, list[pa.Table]] = {"pairs": [], "rejects": []}
        for part, table, _ in self:
            parts[part].append(table)
        pairs = pa.concat_tables(parts["pairs"]).cast(pair_schema()) if parts["pairs"] else empty_pairs()
        rejects = (pa.concat_tables(parts["rejects"]).cast(REJECTS_SCHEMA) if parts["rejects"]
                   else REJECTS_SCHEMA.empty_table())
        return pairs, rejects


def _key_values(value: Any) -> Any:
    """`a=1,b=x` (the CLI and TOML spelling of --map) as a dict; a dict passes through."""
    if not isinstance(value, str):
        return value
    out: dict[str, str] = {}
    for item in value.split(",") if value else []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--map: expected key=value, got '{item}'")
        out[key.strip()] = text.strip()
    return out


class IngestParams(Params):
    fmt: Literal[FORMAT_NAMES] = option("auto", "Raw layout (auto: detected from each source's first records).",
                                        flag="--format", short="-f")
    mapping: dict[str, str] = option(
        {}, "Field paths, e.g. prompt=conversation_input,chosen=chosen.answer,rejected=reject.answer (dotted paths, "
            "[i] indices, JSON strings decoded). Roles: prompt, system, input, chosen, rejected, first, second, label, "
            "votes (A+B+C), responses, response, score, group, chosen_score, rejected_score, first_score, "
            "second_score, agreement.", flag="--map")
    pairing: Literal[PAIRINGS] = option("all", "Multi-response/oasst expansion.")
    min_margin: float = option(0.0, "Set aside expanded pairs whose score gap is below this (equal scores are "
                                    "ties).", low=0.0)
    keep_ties: bool = option(False, "Write ties with tie=True instead of setting them aside.")
    label_source: Literal[LABEL_SOURCES] = option("human", "Who labelled.")
    label_scheme: Literal[LABEL_SCHEMES] = option("auto", "Numeric pairwise labels: index = 1/2 (AlpacaEval floats in "
                                                          "1..2), signed = negative means first better.")
    source_name: str | None = option(None, "Value of `source` for every pair (default: the file name).")
    columnar: bool = option(True, "Convert common layouts in columnar batches (the same output, faster); "
                                  "--no-columnar parses every record one by one.", negatable=True)

    @field_validator("mapping", mode="before")
    @classmethod
    def _parse_mapping(cls, value: Any) -> Any:
        return parse_mapping(_key_values(value)) if value is not None else {}


@register
class IngestStage(Stage):
    """Convert raw preference data (hh-rlhf, trl, pairwise, votes, multi-response, oasst, or --map) to pairs.

    Sources come from the I/O layer: `validate` resolves the CLI's (or runner's) specs with `open_sources`
    into `ctx.inputs["sources"]` (a list of RawSource); the Python API passes such a list itself. `run`
    returns a streaming result: `artifacts["chunks"]` (an IngestStream) yields each (part, table, size)
    once and then fills `stats`; `artifacts["chunks"].collect()` gives whole tables instead.
    """

    name = "ingest"
    Params = IngestParams
    input = "sources"
    engines = ("local", "ray")
    resources = Resources(on_ray="one Ray task per file source, each a streaming generator of its chunks (stdin and "
                                 "hf: sources are parsed on the driver)")
    uses_cache = True
    sets_aside = True
    input_help = ("Files, globs, directories, - (stdin), hf:NAME[:CONFIG][@SPLIT], or a datasets.save_to_disk "
                  "directory.")
    cache_dir_help = ("Keep each raw file's parsed result here (keyed by its content and these options) and re-parse "
                      "only new or changed files; the output is the same bytes. `prefcli run` passes its cache dir. "
                      "Default: no per-file cache.")
    writes = (Write(SET_ASIDE, "--rejects", "Rejects file (default OUT.rejects.parquet).",
                    default_suffix=".rejects.parquet"),)

    def validate(self, call) -> None:
        super().validate(call)
        sources = open_sources(call.inputs)
        call.ctx.inputs["sources"] = sources
        call.inputs = [s.file for s in sources]  # what the outputs are checked against: every file, not the globs
        self._max_reject_rate = call.max_reject_rate

    def options(self) -> IngestOptions:
        p = self.params
        return IngestOptions(pairing=p.pairing, min_margin=p.min_margin, keep_ties=p.keep_ties,
                             label_source=p.label_source, label_scheme=p.label_scheme, mapping=dict(p.mapping),
                             columnar=p.columnar)

    def run(self, table: pa.Table | None, ctx: Context) -> StageResult:
        from ..cache.ingest import IngestCache

        cache = IngestCache(ctx.cache_dir) if ctx.cache_dir and ctx.use_cache else None
        stream = IngestStream(ctx.inputs.get("sources") or [], fmt=self.params.fmt, options=self.options(),
                              source_name=self.params.source_name, cache=cache, ctx=ctx)
        return StageResult(out=None, stats=stream.stats, artifacts={"chunks": stream})

    def write(self, plan, paths: dict[str, str], result: StageResult) -> None:
        """Stream every chunk into the pairs and rejects files (the same row groups whether parsed or replayed).
        A file output always gets its rejects file (possibly empty, so no stale one survives); stdout only
        when there are rejects."""
        output, rejects = paths["output"], paths[SET_ASIDE]
        try:
            sinks = {"pairs": plan.sink(output, pair_schema()), "rejects": plan.sink(rejects, REJECTS_SCHEMA)}
            for part, chunk, nbytes in result.artifacts["chunks"]:
                sinks[part].write(chunk, nbytes=nbytes)
            for sink in sinks.values():
                sink.commit()
            if not sinks["rejects"].rows and output == io.STDIO:
                plan.drop(rejects)
        except BaseException:
            plan.abort()
            raise
        stats = result.stats
        stats["output"] = output
        stats["rejects"] = rejects if stats["set_aside"] or output != io.STDIO else None

    def final_stats(self, result: StageResult, rows_in: int, seconds: float) -> dict[str, Any]:
        keys = ("output", "sources", "records", "read", "written", "set_aside", "files_parsed", "files_cached",
                "rejects", "per_source")
        return {key: result.stats[key] for key in keys}

    def after_report(self, stats: dict[str, Any]) -> None:
        """--max-reject-rate over candidate pairs read, once the summary is printed (the counts exist only
        after the stream is written)."""
        limit = getattr(self, "_max_reject_rate", None)
        read, set_aside = stats["read"], stats["set_aside"]
        if limit is not None and read and set_aside / read > limit:
            raise ProblemsReported(f"{set_aside}/{read} rows {self.set_aside_word} ({set_aside / read:.1%}), "
                                   f"above --max-reject-rate {limit:.1%}")

    @classmethod
    def report_tables(cls, stats: dict[str, Any]) -> list:
        from ..report import Table

        return [Table("per_source", "per source", ["source", "format", "records", "read", "written", "set_aside",
                                                   "reasons"],
                      [[s["source"], s["format"], s["records"], s["read"], s["written"], s["set_aside"],
                        ", ".join(f"{k} {v}" for k, v in s["reasons"].items())] for s in stats["per_source"]])]
