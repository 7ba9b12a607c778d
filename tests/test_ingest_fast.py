"""The ingest fast path (formats/columnar.py) writes exactly what the per-record path writes: the same
Parquet bytes for pairs and rejects, the same chunk sizes, on sample_data/, on every shared dataset and
on synthetic edge cases; rows it cannot take go through the adapters with their exact reasons."""

from __future__ import annotations

import functools
import gzip
import json
import random
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest

from ingest_helpers import cli
from prefcli import io
from prefcli.formats import IngestOptions, columnar
from prefcli.stages.ingest import SourceIngest
from prefcli.text import normalize

SAMPLE = __import__("conftest").SAMPLE_DATA


@pytest.fixture
def fast_calls(monkeypatch):
    """Counts the batches the fast path took (so the comparisons are not vacuous)."""
    taken = {"batches": 0}
    real = columnar.convert

    def spy(*args, **kwargs):
        done = real(*args, **kwargs)
        taken["batches"] += done is not None
        return done

    monkeypatch.setattr(columnar, "convert", spy)
    return taken


def _both(monkeypatch, tmp_path, src, *args, batch_rows=None) -> dict:
    """Ingest `src` on both paths; assert identical bytes; return the fast run's summary."""
    if batch_rows:
        monkeypatch.setattr(io, "iter_raw", functools.partial(io.iter_raw, batch_rows=batch_rows))
    outs, summaries = {}, {}
    for mode in ("1", "0"):
        out = tmp_path / f"{mode}-{src.name}.parquet"
        per_record = [] if mode == "1" else ["--no-columnar"]
        result = cli("ingest", str(src), "-o", str(out), "--json", *args, *per_record)
        assert result.exit_code == 0, result.stderr
        summaries[mode] = json.loads(result.stdout)
        outs[mode] = (out.read_bytes(), out.with_suffix(".rejects.parquet").read_bytes())
    assert outs["1"][0] == outs["0"][0], f"{src}: pairs differ"
    assert outs["1"][1] == outs["0"][1], f"{src}: rejects differ"
    for key in ("records", "read", "written", "set_aside"):
        assert summaries["1"][key] == summaries["0"][key]
    assert summaries["1"]["per_source"][0]["reasons"] == summaries["0"]["per_source"][0]["reasons"]
    return summaries["1"]


SAMPLE_ARGS = {"pairwise_signed.json": ["--label-scheme", "signed"],
               "nested_custom.json": ["--map", "prompt=conversation_input,chosen=chosen.answer,"
                                      "rejected=reject.answer"]}


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLE.iterdir()
                                        if p.suffix in (".jsonl", ".json", ".gz", ".csv")))
def test_sample_data_identical(monkeypatch, tmp_path, name):
    _both(monkeypatch, tmp_path, SAMPLE / name, *(SAMPLE_ARGS.get(name) or []), batch_rows=7)


def test_sample_data_parquet_inputs_identical(monkeypatch, tmp_path, fast_calls):
    """The standard and pairwise samples as Parquet files take the fast path with the same output."""
    for name in ("trl_standard.jsonl", "pairwise.csv"):
        records, _ = io.read_records(SAMPLE / name)
        path = tmp_path / (name.split(".")[0] + ".parquet")
        pq.write_table(pa.Table.from_pylist(records), path)
        _both(monkeypatch, tmp_path, path, batch_rows=5)
    assert fast_calls["batches"] > 0


SHARED = [("hh-rlhf-harmless/test.jsonl.gz", []),
          ("alpaca-eval-annotations/annotations_compact.jsonl.gz", ["--label-source", "ai"]),
          ("pandalm/testset-v1.json", []),
          ("oasst-en100/en_100_tree.jsonl", []),
          ("oasst2-openpaws/oasst2_filtered.jsonl", []),
          ("llmbar", []),
          ("unieval-topicalchat/topical_chat.json",
           ["--map", "prompt=source,response=system_output,score=scores.overall"])]


SLOW_SHARED = {"alpaca-eval-annotations"}  # the full AlpacaEval file: about 20 s of CPU, the other six under 2 s


@pytest.mark.parametrize("rel,args", [
    pytest.param(rel, args, id=rel.split("/")[0], marks=[pytest.mark.slow] if rel.split("/")[0] in SLOW_SHARED else [])
    for rel, args in SHARED])
def test_shared_data_identical(shared_data, monkeypatch, tmp_path, rel, args):
    src = shared_data / rel
    if src.is_dir():
        for file in sorted(src.rglob("*.json")):
            _both(monkeypatch, tmp_path, file, *args)
    else:
        _both(monkeypatch, tmp_path, src, *args)


def test_shared_alpaca_as_parquet_identical(shared_data, monkeypatch, tmp_path, fast_calls):
    """AlpacaEval judgments (pairwise, labels 1/2, floats, ties, nulls) as Parquet: the fast path takes
    the batches and still sets aside exactly the same rows."""
    src = shared_data / "alpaca-eval-annotations" / "annotations_compact.jsonl.gz"
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(6000), fh)]
    for row in rows:  # one type per column, as Parquet needs
        row["preference"] = None if row["preference"] is None else str(row["preference"])
    path = tmp_path / "alpaca.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    summary = _both(monkeypatch, tmp_path, path, "--label-source", "ai")
    assert summary["set_aside"] > 0 and fast_calls["batches"] > 0


def _edge_rows() -> list[str]:
    """JSON lines mixing plain rows with everything the fast path must leave to the adapters."""
    rng = random.Random(7)
    words = "alpha beta Gamma delta ß ﬁ É 東京 😀 \"quoted\" back\\slash".split()

    def text():
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))

    lines = []
    for i in range(120):
        lines.append(json.dumps({"prompt": f"{i} {text()}", "chosen": text() + " c", "rejected": text() + " r",
                                 "id": i, "ok": bool(i % 2), "note": text()}, ensure_ascii=bool(i % 3)))
    odd = [
        '{"prompt": "p", "chosen": "a", "rejected": "a", "id": 1, "ok": true, "note": "n"}',  # identical
        '{"prompt": "p", "chosen": "   ", "rejected": "b", "id": 1, "ok": true, "note": "n"}',  # blank
        '{"prompt": "\\u3000\\u001c", "chosen": "a", "rejected": "b", "id": 1, "ok": true, "note": "n"}',
        '{"prompt": "p", "chosen": null, "rejected": "b", "id": 1, "ok": true, "note": "n"}',  # null
        '{"prompt": "p", "rejected": "b", "id": 1, "ok": true, "note": "n"}',  # missing
        '{"prompt": "p", "chosen": "a", "rejected": "b", "id": 1, "ok": true, "note": null}',  # null extra
        '{"prompt": "p", "chosen": "a", "chosen": "x", "rejected": "b", "id": 1, "ok": true, "note": "n"}',
        '{"prompt": " [{\\"role\\": \\"user\\", \\"content\\": \\"hi\\"}]", "chosen": "a", "rejected": "b", '
        '"id": 1, "ok": true, "note": "n"}',  # prompt given as JSON messages text
        '{"prompt": "p", "chosen": "{\\"role\\": \\"assistant\\", \\"content\\": \\"x\\"}", "rejected": "b", '
        '"id": 1, "ok": true, "note": "n"}',
        '{"prompt": "Tab\\there\\u0001 and\\r\\n\\fmore  ", "chosen": "a\\u0007", "rejected": "b\\b", "id": -5, '
        '"ok": false, "note": "\\u001f"}',
        '{"prompt": "  MiXeD   Case\\u000b\\u000b ", "chosen": "a", "rejected": "b", "id": 1, "ok": true, "note": "n"}',
    ]
    for k, line in enumerate(odd):
        lines.insert(5 + k * 9, line)
    return lines


def test_edge_cases_identical(monkeypatch, tmp_path, fast_calls):
    src = tmp_path / "edge.jsonl"
    src.write_text("\n".join(_edge_rows()) + "\n\n   \n", encoding="utf-8")
    summary = _both(monkeypatch, tmp_path, src, batch_rows=16)
    reasons = summary["per_source"][0]["reasons"]
    assert reasons["duplicate key 'chosen'"] == 1
    assert reasons["identical chosen and rejected"] == 1
    assert fast_calls["batches"] > 0
    # the same rows as one Parquet file (nulls instead of missing keys, which Parquet cannot tell apart)
    text = "\n".join(line for line in _edge_rows() if '"chosen": "x"' not in line)
    (tmp_path / "nodup.jsonl").write_text(text + "\n", encoding="utf-8")
    records, _ = io.read_records(tmp_path / "nodup.jsonl")
    path = tmp_path / "edge.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    _both(monkeypatch, tmp_path, path, batch_rows=16)


def test_duplicate_key_never_taken_silently(monkeypatch, tmp_path, fast_calls):
    """A repeated key (top level, nested, or spelled with an escape) is set aside with its reason even
    when every other row of the batch is plain."""
    rows = [json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) for i in range(20)]
    rows[3] = '{"prompt": "p", "chosen": "a", "rejected": "b", "rejected": "c"}'
    rows[9] = '{"prompt": "p", "chosen": "a", "rejected": "b", "x": {"k": 1, "k": 2}}'
    rows[15] = '{"prompt": "p", "chosen": "a", "rejected": "b", "\\u0070rompt": "q"}'
    src = tmp_path / "dups.jsonl"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    summary = _both(monkeypatch, tmp_path, src, batch_rows=8)
    assert summary["written"] == 17 and summary["set_aside"] == 3
    assert summary["per_source"][0]["reasons"] == {"duplicate key 'rejected'": 1, "duplicate key 'k'": 1,
                                                   "duplicate key 'prompt'": 1}
    rejects = pq.read_table(tmp_path / "1-dups.jsonl.rejects.parquet").to_pylist()
    assert [r["line"] for r in rejects] == [4, 10, 16]


def test_pairwise_labels_identical(monkeypatch, tmp_path, fast_calls):
    labels = [1, 2, "A", "b", "tie", "left", "model_b", 0, "1.5", "x", None, "2", " Right "]
    for keep_ties in ([], ["--keep-ties"]):
        for kind in ("int", "text"):
            rows = []
            for i in range(60):
                label = labels[i % len(labels)]
                if kind == "int":
                    label = i % 3 if label is not None else None
                rows.append(json.dumps({"instruction": f"q{i}", "output_1": f"one {i}", "output_2": f"two {i}",
                                        "preference": label, "annotator": "gpt"}))
            src = tmp_path / f"pw_{kind}.jsonl"
            src.write_text("\n".join(rows) + "\n", encoding="utf-8")
            _both(monkeypatch, tmp_path, src, *keep_ties, batch_rows=10)
    assert fast_calls["batches"] > 0


def test_chunks_same_sizes(tmp_path):
    """Same tables and the same nbytes per chunk (the output sink cuts row groups by bytes)."""
    src = tmp_path / "t.jsonl"
    src.write_text("\n".join(_edge_rows()) + "\n", encoding="utf-8")
    pairwise = tmp_path / "pw.jsonl"
    pairwise.write_text("\n".join(json.dumps({"instruction": f"q{i}", "output_1": f"a{i}", "output_2": f"b{i}",
                                               "preference": ["1", "B", "tie", None, "2"][i % 5], "n": i})
                                   for i in range(50)) + "\n", encoding="utf-8")
    files = [src, pairwise, SAMPLE / "hh_rlhf.jsonl.gz", SAMPLE / "trl_conversational.jsonl",
             SAMPLE / "trl_standard.jsonl"]
    for path in files:
        runs = {}
        for fast in (True, False):
            job = SourceIngest(path.name, str(path), options=IngestOptions(columnar=fast))
            runs[fast] = list(job.run(io.iter_raw(str(path), batch_rows=16, columnar=fast)))
        assert len(runs[True]) == len(runs[False])
        for (p1, r1), (p0, r0) in zip(runs[True], runs[False]):
            assert p1.equals(p0) and r1.equals(r0)
            assert (p1.nbytes, r1.nbytes) == (p0.nbytes, r0.nbytes), path.name


def test_python_whitespace_class():
    """PY_SPACE is exactly str.isspace (what strip and `\\s` use), so blank texts are never taken."""
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    others = [chr(c) for c in range(0x3100) if not chr(c).isspace() and not 0xD800 <= c < 0xE000]
    arr = pa.array(spaces + others)
    found = pc.match_substring_regex(arr, f"^[{columnar.PY_SPACE}]$").to_pylist()
    assert found == [True] * len(spaces) + [False] * len(others)


def test_ascii_normalize_matches_python():
    rng = random.Random(3)
    texts = ["".join(rng.choice("aBz \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f!~") for _ in range(rng.randint(0, 12)))
             for _ in range(2000)] + ["Straße", "ﬁne", "  ÉCOLE\u3000x ", "Plain Words", "a  b", " a", "a "]
    assert columnar._normalized(pa.array(texts)).to_pylist() == [normalize(t) for t in texts]


def test_json_strings_match_python():
    texts = ["plain", 'q"uo\\te', "new\nline", "tab\tand\x01\x1f", "é 東京 😀", "", "\u2028"]
    assert columnar._escaped(pa.array(texts)).to_pylist() == [json.dumps(t, ensure_ascii=False)[1:-1] for t in texts]


def test_pyarrow_json_not_looser_than_python():
    """The fast path relies on pyarrow refusing (so the batch is read per record) every line json.loads
    refuses: raw control characters, trailing commas, comments, two objects on a line (row count)."""
    docs = ['{"a": "x%sy"}' % chr(c) for c in range(0x20) if c != 0x0A]
    docs += ['{"a": %s"xy"}' % chr(c) for c in range(0x20) if c != 0x0A]
    docs += ['{"a": 1,}', '{"a": 1 /* c */}', "{'a': 1}", '{"a": 01}', '{"a": "\\x"}', '{"a": "\\ud800"}']
    for doc in docs:
        try:
            json.loads(doc)
            continue
        except ValueError:
            pass
        with pytest.raises(pa.ArrowInvalid):
            pa_json.read_json(pa.BufferReader((doc + "\n").encode()))


def test_switch_and_cache_key(tmp_path):
    """The per-record switch is an option (part of the cache key); the fast path's code is in the
    parser digest, so a cache entry never outlives a change to it."""
    from prefcli.cache.ingest import IngestCache, parser_digest, PARSER_CODE

    assert "formats" in PARSER_CODE and columnar.__file__.endswith("formats/columnar.py")
    src = tmp_path / "a.jsonl"
    src.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    cache = IngestCache(tmp_path / "c")
    keys = {cache.key(SourceIngest("a", str(src), options=IngestOptions(columnar=f))) for f in (True, False)}
    assert len(keys) == 2 and parser_digest()


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_columnar_reader_same_lines_and_records(tmp_path, ending):
    """The columnar JSONL reader sees the same lines, numbers and records as the per-record reader
    (blank and whitespace-only lines, CR/CRLF endings, U+2028 in a string, no final newline)."""
    rows = [json.dumps({"prompt": f"p{i}\u2028x", "chosen": "a", "rejected": "b"}, ensure_ascii=False)
            for i in range(40)]
    rows[5:5] = ["", "   ", "\u3000"]
    data = ending.join(rows)
    for name in ("t.jsonl", "t.jsonl.gz"):
        path = tmp_path / name
        path.write_bytes(gzip.compress(data.encode()) if name.endswith(".gz") else data.encode())
        for batch_rows in (1, 7, 100):
            slow = [(r, ln) for b in io.iter_raw(str(path), batch_rows=batch_rows)
                    for r, ln in zip(b.records, b.lines)]
            fast = [(r, ln) for b in io.iter_raw(str(path), batch_rows=batch_rows, columnar=True)
                    for r, ln in zip(b.raw().records, b.raw().lines)]
            assert fast == slow and len(slow) == 40


def test_transcripts_identical(monkeypatch, tmp_path, fast_calls):
    """hh-rlhf transcripts: good pairs mixed with every way a transcript pair is set aside."""
    good = [{"chosen": f"\n\nHuman: q{i} ß\n\nAssistant: a{i}\n\nHuman: more\n\nAssistant: yes {i}",
             "rejected": f"\n\nHuman: q{i} ß\n\nAssistant: a{i}\n\nHuman: more\n\nAssistant: no {i}",
             "id": i} for i in range(50)]
    bad = [{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b", "id": 1},
           {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: a", "id": 1},
           {"chosen": "intro\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b", "id": 1},
           {"chosen": "\n\nHuman: q\n\nAssistant: a\n\nHuman: x", "rejected": "\n\nHuman: q\n\nAssistant: b",
            "id": 1},
           {"chosen": "\n\nHuman: q\n\nAssistant:   ", "rejected": "\n\nHuman: q\n\nAssistant: b", "id": 1},
           {"chosen": "\n\nHuman:  \n\nAssistant: a", "rejected": "\n\nHuman:  \n\nAssistant: b", "id": 1},
           {"chosen": "no turns", "rejected": "\n\nHuman: q\n\nAssistant: b", "id": 1},
           {"chosen": None, "rejected": "\n\nHuman: q\n\nAssistant: b", "id": 1}]
    rows = good[:]
    for k, row in enumerate(bad):
        rows.insert(3 + k * 5, row)
    src = tmp_path / "hh.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    summary = _both(monkeypatch, tmp_path, src, batch_rows=16)
    assert summary["per_source"][0]["format"] == "hh-rlhf" and summary["set_aside"] == len(bad)
    assert fast_calls["batches"] > 0


def test_conversational_identical(monkeypatch, tmp_path, fast_calls):
    """trl conversational rows (message lists) mixed with rows the per-record path must judge."""
    def conv(i):
        return {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q {i} ß"}],
                "chosen": [{"role": "assistant", "content": f"yes {i}"}],
                "rejected": [{"role": "assistant", "content": f"no {i}"}], "id": i}
    rows = [conv(i) for i in range(60)]
    odd = [{**conv(1), "chosen": [{"role": "user", "content": "x"}]},  # not an assistant turn
           {**conv(2), "chosen": [{"role": "assistant"}]},  # no content (null in the batch's columns)
           {**conv(3), "rejected": [{"role": "assistant", "content": "yes 3"}]},  # identical
           {**conv(4), "prompt": []},  # empty prompt
           {**conv(5), "prompt": [{"role": "wizard", "content": "hm"}]},  # unknown role
           {**conv(6), "chosen": [{"role": "user", "content": "Q 6 ß"}, {"role": "assistant", "content": "y"}],
            "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "n"}]},
           {**conv(7), "chosen": [{"role": "human", "content": "Q"}, {"role": "gpt", "content": "y"}],
            "rejected": [{"role": "human", "content": "Q"}, {"role": "gpt", "content": "n"}]},  # continues
           {**conv(8), "chosen": [{"role": "assistant", "content": "  "}]},
           {**conv(9), "chosen": None}]
    for k, row in enumerate(odd):
        rows.insert(2 + k * 6, row)
    src = tmp_path / "conv.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    _both(monkeypatch, tmp_path, src, batch_rows=16)
    _both(monkeypatch, tmp_path, SAMPLE / "trl_conversational.jsonl", batch_rows=4)
    assert fast_calls["batches"] > 0


def test_deep_nesting_left_to_the_record_reader(monkeypatch, tmp_path):
    """pyarrow's JSON parser recurses: a deeply nested line never reaches it (the record reader
    refuses it with a one-line error instead of a crash)."""
    deep = "[" * 100_000 + "]" * 100_000
    src = tmp_path / "deep.jsonl"
    src.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n' * 3
                   + '{"prompt": "q", "chosen": "a", "rejected": "b", "x": ' + deep + "}\n")
    batches = list(io.iter_raw(str(src), columnar=True))
    assert batches[0].table is None
    result = cli("ingest", str(src), "-o", str(tmp_path / "o.parquet"))
    assert result.exit_code == 2 and "line 4" in result.stderr and "nested" in result.stderr


def test_bracket_limit_is_per_line(tmp_path):
    """The nesting guard counts brackets line by line: many shallow lines together still take the fast
    path; one line over the limit (anywhere in the batch) sends the batch to the record reader."""
    limit = io.COLUMNAR_MAX_BRACKETS
    shallow = '{"prompt": "q", "chosen": "a", "rejected": "b", "x": ' + "[" * 10 + "]" * 10 + "}\n"
    src = tmp_path / "many.jsonl"
    src.write_text(shallow * (limit // 5))
    batches = list(io.iter_raw(str(src), columnar=True))
    assert batches[0].table is not None and batches[0].table.num_rows == limit // 5
    for brackets, readable in ((limit - 1, True), (limit + 1, False)):
        line = '{"prompt": "q", "chosen": "a", "rejected": "b", "x": ' + "[" * brackets + "]" * brackets + "}\n"
        src.write_text(shallow * 7 + line + shallow * 7)
        batches = list(io.iter_raw(str(src), columnar=True))
        assert (batches[0].table is not None) is readable
