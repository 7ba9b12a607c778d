"""Compare two `prefcli run` workdirs, file by file: is every output identical?

    python benchmarks/compare_workdirs.py A B [--json] [--ignore KEY ...]

Absolute paths that only say where a run happened are replaced by placeholders before comparing:
the workdir (where it is, and where its manifest says it was written), the pipeline file's folder
and that folder's parent (the checkout). So runs in other directories or checkouts compare equal.

Parquet files: same schema (metadata included) and same rows in the same order (`Table.equals`,
with NaN equal to NaN). When they differ the first differing column/row is shown, and whether the
rows are only in a different order (also compared sorted by pair_id when there is one). String
columns that differ only by those paths (the `file` column of rejects files names raw inputs by
absolute path) are compared with the placeholders, and the line says so.
Text files (JSON, JSONL, CSV, ...): identical content, with the placeholders. `.gz` files are
compared decompressed. Other files: bytes.

JSON files that differ as text are compared parsed, without run metadata: timestamps (`*_at`), wall
times (`wall_s`, `seconds`, `*_s`), peak RSS (`peak_rss_mb`) and, in manifest.json, the prefcli
version (`versions.prefcli`), each stage's `key` (a digest of its argv, inputs and versions, which
are compared one by one), `--quiet` in argv, the file mtimes memoised in `files`, and the digests of
the workdir's own files (their names are kept: the files themselves are compared by content, and a
Parquet file may be written with other bytes for the same table, or a JSON file name the workdir).
Digests of the pipeline's raw inputs are compared. More keys to leave out: `--ignore KEY`.

`cache/`, `logs/` and `run.lock` at the top of a workdir are not compared. One line per file, then
a summary; exit 0 when the workdirs are identical, 1 when they differ, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_FORMAT = "prefcli-run-manifest/1"
SKIPPED = {"cache", "logs", "run.lock", "run.lock.holder"}  # top-level entries of a workdir that are not outputs
VOLATILE = re.compile(r"(^|_)(at|s|seconds|timestamp|peak_rss_mb)$")  # finished_at, wall_s, pairs_per_s, ...
TEXT = {".json", ".jsonl", ".csv", ".tsv", ".txt", ".xml", ".md", ".toml", ".yaml", ".yml", ".html", ".log"}


# --------------------------------------------------------------------------- listing and paths

def outputs(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in SKIPPED}


def placeholders(root: Path) -> list[tuple[re.Pattern, str]]:
    """Absolute paths that name where a run happened, not what it wrote, longest first: the workdir (where
    it is now, and where its manifest says it was written, should it have been moved) and the pipeline's
    folder and that folder's parent."""
    names = [(root.resolve(), "<workdir>")]
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        pipeline = Path(manifest["pipeline"])
        names += [(pipeline.parent, "<pipeline-dir>"), (pipeline.parent.parent, "<pipeline-dir>/..")]
        for stage, record in manifest["stages"].items():
            argv, suffix = record.get("argv", []), f"/{stage}/{record.get('output')}"
            for flag, value in itertools.pairwise(argv):
                if flag == "--output" and value.endswith(suffix):
                    names.append((Path(value[: -len(suffix)]), "<workdir>"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return [(re.compile(re.escape(str(path)) + r"(?![\w.-])"), name)
            for path, name in sorted(set(names), key=lambda x: -len(str(x[0]))) if len(path.parts) > 2]


def unplace(text: str, paths: list[tuple[re.Pattern, str]]) -> str:
    for pattern, name in paths:
        text = pattern.sub(name, text)
    return text


# --------------------------------------------------------------------------- values

def same(a, b) -> bool:
    """Equality for Python values read from Parquet/JSON, with NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- Parquet

def column_diff(a, b, names: list[str], label: str = "row") -> str | None:
    """The first column (schema order) whose values differ, its first differing row, and how many differ."""
    differing = []
    for name in names:
        x, y = a.column(name), b.column(name)
        if x.equals(y):
            continue
        xs, ys = x.to_pylist(), y.to_pylist()
        rows = [i for i in range(min(len(xs), len(ys))) if not same(xs[i], ys[i])]
        if rows:
            differing.append((name, rows[0], len(rows), xs[rows[0]], ys[rows[0]]))
    if not differing:
        return None
    name, row, count, x, y = differing[0]
    where = f"pair_id {a.column('pair_id')[row].as_py()!r}" if label == "pair_id" else f"row {row}"
    others = f"; {len(differing) - 1} more column(s) differ: {', '.join(d[0] for d in differing[1:6])}" \
        if len(differing) > 1 else ""
    return f"column {name} {where}: {short(x)} vs {short(y)} ({count} row(s) differ in it){others}"


def row_keys(table) -> list[str]:
    """Each row as a canonical string (NaN spelled NaN), sorted: equal lists = same rows in any order."""
    return sorted(json.dumps(row, sort_keys=True, default=repr) for row in table.to_pylist())


def unplace_columns(a, b, paths_a, paths_b) -> tuple:
    """String columns that differ only in where the run happened (e.g. a rejects file naming its raw input
    by absolute path) get the placeholders too; returns both tables and the names of those columns."""
    names = []
    for name in [n for n in a.column_names if n in b.column_names]:
        x, y = a.column(name), b.column(name)
        if x.equals(y) or not all(pa.types.is_string(c.type) or pa.types.is_large_string(c.type) for c in (x, y)):
            continue
        xs = [v if v is None else unplace(v, paths_a) for v in x.to_pylist()]
        ys = [v if v is None else unplace(v, paths_b) for v in y.to_pylist()]
        if xs != x.to_pylist() or ys != y.to_pylist():
            a = a.set_column(a.column_names.index(name), a.schema.field(name), pa.array(xs, x.type))
            b = b.set_column(b.column_names.index(name), b.schema.field(name), pa.array(ys, y.type))
            names.append(name)
    return a, b, names


def compare_parquet(pa_path: Path, pb_path: Path, paths_a, paths_b) -> tuple[str | None, str]:
    """(why the tables differ or None, a note on what was normalised)."""
    a, b = pq.read_table(pa_path), pq.read_table(pb_path)
    if a.schema.equals(b.schema, check_metadata=True) and a.equals(b):
        return None, ""
    a, b, placed = unplace_columns(a, b, paths_a, paths_b)
    note = f"workdir/checkout paths replaced in column(s) {', '.join(placed)}" if placed else ""
    return compare_tables(a, b), note


def compare_tables(a, b) -> str | None:
    if a.schema.equals(b.schema, check_metadata=True) and a.equals(b):
        return None
    problems = []
    if not a.schema.equals(b.schema):
        fa, fb = {f.name: f for f in a.schema}, {f.name: f for f in b.schema}
        only_a, only_b = [n for n in fa if n not in fb], [n for n in fb if n not in fa]
        changed = [f"{n} {fa[n].type}{'' if fa[n].nullable else ' not null'} vs "
                   f"{fb[n].type}{'' if fb[n].nullable else ' not null'}" for n in fa if n in fb and fa[n] != fb[n]]
        order = [n for n in fa if n in fb] != [n for n in fb if n in fa]
        problems.append("schema: " + "; ".join(
            [f"only in A: {', '.join(only_a)}"] * bool(only_a) + [f"only in B: {', '.join(only_b)}"] * bool(only_b)
            + changed + ["column order differs"] * order))
    elif not a.schema.equals(b.schema, check_metadata=True):
        problems.append("schema metadata differs")
    if a.num_rows != b.num_rows:
        problems.append(f"rows {a.num_rows} vs {b.num_rows}")
    common = [n for n in a.column_names if n in b.column_names]
    a_common, b_common = a.select(common), b.select(common)
    n = min(a.num_rows, b.num_rows)
    first = column_diff(a_common.slice(0, n), b_common.slice(0, n), common)
    if first is None:
        return "; ".join(problems) or None  # equal but for NaN (Table.equals: NaN != NaN)
    if a.num_rows == b.num_rows and row_keys(a_common) == row_keys(b_common):
        problems.append("same rows, only the order differs")
        return "; ".join(problems)
    problems.append(first)
    if "pair_id" in common:
        by_id = column_diff(a_common.sort_by("pair_id").slice(0, n), b_common.sort_by("pair_id").slice(0, n),
                            common, label="pair_id")
        problems.append(f"sorted by pair_id: {by_id}" if by_id else "sorted by pair_id: the same")
    return "; ".join(problems)


# --------------------------------------------------------------------------- text and JSON

def scrub(value, ignore: set[str]):
    """A JSON value without run metadata: timestamps, wall times, peak RSS, keys given with --ignore."""
    if isinstance(value, dict):
        return {k: scrub(v, ignore) for k, v in value.items() if k not in ignore and not VOLATILE.search(k)}
    if isinstance(value, list):
        return [scrub(v, ignore) for v in value]
    return value


def without_run_metadata(doc, ignore: set[str]):
    """`scrub`; in a run manifest also without what says how or where the run happened rather than what it
    computed, and without the digests of the workdir's own files (each is compared itself, by content)."""
    if isinstance(doc, dict) and doc.get("format") == MANIFEST_FORMAT:
        doc = json.loads(json.dumps(doc))  # a copy
        for record in doc.get("stages", {}).values():
            record.pop("key", None)
            record.get("versions", {}).pop("prefcli", None)
            record["argv"] = [arg for arg in record.get("argv", []) if arg != "--quiet"]  # console output only
            record["outputs"] = sorted(record.get("outputs", {}))
            record["inputs"] = [ref[:1] if str(ref[0]).startswith("@") else ref for ref in record.get("inputs", [])]
        doc["files"] = {path: "<output>" if path.startswith("<workdir>") else [memo[0], memo[-1]]
                        for path, memo in doc.get("files", {}).items()}  # [size, mtime_ns, digest]
    return scrub(doc, ignore)


def json_diff(a, b, path: str = "") -> list[str]:
    """Where two JSON values differ, as dotted paths."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in list(a) + [k for k in b if k not in a]:
            if key not in b or key not in a:
                found.append(f"{path}{key}: only in {'A' if key in a else 'B'}")
            else:
                found += json_diff(a[key], b[key], f"{path}{key}.")
        return found
    if isinstance(a, list) and isinstance(b, list):
        found = [d for i, (x, y) in enumerate(zip(a, b)) for d in json_diff(x, y, f"{path}{i}.")]
        return found + [f"{path.rstrip('.') or 'top'}: {len(a)} vs {len(b)} items"] * (len(a) != len(b))
    return [] if same(a, b) else [f"{path.rstrip('.') or 'top'}: {short(a)} vs {short(b)}"]


def read_bytes(path: Path) -> tuple[bytes, str]:
    """Contents (decompressed for .gz) and the suffix that says how to compare them."""
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()), Path(path.stem).suffix
    return path.read_bytes(), path.suffix


def compare_file(rel: str, a: Path, b: Path, paths_a, paths_b, ignore: set[str]) -> tuple[str | None, str]:
    """(None when the two files count as identical, else why not; a note on what was normalised)."""
    if rel.endswith(".parquet"):
        return compare_parquet(a / rel, b / rel, paths_a, paths_b)
    return compare_text(rel, a, b, paths_a, paths_b, ignore), ""


def compare_text(rel: str, a: Path, b: Path, paths_a, paths_b, ignore: set[str]) -> str | None:
    data_a, suffix = read_bytes(a / rel)
    data_b, _ = read_bytes(b / rel)
    if suffix not in TEXT:
        return None if data_a == data_b else f"bytes differ ({len(data_a)} vs {len(data_b)} bytes)"
    text_a = unplace(data_a.decode("utf-8", "replace"), paths_a)
    text_b = unplace(data_b.decode("utf-8", "replace"), paths_b)
    if text_a == text_b:
        return None
    if suffix == ".json":
        try:
            doc_a, doc_b = json.loads(text_a), json.loads(text_b)
        except ValueError:
            doc_a = doc_b = None  # not valid JSON: compared as text
        if doc_a is not None:
            clean_a, clean_b = without_run_metadata(doc_a, ignore), without_run_metadata(doc_b, ignore)
            found = json_diff(clean_a, clean_b)
            if found:
                more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
                return "; ".join(found[:3]) + more
            if clean_a != doc_a or clean_b != doc_b:  # metadata left out: equal values are enough
                return None
            return "same values, formatting or key order differs"
    lines_a, lines_b = text_a.splitlines(), text_b.splitlines()
    for i, (x, y) in enumerate(zip(lines_a, lines_b), start=1):
        if x != y:
            return f"line {i}: {short(x)} vs {short(y)}"
    return f"{len(lines_a)} vs {len(lines_b)} lines" if len(lines_a) != len(lines_b) else "line endings differ"


# --------------------------------------------------------------------------- main

def compare(a: Path, b: Path, ignore: set[str]) -> list[dict]:
    files_a, files_b = outputs(a), outputs(b)
    paths_a, paths_b = placeholders(a), placeholders(b)
    results = []
    for rel in sorted(files_a | files_b):
        note = ""
        if rel not in files_b or rel not in files_a:
            why = f"only in {'A' if rel in files_a else 'B'}"
        else:
            try:
                why, note = compare_file(rel, a, b, paths_a, paths_b, ignore)
            except Exception as exc:  # noqa: BLE001 - an unreadable file is a difference, not a crash
                why = f"could not compare: {type(exc).__name__}: {exc}"
        results.append({"file": rel, "same": why is None, "why": why, "note": note})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path, help="workdir A (e.g. the baseline)")
    parser.add_argument("b", type=Path, help="workdir B (e.g. the new run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY",
                        help="also ignore this JSON key everywhere (repeatable)")
    args = parser.parse_args(argv)
    for root in (args.a, args.b):
        if not root.is_dir():
            parser.error(f"{root}: not a directory")
    results = compare(args.a, args.b, set(args.ignore))
    differ = [r for r in results if not r["same"]]
    if args.json:
        print(json.dumps({"a": str(args.a.resolve()), "b": str(args.b.resolve()), "identical": not differ,
                          "files": len(results), "differ": len(differ), "results": results}, indent=2))
    else:
        for r in results:
            note = f" ({r['note']})" if r["note"] else ""
            print(f"{r['file']}: {'same' if r['same'] else 'differs: ' + r['why']}{note}")
        print(f"{'identical' if not differ else 'DIFFERENT'}: {len(results)} files, {len(differ)} differ "
              f"({args.a} vs {args.b})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
