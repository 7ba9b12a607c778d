"""`prefcli ingest --cache-dir`: only new or changed raw files are parsed; the output stays byte-identical.

Real data: AlpacaEval pairwise judgments and HH-RLHF transcripts from ../shared/data, split into raw files.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import sys
from pathlib import Path

import pytest

from prefcli import io
from prefcli.cache.ingest import DIR, ENTRY
from conftest import run_inproc
from ingest_helpers import cli

ALPACA = "alpaca-eval-annotations/annotations_compact.jsonl.gz"
HH = "hh-rlhf-harmless/test.jsonl.gz"


def real_lines(shared_data: Path, name: str, start: int, stop: int) -> list[str]:
    with gzip.open(shared_data / name, "rt", encoding="utf-8") as fh:
        return list(itertools.islice(fh, start, stop))


@pytest.fixture
def raw(tmp_path, shared_data) -> Path:
    """raw/ with two real AlpacaEval files, each with a real reject (identical chosen and rejected)."""
    lines = real_lines(shared_data, ALPACA, 400, 660)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jsonl").write_text("".join(lines[:200]))
    (tmp_path / "raw" / "b.jsonl").write_text("".join(lines[200:240]))
    (tmp_path / "later").write_text("".join(lines[240:]))
    return tmp_path / "raw"


def ingest_json(*args: str) -> dict:
    proc = run_inproc("ingest", *args, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


FLAGS = {"fmt": "--format"}


def ingest_here(capsys, sources: list[Path], output: Path, cache: Path | None, **options) -> dict:
    """`prefcli ingest ... --json` in this process (fast for tests that run it many times); options by
    their Params names (keep_ties=True, fmt="pairwise")."""
    args = [*sources, "-o", output, *(["--cache-dir", cache] if cache else []), "--json"]
    for name, value in options.items():
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        args += [flag] if value is True else [flag, value]
    result = cli("ingest", *args)
    assert result.exit_code == 0, result.stderr
    sys.stderr.write(result.stderr)  # for capsys, as when the command ran unisolated
    return json.loads(result.stdout)


def same_files(a: Path, b: Path) -> bool:
    rejects = [p.with_name(p.name.replace(".parquet", ".rejects.parquet")) for p in (a, b)]
    return a.read_bytes() == b.read_bytes() and rejects[0].read_bytes() == rejects[1].read_bytes()


def without_paths(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("output", "rejects", "files_parsed", "files_cached")}


def test_only_new_files_are_parsed_and_output_is_byte_identical(tmp_path, raw):
    cache = tmp_path / "cache"
    first = ingest_json(str(raw), "-o", str(tmp_path / "first.parquet"), "--cache-dir", str(cache))
    assert (first["files_parsed"], first["files_cached"]) == (2, 0)
    assert first["set_aside"] > 0  # real rejects are cached and replayed too
    (tmp_path / "later").rename(raw / "c.jsonl")  # the nightly drop

    cold = ingest_json(str(raw), "-o", str(tmp_path / "cold.parquet"))
    warm = ingest_json(str(raw), "-o", str(tmp_path / "warm.parquet"), "--cache-dir", str(cache))
    assert (warm["files_parsed"], warm["files_cached"]) == (1, 2)  # only c.jsonl was parsed
    assert (cold["files_parsed"], cold["files_cached"]) == (3, 0)
    assert same_files(tmp_path / "cold.parquet", tmp_path / "warm.parquet")
    assert without_paths(warm) == without_paths(cold)  # per-source counts and reasons come back too

    again = ingest_json(str(raw), "-o", str(tmp_path / "again.parquet"), "--cache-dir", str(cache))
    assert (again["files_parsed"], again["files_cached"]) == (0, 3)
    assert same_files(tmp_path / "cold.parquet", tmp_path / "again.parquet")


def test_changed_file_or_option_invalidates(tmp_path, raw, capsys):
    cache = tmp_path / "cache"

    def run(output: str, *, cached: bool = True, **options) -> dict:
        return ingest_here(capsys, [raw], tmp_path / output, cache if cached else None, **options)

    run("warmup.parquet")
    (raw / "b.jsonl").write_text((raw / "b.jsonl").read_text() + (tmp_path / "later").read_text())
    changed = run("changed.parquet")
    assert (changed["files_parsed"], changed["files_cached"]) == (1, 1)  # an edited file is parsed again

    for option in ({"keep_ties": True}, {"label_source": "ai"}, {"source_name": "nightly"}, {"fmt": "pairwise"},
                   {"min_margin": 0.5}):
        cached = run("cached.parquet", **option)
        assert cached["files_parsed"] == 2, option  # other options: nothing reused
        run("cold.parquet", cached=False, **option)
        assert same_files(tmp_path / "cold.parquet", tmp_path / "cached.parquet"), option
    assert run("again.parquet", source_name="nightly")["files_cached"] == 2  # each variant has its own entry


def test_damaged_entries_are_ignored_and_rebuilt(tmp_path, raw, capsys):
    cache = tmp_path / "cache"
    ingest_here(capsys, [raw], tmp_path / "cold.parquet", cache)
    entries = sorted(p.parent for p in (cache / DIR).rglob(ENTRY))
    assert len(entries) == 2
    (entries[0] / "pairs.parquet").write_bytes(b"PAR1 not really")  # truncated / overwritten data
    (entries[1] / ENTRY).write_text("{ half a JSON")  # torn metadata

    repaired = ingest_here(capsys, [raw], tmp_path / "repaired.parquet", cache)
    assert repaired["files_parsed"] == 2 and capsys.readouterr().err == ""
    assert same_files(tmp_path / "cold.parquet", tmp_path / "repaired.parquet")
    again = ingest_here(capsys, [raw], tmp_path / "again.parquet", cache)
    assert again["files_cached"] == 2  # the entries were rewritten whole


def test_replay_reproduces_row_groups_split_by_bytes(tmp_path, shared_data, monkeypatch, capsys):
    """Tiny row-group limits force many flushes by rows and by bytes mid-file and across files:
    a replay must feed the sink the same chunks with the same sizes to give the same bytes."""
    lines = real_lines(shared_data, HH, 0, 120)
    for name, part in {"x.jsonl": lines[:70], "y.jsonl": lines[70:]}.items():
        (tmp_path / name).write_text("".join(part))
    monkeypatch.setattr(io, "iter_raw", functools.partial(io.iter_raw, batch_rows=16))
    monkeypatch.setattr(io.parquet, "ROW_GROUP_ROWS", 60)  # read by ParquetSink
    monkeypatch.setattr(io.parquet, "ROW_GROUP_BYTES", 40_000)

    def run(output: str, cache: Path | None) -> Path:
        ingest_here(capsys, [tmp_path / "x.jsonl", tmp_path / "y.jsonl"], tmp_path / output, cache)
        return tmp_path / output

    cold = run("cold.parquet", None)
    run("first.parquet", tmp_path / "cache")
    replayed = run("replayed.parquet", tmp_path / "cache")
    groups = [g.num_rows for g in io.iter_row_groups(cold)]
    assert len(groups) > 2 and len(set(groups)) > 1  # both limits cut groups, mid-file and across files
    assert replayed.read_bytes() == cold.read_bytes()


def test_unwritable_cache_only_loses_the_memo(tmp_path, raw, capsys):
    blocked = tmp_path / "a-file-not-a-dir"
    blocked.write_text("x")
    for output, cache in (("cold.parquet", None), ("blocked.parquet", blocked)):
        stats = ingest_here(capsys, [raw], tmp_path / output, cache)
        assert (stats["files_parsed"], stats["files_cached"]) == (2, 0)
    assert same_files(tmp_path / "cold.parquet", tmp_path / "blocked.parquet")
    assert blocked.read_text() == "x"


def test_cache_info_and_prune_manage_ingest_entries(tmp_path, raw, capsys):
    """`cache info` lists the ingest memo; `prune --older-than` drops entries not replayed since, and
    leftovers of killed writers (hidden temp dirs, entries without entry.json) go after an hour."""
    import os
    import time

    from prefcli.cli.cache import info, prune

    cache = tmp_path / "cache"
    assert ingest_here(capsys, [raw], tmp_path / "first.parquet", cache)["files_parsed"] == 2
    entries = sorted((cache / DIR).glob(f"??/*/{ENTRY}"))
    assert len(entries) == 2
    stale = time.time() - 10 * 86400
    os.utime(entries[0], (stale, stale))  # a.jsonl or b.jsonl: not replayed for 10 days
    leftover = entries[0].parent.parent / f".{entries[0].parent.name}.x.tmp"  # atomic_path's temp name
    (leftover / "pairs.parquet").parent.mkdir()
    (leftover / "pairs.parquet").write_bytes(b"half")
    fresh_leftover = entries[1].parent.parent / f".{entries[1].parent.name}.y.tmp"
    fresh_leftover.mkdir()
    for path in (leftover, leftover / "pairs.parquet"):
        os.utime(path, (stale, stale))

    info(cache_dir=str(cache), json_mode=True)
    row = next(r for r in json.loads(capsys.readouterr().out)["tables"]["namespaces"] if r["namespace"] == DIR)
    assert (row["kind"], row["entries"]) == ("ingest files", 2)

    prune(cache_dir=str(cache), older_than=7, json_mode=True)
    stats = json.loads(capsys.readouterr().out)
    assert stats["ingest_files_dropped"] == 1 and stats["temps_removed"] == 1
    assert not entries[0].exists() and entries[1].exists()
    assert not leftover.exists() and fresh_leftover.exists()  # a live writer's temp dir is left alone

    again = ingest_here(capsys, [raw], tmp_path / "again.parquet", cache)
    assert (again["files_parsed"], again["files_cached"]) == (1, 1)  # only the pruned file is parsed again
    assert same_files(tmp_path / "first.parquet", tmp_path / "again.parquet")
    replayed = entries[1].stat().st_mtime
    assert replayed > time.time() - 60  # a replay counts as a use
