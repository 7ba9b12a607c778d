"""ingest: raw records -> canonical pairs, batch by batch, with per-source row accounting.

Plain functions over RawBatch streams; the CLI (prefcli/cli/ingest.py) does the reading and writing.
Per source: read = written + set aside, where `read` counts candidate pairs (one per record for 1:1
formats; expanding formats such as multi-response and oasst count each candidate pair, plus each
record that yields none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa

from .. import io
from ..errors import InputError
from ..formats import Adapter, Collector, IngestOptions, make_adapter
from ..formats import columnar
from ..formats.base import PROMPT_ALIASES, Reject, as_messages, find_alias, sample_columns, value
from ..formats.detect import detect_format
from ..io import ColumnarBatch, RawBatch
from ..schema import empty_pairs


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
