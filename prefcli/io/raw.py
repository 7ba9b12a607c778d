"""Raw sources for ingest: JSON, JSONL, CSV and Parquet files (gzipped or not), globs, directories,
saved datasets, `hf:` hub datasets and stdin, streamed as batches of records with their line numbers."""

from __future__ import annotations

import contextlib
import csv
import glob as globlib
import gzip
import io as _io
import json
import os
import queue
import sys
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, exception_summary
from .atomic import STDIO
from .parquet import BATCH_ROWS, parquet_file

T = TypeVar("T")

RAW_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet", ".csv", ".csv.gz")


@dataclass
class RawBatch:
    """A batch of raw records from one source file, with their 1-based line/record numbers."""

    source: str
    file: str
    records: list[dict]
    lines: list[int] = field(default_factory=list)
    problems: dict[int, str] = field(default_factory=dict)  # record index -> why it must be set aside


def loads_checked(text: str) -> tuple[Any, Callable[[list], dict[int, str]]]:
    """json.loads that also finds repeated keys, which plain json resolves silently (the last one wins).

    Returns the document and `problems(records)`: record index -> "duplicate key 'K'" for the records
    (objects of the document) that hold a repeated key at any depth. Objects are built innermost
    first, so an object belongs to the first record built at or after it.
    """
    built: list[int] = []
    repeats: list[tuple[int, str]] = []

    def build(pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            repeats.append((len(built), next(k for k, _ in pairs if k in seen or seen.add(k))))
        built.append(id(obj))
        return obj

    doc = json.loads(text, object_pairs_hook=build)

    def problems(records: list) -> dict[int, str]:
        if not repeats:
            return {}
        import bisect

        order = {object_id: i for i, object_id in enumerate(built)}
        ends = [order.get(id(record), len(built)) for record in records]
        found: dict[int, str] = {}
        for position, key in repeats:
            found.setdefault(min(bisect.bisect_left(ends, position), len(records) - 1), f"duplicate key '{key}'")
        return found

    return doc, problems


def expand_sources(specs: list[str]) -> list[str]:
    """Expand files, globs and directories into concrete source specs (hf:/`-` pass through)."""
    out: list[str] = []
    for spec in specs:
        if spec == STDIO or spec.startswith("hf:"):
            out.append(spec)
            continue
        path = Path(spec)
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
                out.append(spec)
                continue
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and _is_raw(p.name))
            if not found:
                raise InputError(f"{spec}: directory has no JSON, JSONL, Parquet or CSV files")
            out.extend(found)
        elif any(ch in spec for ch in "*?["):
            found = sorted(p for p in globlib.glob(spec, recursive=True) if Path(p).is_file())
            if not found:
                raise InputError(f"{spec}: glob matched no files")
            out.extend(found)
        elif path.exists():
            out.append(spec)
        else:
            raise InputError(f"{spec}: no such file")
    return out


def _is_raw(name: str) -> bool:
    return name.lower().endswith(RAW_SUFFIXES) and not name.startswith(".")


def source_name(spec: str) -> str:
    if spec == STDIO:
        return "stdin"
    if spec.startswith("hf:"):
        return spec[3:]
    return Path(spec).name


def iter_raw(spec: str, batch_rows: int = BATCH_ROWS, *, columnar: bool = False) -> Iterator[RawBatch | ColumnarBatch]:
    """Stream raw records from one source spec in batches; never holds a whole JSONL file in memory.

    With `columnar`, .jsonl, .jsonl.gz and .parquet files come as ColumnarBatch (the ingest fast path)."""
    name = source_name(spec)
    try:
        if spec.startswith("hf:"):
            yield from _iter_hf(spec, name, batch_rows)
        elif spec == STDIO:
            yield from _iter_bytes(sys.stdin.buffer.read(), "<stdin>", name, batch_rows)
        elif Path(spec).is_dir():
            yield from _iter_saved_dataset(spec, name, batch_rows)
        else:
            yield from _iter_file(spec, name, batch_rows, columnar)
    except InputError:
        raise
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"{spec}: truncated or corrupt gzip ({exception_summary(exc)})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{spec}: not UTF-8 text ({exception_summary(exc)})") from None
    except RecursionError:
        raise InputError(f"{spec}: nested too deeply to read") from None
    except (pa.ArrowException, OSError, ValueError, csv.Error) as exc:
        raise InputError(f"{spec}: unreadable ({exception_summary(exc)})") from None


def _open_text(path: str):
    if path.lower().endswith(".gz"):
        return _io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _iter_file(path: str, name: str, batch_rows: int, columnar: bool = False) -> Iterator[RawBatch | ColumnarBatch]:
    lower = path.lower()
    if lower.endswith(".parquet"):
        yield from _iter_parquet(parquet_file(path), path, name, batch_rows, columnar)
    elif lower.endswith((".csv", ".csv.gz")):
        with _open_text(path) as fh:
            yield from _iter_csv(fh, path, name, batch_rows)
    elif lower.endswith((".jsonl", ".jsonl.gz")):
        with _open_text(path) as fh:
            if columnar:
                yield from read_ahead(_iter_jsonl_columnar(fh, path, name, batch_rows))
            else:
                yield from _iter_jsonl(fh, path, name, batch_rows)
    else:  # .json / .json.gz: an array, an object holding one array, or JSON lines misnamed
        with _open_text(path) as fh:
            head = _peek_json_kind(fh)
            if head == "lines":
                yield from _iter_jsonl(fh, path, name, batch_rows)
            else:
                yield from _iter_json_document(fh.read(), path, name, batch_rows)


def _peek_json_kind(fh) -> str:
    """'document' for a JSON array/object spanning the file, 'lines' for JSON lines."""
    pos = fh.tell()
    first = fh.readline()
    fh.seek(pos)
    stripped = first.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        try:
            json.loads(stripped)
            return "lines"
        except json.JSONDecodeError:
            return "document"
    return "document"


def _loads(text: str, where: str, malformed) -> tuple[Any, Any]:
    """loads_checked with one-line errors: `malformed(exc)` words a JSON syntax error."""
    try:
        return loads_checked(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: {malformed(exc)}") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply to read") from None


def _iter_json_document(text: str, path: str, name: str, batch_rows: int) -> Iterator[RawBatch]:
    doc, find_problems = _loads(text, path, lambda e: f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}")
    records = records_from_document(doc, path)
    problems = find_problems(records)
    for start in range(0, len(records), batch_rows):
        chunk = records[start:start + batch_rows]
        found = {i - start: why for i, why in problems.items() if start <= i < start + len(chunk)}
        yield RawBatch(name, path, chunk, list(range(start + 1, start + 1 + len(chunk))), found)


def records_from_document(doc: Any, where: str) -> list[dict]:
    """A JSON document as records: a list of objects, or the one list of objects inside an object."""
    if isinstance(doc, list):
        records = doc
    elif isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        records = lists[0] if len(lists) == 1 else [doc]
    else:
        raise InputError(f"{where}: JSON top level is {type(doc).__name__}, expected an array or object")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InputError(f"{where}: record {i + 1} is {type(rec).__name__}, expected an object")
    return records


def _jsonl_record(line: str, lineno: int, path: str) -> tuple[dict, str | None]:
    """One JSON line as a record, and why it must be set aside (a repeated key) or None."""
    rec, find_problems = _loads(line, f"{path}: line {lineno}", lambda e: f"malformed JSON ({e.msg})")
    if not isinstance(rec, dict):
        raise InputError(f"{path}: line {lineno}: expected a JSON object, got {type(rec).__name__}")
    found = find_problems([rec])
    return rec, found[0] if found else None


def _iter_jsonl(fh, path: str, name: str, batch_rows: int) -> Iterator[RawBatch]:
    records: list[dict] = []
    lines: list[int] = []
    problems: dict[int, str] = {}
    for lineno, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        rec, problem = _jsonl_record(line, lineno, path)
        if problem is not None:
            problems[len(records)] = problem
        records.append(rec)
        lines.append(lineno)
        if len(records) >= batch_rows:
            yield RawBatch(name, path, records, lines, problems)
            records, lines, problems = [], [], {}
    if records:
        yield RawBatch(name, path, records, lines, problems)


@dataclass
class ColumnarBatch:
    """One batch of a JSONL or Parquet source as an Arrow table, for the ingest fast path.

    `table` is None when pyarrow could not read the batch as plain rows (a repeated key, a type that
    changes between rows, anything unusual): then only `raw()` applies. `raw()` and `records()` give
    the records exactly as the per-record reader does (same values, lines and problems).
    """

    source: str
    file: str
    table: pa.Table | None
    lines: list[int]
    texts: list[str] | None = None  # JSONL: the batch's lines; None for Parquet
    # False when no value can hold a quote, a backslash or a control character (JSON text without any
    # backslash: json must escape those), so nothing needs escaping when written back as JSON
    escapes: bool = True

    def __len__(self) -> int:
        return len(self.lines)

    def records(self, rows: Sequence[int]) -> tuple[list[dict], dict[int, str]]:
        """The records at `rows` (indices into the batch) and their problems, by position in `rows`."""
        if self.texts is None:
            return self.table.take(pa.array(rows, pa.int64())).to_pylist(), {}
        records, problems = [], {}
        for position, row in enumerate(rows):
            rec, problem = _jsonl_record(self.texts[row], self.lines[row], self.file)
            if problem is not None:
                problems[position] = problem
            records.append(rec)
        return records, problems

    def raw(self) -> RawBatch:
        records, problems = self.records(range(len(self.lines)))
        return RawBatch(self.source, self.file, records, list(self.lines), problems)


COLUMNAR_MAX_BRACKETS = 1000  # per line; pyarrow's JSON parser recurses, and crashes on very deep nesting


def _shallow(data: bytes) -> bool:
    """No line of the batch's UTF-8 text can nest deeper than COLUMNAR_MAX_BRACKETS (it has no more brackets
    than that); counted over the bytes at once (`[` and `{` never occur inside a multi-byte character)."""
    codes = np.frombuffer(data, np.uint8)
    brackets = (codes | 0x20) == 0x7B  # `[` (0x5B) and `{` (0x7B), nothing else
    if np.count_nonzero(brackets) <= COLUMNAR_MAX_BRACKETS:
        return True
    per_line = np.bincount(np.searchsorted(np.flatnonzero(codes == 0x0A), np.flatnonzero(brackets)))
    return int(per_line.max()) <= COLUMNAR_MAX_BRACKETS


def _jsonl_columnar(name: str, path: str, texts: list[str], lines: list[int]) -> ColumnarBatch:
    import pyarrow.json as pa_json

    text = "\n".join(texts)
    data = text.encode("utf-8")
    table = None
    if _shallow(data):
        options = pa_json.ReadOptions(use_threads=False, block_size=len(data) + 1)
        with contextlib.suppress(pa.ArrowException):  # stricter than json.loads (tested): then read per record
            table = pa_json.read_json(pa.BufferReader(data), read_options=options)
        if table is not None and table.num_rows != len(texts):  # e.g. two objects on one line
            table = None
    return ColumnarBatch(name, path, table, lines, texts, escapes="\\" in text)


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """The same items in the same order, produced on a background thread up to `depth` ahead of the caller
    (pyarrow's JSON parse, gzip and numpy release the GIL, so reading overlaps the caller's work). The
    producer's exception is raised where its item would have come; leaving early stops the producer."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def offer(entry: tuple) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                ready.put(entry, timeout=0.05)
                return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((end, None))
        except BaseException as exc:  # handed to the caller
            offer((end, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="prefcli-read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            item, error = ready.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        producer.join()


def _iter_jsonl_columnar(fh, path: str, name: str, batch_rows: int) -> Iterator[ColumnarBatch]:
    """The lines _iter_jsonl reads (the text file's lines, blank ones skipped), from large reads."""
    texts: list[str] = []
    lines: list[int] = []
    lineno, rest = 0, ""
    while True:
        chunk = fh.read(1 << 22)
        parts = (rest + chunk).split("\n")
        rest = parts.pop() if chunk else ""
        for i, part in enumerate(parts, start=lineno + 1):
            if part[:1] == "{" or part.strip():
                texts.append(part)
                lines.append(i)
                if len(texts) >= batch_rows:
                    yield _jsonl_columnar(name, path, texts, lines)
                    texts, lines = [], []
        lineno += len(parts)
        if not chunk:
            break
    if texts:
        yield _jsonl_columnar(name, path, texts, lines)


def _iter_csv(fh, path: str, name: str, batch_rows: int) -> Iterator[RawBatch]:
    reader = csv.DictReader(fh)
    if not reader.fieldnames:
        raise InputError(f"{path}: empty CSV (no header row)")
    repeated = next((c for i, c in enumerate(reader.fieldnames) if c in reader.fieldnames[:i]), None)
    if repeated is not None:
        raise InputError(f"{path}: line 1: column '{repeated}' appears twice in the header")
    records, lines = [], []
    for i, row in enumerate(reader, start=2):
        if None in row:
            raise InputError(f"{path}: line {reader.line_num}: more fields than the header has")
        records.append({k: _csv_value(v) for k, v in row.items()})
        lines.append(i)
        if len(records) >= batch_rows:
            yield RawBatch(name, path, records, lines)
            records, lines = [], []
    if records:
        yield RawBatch(name, path, records, lines)


def _csv_value(value: str | None) -> Any:
    """CSV cells are text; JSON-looking cells (lists/objects) are decoded so nested layouts map."""
    if value is None or value == "":
        return None
    stripped = value.strip()
    if stripped[:1] in "[{":
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(stripped)
    return value


def _iter_parquet(pf: pq.ParquetFile, path: str, name: str, batch_rows: int,
                  columnar: bool = False) -> Iterator[RawBatch | ColumnarBatch]:
    names = pf.schema_arrow.names
    repeated = next((c for i, c in enumerate(names) if c in names[:i]), None)
    if repeated is not None:
        raise InputError(f"{path}: column '{repeated}' appears twice")
    line = 1
    for batch in pf.iter_batches(batch_size=batch_rows):
        lines = list(range(line, line + batch.num_rows))
        if columnar:
            yield ColumnarBatch(name, path, pa.Table.from_batches([batch]), lines)
        else:
            yield RawBatch(name, path, batch.to_pylist(), lines)
        line += batch.num_rows


def _iter_bytes(data: bytes, path: str, name: str, batch_rows: int) -> Iterator[RawBatch]:
    if not data:
        raise InputError(f"{path}: empty input")
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[:4] == b"PAR1":
        yield from _iter_parquet(pq.ParquetFile(pa.BufferReader(data)), path, name, batch_rows)
        return
    text = data.decode("utf-8")
    fh = _io.StringIO(text)
    first = text.lstrip()[:1]
    if first == "[" or (first == "{" and _peek_json_kind(fh) == "document"):
        yield from _iter_json_document(text, path, name, batch_rows)
    elif first == "{":
        yield from _iter_jsonl(fh, path, name, batch_rows)
    else:
        yield from _iter_csv(fh, path, name, batch_rows)


def _iter_datasets(ds, path: str, name: str, batch_rows: int) -> Iterator[RawBatch]:
    line = 1
    for batch in ds.iter(batch_size=batch_rows):
        keys = list(batch.keys())
        n = len(batch[keys[0]]) if keys else 0
        records = [{k: batch[k][i] for k in keys} for i in range(n)]
        yield RawBatch(name, path, records, list(range(line, line + n)))
        line += n


def _iter_saved_dataset(path: str, name: str, batch_rows: int) -> Iterator[RawBatch]:
    import datasets

    loaded = datasets.load_from_disk(path)
    splits = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    for ds in splits:
        yield from _iter_datasets(ds, path, name, batch_rows)


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """`hf:NAME[:CONFIG][@SPLIT]` -> (name, config, split); split defaults to train."""
    body = spec[3:]
    body, _, split = body.partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise InputError(f"{spec}: expected hf:NAME[:CONFIG][@SPLIT]")
    return name, config or None, split or "train"


def _iter_hf(spec: str, name: str, batch_rows: int) -> Iterator[RawBatch]:
    import datasets

    ds_name, config, split = parse_hf_spec(spec)
    try:
        ds = datasets.load_dataset(ds_name, config, split=split, streaming=True)
    except Exception as exc:  # datasets raises many types; all mean "could not load"
        raise InputError(f"{spec}: could not load dataset ({exception_summary(exc)})") from None
    records, lines, line = [], [], 1
    for rec in ds:
        records.append(dict(rec))
        lines.append(line)
        line += 1
        if len(records) >= batch_rows:
            yield RawBatch(name, spec, records, lines)
            records, lines = [], []
    if records:
        yield RawBatch(name, spec, records, lines)


def read_text_list(path: str) -> list[str]:
    """Read a plain list of texts: .txt is one per line, JSON/JSONL may hold strings or objects."""
    lower = path.lower()
    if lower.endswith((".txt", ".txt.gz")):
        try:
            with _open_text(path) as fh:
                return [line.rstrip("\n") for line in fh if line.strip()]
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: unreadable ({exception_summary(exc)})") from None
    raise InputError(f"{path}: not a plain text list")


def read_records(path: str | os.PathLike) -> tuple[list[dict], list[int]]:
    """Every record of one JSON, JSONL or CSV file with its line/record number.

    A directory written by Argilla's `Dataset.to_disk` stands for its `records.json`.
    """
    spec = str(path)
    if Path(spec).is_dir():
        if not (Path(spec) / "records.json").exists():
            raise InputError(f"{spec}: directory has no records.json (expected an Argilla dataset directory)")
        spec = str(Path(spec) / "records.json")
    elif spec != STDIO and not Path(spec).exists():
        raise InputError(f"{spec}: no such file")
    records: list[dict] = []
    lines: list[int] = []
    for batch in iter_raw(spec):
        for index, reason in batch.problems.items():
            raise InputError(f"{spec}: record {batch.lines[index]}: {reason}")
        records.extend(batch.records)
        lines.extend(batch.lines)
    return records, lines
