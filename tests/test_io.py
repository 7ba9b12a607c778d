"""The I/O door: raw readers (JSON array, object holding a list, JSONL, CSV, Parquet, gz, stdin), atomic
writes, streaming sink and batch reader."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefcli import io
from prefcli.errors import InputError
from prefcli.pairs import build_pairs
from prefcli.schema import pair_schema

ROWS = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(7)]


def records(spec, batch_rows=3):
    return [(r, line) for b in io.iter_raw(str(spec), batch_rows=batch_rows) for r, line in zip(b.records, b.lines)]


@pytest.mark.parametrize("name,writer", [
    ("a.jsonl", lambda p: p.write_text("".join(json.dumps(r) + "\n\n" for r in ROWS))),
    ("a.jsonl.gz", lambda p: p.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))),
    ("a.json", lambda p: p.write_text(json.dumps(ROWS, indent=2))),
    ("b.json", lambda p: p.write_text(json.dumps({"meta": {"v": 1}, "rows": ROWS}, indent=1))),
    ("a.csv", lambda p: p.write_text("prompt,chosen,rejected\n" + "".join(f"p{i},c{i},r{i}\n" for i in range(7)))),
    ("a.parquet", lambda p: pq.write_table(pa.Table.from_pylist(ROWS), p)),
])
def test_raw_readers_same_records(tmp_path, name, writer):
    path = tmp_path / name
    writer(path)
    got = records(path)
    assert [r for r, _ in got] == ROWS
    assert len({line for _, line in got}) == 7


def test_jsonl_lines_are_file_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n\n" for r in ROWS))
    assert [line for _, line in records(path)] == [1, 3, 5, 7, 9, 11, 13]


def test_expand_sources_dirs_and_globs(tmp_path):
    for name in ("x.jsonl", "y.json", "notes.md", "sub/z.csv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{}")
    assert [p.replace(str(tmp_path), "") for p in io.expand_sources([str(tmp_path)])] == [
        "/sub/z.csv", "/x.jsonl", "/y.json"]
    assert io.expand_sources([str(tmp_path / "*.json*")]) == [str(tmp_path / "x.jsonl"), str(tmp_path / "y.json")]
    with pytest.raises(InputError, match="no such file"):
        io.expand_sources([str(tmp_path / "missing.jsonl")])


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    io.write_text("old", target)
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_parquet_sink_commit_and_abort(tmp_path):
    table = build_pairs([[{"role": "user", "content": "q"}]], ["a"], ["b"], source="s")
    with io.ParquetSink(tmp_path / "ok.parquet", pair_schema()) as sink:
        for _ in range(3):
            sink.write(table)
    assert pq.read_table(tmp_path / "ok.parquet").num_rows == 3
    with pytest.raises(ValueError):
        with io.ParquetSink(tmp_path / "no.parquet", pair_schema()) as sink:
            sink.write(table)
            raise ValueError("stop")
    assert not (tmp_path / "no.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.parquet"]


def test_parquet_sink_background_writes_same_bytes_and_errors(tmp_path, monkeypatch):
    """Row groups are written on a background thread: every row comes back in order, and
    a write error (disk full) is raised by the sink, naming the path, with nothing left behind."""
    import errno

    from prefcli.errors import PrefcliError

    n = 3 * io.ROW_GROUP_ROWS // 2
    table = build_pairs([[{"role": "user", "content": f"q{i}"}] for i in range(n)], [f"a{i}" for i in range(n)],
                        [f"b{i}" for i in range(n)], source="s")
    with io.ParquetSink(tmp_path / "streamed.parquet", pair_schema()) as sink:
        for start in range(0, n, 5_000):
            sink.write(table.slice(start, 5_000))
    streamed = pq.ParquetFile(tmp_path / "streamed.parquet")
    assert streamed.read().equals(table)
    assert streamed.num_row_groups == 3  # two flushes on the background thread, and the rest at commit

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    with pytest.raises(PrefcliError, match="full.parquet"):
        with io.ParquetSink(tmp_path / "full.parquet", pair_schema()) as sink:
            for start in range(0, n, 5_000):
                sink.write(table.slice(start, 5_000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.parquet"]


def test_streamed_reads_hold_one_batch(tmp_path):
    """Reading a pairs file batch by batch keeps about one batch in memory, however many row groups came before
    (pyarrow's pre-buffering kept every row group read so far)."""
    import random

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz "
    text = lambda: "".join(rng.choice(letters) for _ in range(400))  # noqa: E731
    n = 40_000
    table = build_pairs([[{"role": "user", "content": f"q{i}"}] for i in range(n)], [text() for _ in range(n)],
                        [f"b{i}" for i in range(n)], source="s")
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=2_000)
    del table
    batch_bytes, most = 0, 0
    for batch in io.iter_pair_batches(tmp_path / "big.parquet", batch_rows=2_000):
        batch_bytes = max(batch_bytes, batch.nbytes)
        most = max(most, pa.total_allocated_bytes())
    assert most < 4 * batch_bytes, (most, batch_bytes)


def test_read_ahead_same_items_errors_in_place_and_stops_early():
    import threading

    assert list(io.read_ahead(iter(range(100)))) == list(range(100))

    def failing():
        yield from range(5)
        raise InputError("f.jsonl: line 6: malformed JSON")

    got = []
    with pytest.raises(InputError, match="line 6"):
        for item in io.read_ahead(failing()):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]

    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    ahead = io.read_ahead(endless())
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    ahead.close()
    assert closed.is_set()
    assert not any(t.name == "prefcli-read-ahead" for t in threading.enumerate())


def test_iter_pair_batches_streams_and_renumbers_rows(tmp_path):
    n = 10
    table = build_pairs([[{"role": "user", "content": f"q{i}"}] for i in range(n)], [f"a{i}" for i in range(n)],
                        [f"b{i}" if i != 7 else " " for i in range(n)], source="s")
    io.write_table(table, tmp_path / "p.parquet")
    with pytest.raises(InputError, match="row 7: column 'rejected' is empty text"):
        list(io.iter_pair_batches(tmp_path / "p.parquet", batch_rows=3))
    good = table.slice(0, 7)
    io.write_table(good, tmp_path / "g.parquet")
    batches = list(io.iter_pair_batches(tmp_path / "g.parquet", batch_rows=3))
    assert [b.num_rows for b in batches] == [3, 3, 1]
