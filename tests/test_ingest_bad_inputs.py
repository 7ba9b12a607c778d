"""Bad-input corpus: each case gives exactly one `prefcli: error: ...` line naming the file/row/column,
exit code 2, no traceback, and no output (not even a temp file) left behind."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE_DATA
from ingest_helpers import assert_one_line_error_result, cli
from prefcli.pairs import build_pairs

GOOD = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"Wrong {i}."} for i in range(50)]


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def pairs_table(**override) -> pa.Table:
    table = build_pairs([[{"role": "user", "content": "Hi?"}]] * 2, ["Hello.", "Hey."], ["Go away.", "No."],
                        source="t")
    for name, values in override.items():
        if values is None:
            table = table.drop_columns([name])
        else:
            table = table.set_column(table.column_names.index(name), name, values)
    return table


def _truncated_gz(d):
    data = gzip.compress(jsonl(GOOD * 40).encode())
    (d / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    return ["ingest", d / "cut.jsonl.gz"], ["cut.jsonl.gz", "truncated or corrupt gzip"]


def _corrupt_parquet(d):
    (d / "bad.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 50)
    return ["ingest", d / "bad.parquet"], ["bad.parquet", "unreadable"]


def _corrupt_parquet_stats(d):
    (d / "bad.parquet").write_bytes(b"not parquet at all")
    return ["stats", d / "bad.parquet"], ["bad.parquet", "not a readable Parquet file"]


def _malformed_json_line(d):
    (d / "m.jsonl").write_text(jsonl(GOOD[:2]) + '{"prompt": "x", "chosen": \n' + jsonl(GOOD[2:4]))
    return ["ingest", d / "m.jsonl"], ["m.jsonl", "line 3", "malformed JSON"]


def _malformed_json_document(d):
    (d / "m.json").write_text('[{"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": }]')
    return ["ingest", d / "m.json"], ["m.json", "malformed JSON at line 2"]


def _missing_column_for_format(d):
    (d / "t.jsonl").write_text(jsonl(GOOD[:3]))
    return ["ingest", d / "t.jsonl", "--format", "pairwise"], ["t.jsonl", "'pairwise' needs a 'first' column",
                                                                "columns seen: prompt, chosen, rejected"]


def _unknown_format(d):
    (d / "t.jsonl").write_text(jsonl(GOOD[:3]))
    return ["ingest", d / "t.jsonl", "--format", "alpaca"], ["--format", "'alpaca' is not one of 'auto'"]


def _bad_map_syntax(d):
    (d / "t.jsonl").write_text(jsonl(GOOD[:3]))
    return ["ingest", d / "t.jsonl", "--map", "prompt"], ["--map", "expected key=value"]


def _bad_map_role(d):
    (d / "t.jsonl").write_text(jsonl(GOOD[:3]))
    return ["ingest", d / "t.jsonl", "--map", "question=q"], ["--map", "unknown field 'question'"]


def _empty_file(d):
    (d / "empty.jsonl").write_text("")
    return ["ingest", d / "empty.jsonl"], ["empty.jsonl", "no records"]


def _undetectable(d):
    (d / "odd.jsonl").write_text(jsonl([{"foo": 1, "bar": 2}]))
    return ["ingest", d / "odd.jsonl"], ["odd.jsonl", "cannot detect the format", "columns seen: foo, bar"]


def _wrong_type_stage_input(d):
    pq.write_table(pairs_table(chosen=pa.array([1, 2])), d / "wt.parquet")
    return ["stats", d / "wt.parquet"], ["wt.parquet", "column 'chosen' has type int64"]


def _empty_text_stage_input(d):
    pq.write_table(pairs_table(rejected=pa.array(["No.", "  "], pa.large_string())), d / "et.parquet")
    return ["stats", d / "et.parquet"], ["et.parquet", "row 1", "column 'rejected' is empty text"]


def _missing_column_stage_input(d):
    pq.write_table(pairs_table(meta=None), d / "mc.parquet")
    return ["stats", d / "mc.parquet"], ["mc.parquet", "missing column 'meta'"]


def _nonexistent(d):
    return ["ingest", d / "nope.jsonl"], ["nope.jsonl", "no such file"]


def _nonexistent_stats(d):
    return ["stats", d / "nope.parquet"], ["nope.parquet", "no such file"]


def _bad_pairing(d):
    return ["ingest", SAMPLE_DATA / "multi_response.jsonl", "--pairing", "best"], ["--pairing", "'best'"]


def _negative_margin(d):
    return ["ingest", SAMPLE_DATA / "multi_response.jsonl", "--min-margin", "-1"], ["--min-margin"]


def _bad_label_scheme(d):
    return ["ingest", SAMPLE_DATA / "pairwise.csv", "--label-scheme", "odd"], ["--label-scheme", "'odd'"]


def _json_scalar(d):
    (d / "s.json").write_text("42\n")
    return ["ingest", d / "s.json"], ["s.json", "JSON top level is int"]


def _jsonl_not_object(d):
    (d / "l.jsonl").write_text(jsonl(GOOD[:1]) + "[1, 2]\n")
    return ["ingest", d / "l.jsonl"], ["l.jsonl", "line 2", "expected a JSON object"]


def _csv_ragged(d):
    (d / "r.csv").write_text("prompt,chosen,rejected\na,b,c\nd,e,f,g\n")
    return ["ingest", d / "r.csv"], ["r.csv", "line 3", "more fields than the header"]


def _not_utf8(d):
    (d / "latin.jsonl").write_bytes('{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}\n'.encode("latin-1"))
    return ["ingest", d / "latin.jsonl"], ["latin.jsonl", "not UTF-8"]


def _glob_no_match(d):
    return ["ingest", str(d / "*.jsonl")], ["glob matched no files"]


def _empty_directory(d):
    (d / "sub").mkdir()
    (d / "sub" / "notes.md").write_text("nothing here")
    return ["ingest", d / "sub"], ["sub", "no JSON, JSONL, Parquet or CSV files"]


CASES = [_truncated_gz, _corrupt_parquet, _corrupt_parquet_stats, _malformed_json_line, _malformed_json_document,
         _missing_column_for_format, _unknown_format, _bad_map_syntax, _bad_map_role, _empty_file, _undetectable,
         _wrong_type_stage_input, _empty_text_stage_input, _missing_column_stage_input, _nonexistent,
         _nonexistent_stats, _bad_pairing, _negative_margin, _bad_label_scheme, _json_scalar, _jsonl_not_object,
         _csv_ragged, _not_utf8, _glob_no_match, _empty_directory]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_bad_input_one_line_error(tmp_path, case):
    data = tmp_path / "in"
    data.mkdir()
    args, fragments = case(data)
    out = tmp_path / "out" / "pairs.parquet"
    if args[0] == "ingest":
        args = [*args, "-o", out]
    result = cli(*args)
    assert_one_line_error_result(result, *fragments)
    assert result.stdout == ""
    leftovers = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert leftovers == []  # neither the output, its rejects file, nor a temp file


def test_failure_keeps_previous_output(tmp_path):
    """A malformed line after many good batches: the earlier output stays byte-identical."""
    out = tmp_path / "pairs.parquet"
    good = tmp_path / "good.jsonl"
    good.write_text(jsonl(GOOD))
    assert cli("ingest", good, "-o", out, "--quiet").exit_code == 0
    before = out.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(jsonl(GOOD * 200) + "{oops\n")
    result = cli("ingest", bad, "-o", out)
    assert_one_line_error_result(result, "bad.jsonl", "line 10001")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "pairs.parquet",
                                                          "pairs.rejects.parquet"]


def test_max_reject_rate_exit_1(tmp_path):
    result = cli("ingest", SAMPLE_DATA / "trl_standard.jsonl", "-o", tmp_path / "o.parquet", "--max-reject-rate",
                 "0.01", "--quiet")
    assert_one_line_error_result(result, "above --max-reject-rate", code=1)
    assert (tmp_path / "o.parquet").exists()  # ran to the end: output written, problem reported
