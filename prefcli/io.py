"""The one door to disk: every read and write of Parquet, JSON, JSONL, CSV and datasets goes here.

- Writes are atomic: a temp file in the target directory, fsync, then rename. A crash or an
  error never leaves a half-written output; the previous file (if any) stays intact.
- `-` reads stdin or writes stdout, so stages can be piped.
- Every failure to read becomes a one-line InputError naming the file (and line, where known).
"""

from __future__ import annotations

import contextlib
import csv
import glob as globlib
import gzip
import io as _io
import json
import os
import re
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError, SchemaError
from .schema import validate

STDIO = "-"
BATCH_ROWS = 4096
ROW_GROUP_ROWS = 64 * 1024
ROW_GROUP_BYTES = 64 * 1024 * 1024  # ParquetSink also flushes at this much buffered data (long texts)
OUTPUT_MARKER = ".prefcli-output.json"  # marks a directory prefcli wrote; not part of its content
RAW_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet", ".csv", ".csv.gz")


# --------------------------------------------------------------------------- atomic writes

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync and rename it over `path`, else delete it.

    Works for files and directories (e.g. `datasets.save_to_disk`).
    """
    target = Path(path)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if target.is_dir() and tmp.is_dir():
            old = target.with_name(f".{target.name}.old")
            remove_path(old)
            os.replace(target, old)
            os.replace(tmp, target)
            remove_path(old)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        remove_path(tmp)
        raise


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """An OSError while writing `path` becomes a one-line error naming it (exit 73 or 74)."""
    try:
        yield
    except OSError as exc:
        from .errors import os_failure

        raise os_failure(exc, path) from None


def remove_path(path: Path) -> None:
    """Delete a file or a whole directory; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        import shutil
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(data: bytes, path: str | os.PathLike) -> None:
    if str(path) == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with atomic_path(path) as tmp, writing(path):
        tmp.write_bytes(data)


def write_text(text: str, path: str | os.PathLike) -> None:
    write_bytes(text.encode("utf-8"), path)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n", path)


def jsonl_lines(rows: Iterator[dict] | list[dict]) -> Iterator[str]:
    """Each row as one JSON line (non-ASCII kept, numpy and dates converted)."""
    for row in rows:
        yield json.dumps(row, ensure_ascii=False, default=_json_default) + "\n"


def write_jsonl(rows: Iterator[dict] | list[dict], path: str | os.PathLike) -> int:
    """Write JSON lines atomically (or to stdout); returns the row count."""
    count = 0
    if str(path) == STDIO:
        for line in jsonl_lines(rows):
            sys.stdout.write(line)
            count += 1
        sys.stdout.flush()
        return count
    with atomic_path(path) as tmp, writing(path), open(tmp, "w", encoding="utf-8") as fh:
        for line in jsonl_lines(rows):
            fh.write(line)
            count += 1
    return count


def _json_default(obj: Any):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _parquet_writer(sink, schema: pa.Schema, compression: str = "zstd") -> pq.ParquetWriter:
    return pq.ParquetWriter(sink, schema, compression=compression,
                            compression_level=3 if compression == "zstd" else None)


def write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write one Arrow table as zstd Parquet, atomically (or to stdout for `-`)."""
    if str(path) == STDIO:
        buffer = _io.BytesIO()
        pq.write_table(table, buffer, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        write_bytes(buffer.getvalue(), STDIO)
        return
    with atomic_path(path) as tmp, writing(path):
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)


class ParquetSink:
    """Streaming atomic Parquet writer: `write(table)` many times, `commit()` once.

    Nothing is visible at `path` until commit; `abort()` (or an exception in a `with`) removes the temp.
    With `staged=TMP` it writes TMP and `commit()` only finishes the file: an OutputPlan renames it
    together with the command's other outputs. With `deliver`, stdout bytes are handed over at commit
    instead of written. An OSError while writing names `path` (exit 73 or 74).
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, *, keep_chunks: bool = False,
                 compression: str = "zstd", staged: Path | None = None, deliver=None):
        self.path = str(path)
        self.schema = schema
        self.keep_chunks = keep_chunks  # each write() is its own row group, so `iter_row_groups` gives it back
        self.rows = 0
        self._stdout = self.path == STDIO
        self._deliver = deliver
        self._buffer = _io.BytesIO() if self._stdout else None
        self._atomic = None if self._stdout or staged is not None else atomic_path(self.path)
        self._staged = staged
        with self._errors():
            target = self._buffer if self._stdout else (staged or self._atomic.__enter__())
            self._writer = _parquet_writer(target if self._stdout else str(target), schema, compression)
        self._pending: list[pa.Table] = []
        self._pending_rows = self._pending_bytes = 0

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            from .errors import os_failure

            raise os_failure(exc, self.path) from None

    def write(self, table: pa.Table, *, nbytes: int | None = None) -> None:
        """Buffer `table`; `nbytes` is the size it counts for (default table.nbytes: a replay of
        recorded chunks passes the original sizes, so the row groups and the bytes come out the same)."""
        if table.num_rows == 0:
            return
        self._pending.append(table.cast(self.schema) if table.schema != self.schema else table)
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes if nbytes is None else nbytes
        self.rows += table.num_rows
        if self.keep_chunks or self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            group_rows = max(ROW_GROUP_ROWS, self._pending_rows) if self.keep_chunks else ROW_GROUP_ROWS
            with self._errors():
                self._writer.write_table(pa.concat_tables(self._pending), row_group_size=group_rows)
            self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def commit(self) -> None:
        self._flush()
        with self._errors():
            self._writer.close()
        if self._stdout:
            if self._deliver is not None:
                self._deliver(self._buffer.getvalue())
            else:
                write_bytes(self._buffer.getvalue(), STDIO)
        elif self._atomic is not None:
            with self._errors():
                self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        if self._atomic is not None:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
        elif self._staged is not None:
            remove_path(self._staged)

    def __enter__(self) -> "ParquetSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            with contextlib.suppress(BaseException):
                self.abort()
        return False


# --------------------------------------------------------------------------- reading Parquet

def _display_name(path: str | os.PathLike) -> str:
    return "<stdin>" if str(path) == STDIO else str(path)


def _parquet_source(path: str | os.PathLike):
    """A readable Parquet source for a path, or an in-memory buffer of stdin for `-`."""
    name = _display_name(path)
    if str(path) == STDIO:
        data = sys.stdin.buffer.read()
        if not data:
            raise InputError(f"{name}: empty input (expected Parquet)")
        return pa.BufferReader(data)
    if not Path(path).exists():
        raise InputError(f"{name}: no such file")
    if Path(path).is_dir():
        raise InputError(f"{name}: is a directory, expected a Parquet file")
    return str(path)


@contextlib.contextmanager
def _parquet_errors(path: str | os.PathLike) -> Iterator[None]:
    try:
        yield
    except InputError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{_display_name(path)}: not a readable Parquet file ({_short(exc)})") from None


def read_table(path: str | os.PathLike, *, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file (or stdin for `-`) with a one-line error on failure."""
    with _parquet_errors(path):
        return pq.read_table(_parquet_source(path), columns=columns)


def read_pairs(path: str | os.PathLike, *, require: dict[str, str] | None = None) -> pa.Table:
    """Read a pairs Parquet file and validate it against the canonical schema."""
    return validate(read_table(path), where=_display_name(path), require_stage=require)


def iter_pair_batches(path: str | os.PathLike, *, batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """Stream a pairs Parquet file (or stdin) as validated tables of at most `batch_rows` rows,
    so a reader never holds the whole file (e.g. `prefcli stats` on millions of pairs)."""
    name = _display_name(path)
    with _parquet_errors(path):
        source = pq.ParquetFile(_parquet_source(path))
        validate(source.schema_arrow.empty_table(), where=name)
        offset = 0
        for batch in source.iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            try:
                yield validate(table, where=name)
            except SchemaError as exc:  # re-number the row from the file's start
                raise SchemaError(_renumber(str(exc), offset)) from None
            offset += table.num_rows


def iter_row_groups(path: str | os.PathLike) -> Iterator[pa.Table]:
    """Each row group of a Parquet file as one table, in file order (one-line InputError if unreadable)."""
    with _parquet_errors(path):
        source = pq.ParquetFile(_parquet_source(path))
        for index in range(source.num_row_groups):
            yield source.read_row_group(index)


def _renumber(message: str, offset: int) -> str:
    return re.sub(r"row (\d+)", lambda m: f"row {int(m.group(1)) + offset}", message, count=1)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


# --------------------------------------------------------------------------- raw sources for ingest

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
        raise InputError(f"{spec}: truncated or corrupt gzip ({_short(exc)})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{spec}: not UTF-8 text ({_short(exc)})") from None
    except RecursionError:
        raise InputError(f"{spec}: nested too deeply to read") from None
    except (pa.ArrowException, OSError, ValueError, csv.Error) as exc:
        raise InputError(f"{spec}: unreadable ({_short(exc)})") from None


def _open_text(path: str):
    if path.lower().endswith(".gz"):
        return _io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _iter_file(path: str, name: str, batch_rows: int, columnar: bool = False) -> Iterator[RawBatch | ColumnarBatch]:
    lower = path.lower()
    if lower.endswith(".parquet"):
        yield from _iter_parquet(pq.ParquetFile(path), path, name, batch_rows, columnar)
    elif lower.endswith((".csv", ".csv.gz")):
        with _open_text(path) as fh:
            yield from _iter_csv(fh, path, name, batch_rows)
    elif lower.endswith((".jsonl", ".jsonl.gz")):
        with _open_text(path) as fh:
            yield from (_iter_jsonl_columnar if columnar else _iter_jsonl)(fh, path, name, batch_rows)
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


def _iter_json_document(text: str, path: str, name: str, batch_rows: int) -> Iterator[RawBatch]:
    try:
        doc, find_problems = loads_checked(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to read") from None
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
    try:
        rec, find_problems = loads_checked(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {lineno}: malformed JSON ({exc.msg})") from None
    except RecursionError:
        raise InputError(f"{path}: line {lineno}: JSON nested too deeply to read") from None
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


def _shallow(text: str, texts: list[str]) -> bool:
    """No line can nest deeper than COLUMNAR_MAX_BRACKETS (it has no more brackets than that)."""
    if text.count("[") + text.count("{") <= COLUMNAR_MAX_BRACKETS:
        return True
    return all(line.count("[") + line.count("{") <= COLUMNAR_MAX_BRACKETS for line in texts)


def _jsonl_columnar(name: str, path: str, texts: list[str], lines: list[int]) -> ColumnarBatch:
    import pyarrow.json as pa_json

    text = "\n".join(texts)
    table = None
    if _shallow(text, texts):
        data = text.encode("utf-8")
        options = pa_json.ReadOptions(use_threads=False, block_size=len(data) + 1)
        with contextlib.suppress(pa.ArrowException):  # stricter than json.loads (tested): then read per record
            table = pa_json.read_json(pa.BufferReader(data), read_options=options)
        if table is not None and table.num_rows != len(texts):  # e.g. two objects on one line
            table = None
    return ColumnarBatch(name, path, table, lines, texts, escapes="\\" in text)


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
        raise InputError(f"{spec}: could not load dataset ({_short(exc)})") from None
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
            raise InputError(f"{path}: unreadable ({_short(exc)})") from None
    raise InputError(f"{path}: not a plain text list")


# --------------------------------------------------------------------------- workdir helpers (`prefcli run`)

def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """xxh3-128 hex of a file's bytes (streamed), or of a directory's sorted (name, digest) list.

    A content fingerprint for change detection (run manifests, caches), not a security hash:
    xxh3 reads at memory speed, so fingerprinting large raw and output files stays cheap."""
    import xxhash

    target = Path(path)
    if target.is_dir():
        listing = "\n".join(f"{name}\t{file_digest(target / name)}" for name in list_files(target))
        return xxhash.xxh3_128_hexdigest(listing.encode())
    hasher = xxhash.xxh3_128()
    try:
        with open(target, "rb") as fh:
            while block := fh.read(chunk):
                hasher.update(block)
    except OSError as exc:
        raise InputError(f"{path}: unreadable ({_short(exc)})") from None
    return hasher.hexdigest()


def list_files(directory: str | os.PathLike) -> list[str]:
    """Relative paths of the plain files under `directory`, sorted; temp files of atomic writes left out."""
    root = Path(directory)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.name.endswith(".tmp") and p.name != OUTPUT_MARKER)


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable JSON ({_short(exc)})") from None


def parquet_rows(path: str | os.PathLike) -> int | None:
    """Row count from the Parquet footer (no data read); None when `path` is not Parquet."""
    try:
        return pq.read_metadata(path).num_rows
    except (pa.ArrowException, OSError, ValueError):
        return None


def parquet_columns(path: str | os.PathLike) -> list[str]:
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError, ValueError):
        return []


def recover_interrupted(directory: str | os.PathLike, names: Sequence[str]) -> None:
    """Undo what a kill in the middle of `atomic_path` leaves behind for the entries `names`: stray temps
    and a swapped-out dir. Hidden files of other names are not prefcli's and are left alone."""
    root = Path(directory)
    if not root.is_dir():
        return
    for entry in root.iterdir():
        name = entry.name
        if not any(name.startswith(f".{own}.") for own in names):
            continue
        if name.startswith(".") and name.endswith(".old"):
            target = root / name[1:-len(".old")]
            if not target.exists():
                os.replace(entry, target)  # killed between the two renames: put the previous output back
            else:
                remove_path(entry)
        elif name.startswith(".") and name.endswith(".tmp"):
            remove_path(entry)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, wait: bool = False, timeout: float | None = None,
                   poll: float = 0.2) -> Iterator[None]:
    """Hold an flock on `path` (created if missing, never deleted) for the block.

    Busy: raise LockHeld naming the holder, or with `wait` poll until free (or `timeout` seconds pass).
    The kernel drops the lock when the process dies, so a kill -9 never leaves a stale lock.
    """
    import fcntl
    import time

    from .errors import LockHeld

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown holder"
                if not wait:
                    raise LockHeld(f"{target}: locked by another prefcli run ({holder}); "
                                   f"use --wait to wait for it") from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockHeld(f"{target}: still locked after {timeout:g}s ({holder})") from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# --------------------------------------------------------------------------- review and export helpers

def csv_text(rows: list[dict], columns: Sequence[str]) -> str:
    """CSV text with a header row; fields are quoted as needed (newlines inside cells survive)."""
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_files_into(directory: str | os.PathLike, files: dict[str, Any]) -> None:
    """Fill a new directory (an OutputPlan's staged temp) with files; dict/list values become JSON."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        dest = root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, (dict, list)):
            content = json.dumps(content, indent=2, ensure_ascii=False, default=_json_default) + "\n"
        dest.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)


def save_dataset_to(dataset, directory: str | os.PathLike) -> None:
    """`datasets.Dataset.save_to_disk` into a new directory (an OutputPlan's staged temp)."""
    import datasets

    datasets.disable_progress_bars()  # no bars in cron logs
    dataset.save_to_disk(str(directory))


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
