"""Training exports load in `datasets` with the fields TRL and OpenRLHF read; --where filters; errors are one line."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import assert_one_line_error, run_cli, run_inproc, stream_in_batches
from prefcli import io
from prefcli.errors import InputError
from prefcli.pairs import build_pairs
from prefcli.schema import with_stage_columns
from prefcli.stages import review
from prefcli.stages.export import export_pairs
from review_data import pandalm_pairs, pandalm_records

N_TIES = 4


@pytest.fixture(scope="module")
def pairs_file(shared_data, tmp_path_factory):
    table, _ = pandalm_pairs(pandalm_records(shared_data), n=120, seed=7)
    rng = np.random.default_rng(0)
    tie = np.zeros(table.num_rows, bool)
    tie[:N_TIES] = True
    table = table.set_column(table.column_names.index("tie"), "tie", pa.array(tie))
    table = with_stage_columns(table, "dedup", {"dedup_is_rep": pa.array(rng.random(table.num_rows) < 0.8),
                                                "dedup_cluster": pa.array(np.arange(table.num_rows))})
    root = tmp_path_factory.mktemp("export")
    io.write_table(table, root / "pairs.parquet")
    return root, table


def _export(root, *args):
    proc = run_inproc("export", str(root / "pairs.parquet"), *args, "--quiet")
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def test_standard_jsonl_loads_with_text_fields(pairs_file, tmp_path):
    root, table = pairs_file
    _export(root, "--to", "trl-standard", "-o", str(tmp_path / "out.jsonl"))
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "out.jsonl"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == ["prompt", "chosen", "rejected", "margin", "margin_signed"]
    assert ds.num_rows == table.num_rows - N_TIES
    assert all(ds.features[c].dtype in ("string", "large_string") for c in ("prompt", "chosen", "rejected"))
    assert ds.features["margin"].dtype == "float64"
    kept = table.filter(pc.invert(table.column("tie")))
    assert ds[0]["chosen"] == " " + kept.column("chosen")[0].as_py()
    assert ds[0]["prompt"] == f"User: {kept.column('prompt')[0].as_py()[0]['content']}\n\nAssistant:"
    assert ds[0]["margin_signed"] == pytest.approx(kept.column("margin")[0].as_py())
    assert ds["margin"] == [max(m, 0.0) for m in ds["margin_signed"]] and min(ds["margin_signed"]) < 0


def test_openrlhf_rows_are_whole_conversations(pairs_file, tmp_path):
    root, table = pairs_file
    _export(root, "--to", "openrlhf", "-o", str(tmp_path / "out.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    kept = table.filter(pc.invert(table.column("tie")))
    assert len(rows) == kept.num_rows and set(rows[0]) == {"chosen", "rejected", "margin", "margin_signed"}
    prompt = kept.column("prompt")[0].as_py()
    assert rows[0]["chosen"] == prompt + [{"role": "assistant", "content": kept.column("chosen")[0].as_py()}]
    assert rows[0]["rejected"][:-1] == prompt and rows[0]["rejected"][-1]["role"] == "assistant"


def test_conversational_formats_load_as_message_lists(pairs_file, tmp_path):
    root, table = pairs_file
    _export(root, "--to", "trl-conversational", "-o", str(tmp_path / "conv.jsonl"))
    _export(root, "--to", "hf-dataset", "-o", str(tmp_path / "ds"), "--keep", "pair_id")
    _export(root, "--to", "parquet", "-o", str(tmp_path / "conv.parquet"))
    _export(root, "--to", "trl", "-o", str(tmp_path / "trl.jsonl"))  # conversational is TRL's default
    loaded = [
        datasets.load_dataset("json", data_files=str(tmp_path / "conv.jsonl"), split="train",
                              cache_dir=str(tmp_path / "hf")),
        datasets.load_from_disk(str(tmp_path / "ds")),
        datasets.load_dataset("parquet", data_files=str(tmp_path / "conv.parquet"), split="train",
                              cache_dir=str(tmp_path / "hf")),
    ]
    loaded.append(datasets.load_dataset("json", data_files=str(tmp_path / "trl.jsonl"), split="train",
                                        cache_dir=str(tmp_path / "hf")))
    for ds in loaded:
        assert ds.num_rows == table.num_rows - N_TIES
        row = ds[0]
        assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"]
        assert row["chosen"] == [{"role": "assistant", "content": row["chosen"][0]["content"]}]
        assert row["rejected"][0]["role"] == "assistant"
        assert isinstance(row["margin"], float)
    assert loaded[1].column_names == ["prompt", "chosen", "rejected", "margin", "margin_signed", "pair_id"]


def test_where_filters_with_polars_sql(pairs_file, tmp_path):
    root, table = pairs_file
    _export(root, "--to", "jsonl", "-o", str(tmp_path / "all.jsonl"), "--where",
            "pref_bucket != 'incorrect' AND dedup_is_rep")
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    bucket = np.asarray(table.column("pref_bucket").to_pylist())
    rep = np.asarray(table.column("dedup_is_rep").to_pylist())
    assert 0 < len(rows) == int(((bucket != "incorrect") & rep).sum()) < table.num_rows
    assert all(r["pref_bucket"] != "incorrect" and r["dedup_is_rep"] for r in rows)
    assert {"pair_id", "meta", "prompt", "tie"} <= set(rows[0])  # plain jsonl keeps every column


def test_jsonl_to_stdout_and_bad_where(pairs_file, tmp_path):
    root, table = pairs_file
    proc = run_cli("export", str(root / "pairs.parquet"), "--to", "openrlhf", "-o", "-", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == table.num_rows - N_TIES and set(json.loads(lines[0])) == {"chosen", "rejected", "margin",
                                                                                  "margin_signed"}
    assert json.loads(proc.stderr)["rows_out"] == len(lines)  # the summary stays off the data stream
    out = tmp_path / "never.jsonl"
    proc = run_cli("export", str(root / "pairs.parquet"), "--to", "trl", "-o", str(out), "--where", "nosuch > 1")
    assert_one_line_error(proc, "--where", "unknown column 'nosuch'")
    assert not out.exists()


def test_where_errors_are_input_errors(pairs_file):
    _, table = pairs_file
    with pytest.raises(InputError, match="cannot evaluate"):
        export_pairs(table, "trl", where="margin >")
    with pytest.raises(InputError, match="is not a condition"):
        export_pairs(table, "trl", where="margin + 1")
    proc = run_inproc("export", "x.parquet", "--to", "trl", "--push-to-hub", "nobody/none")
    assert proc.returncode == 2  # x.parquet is missing: fails before any hub call


def test_margin_follows_a_human_flip_until_vote_reruns(pairs_file):
    _, table = pairs_file
    row = N_TIES  # first non-tie row
    outcome = review.TaskOutcome(table.column("pair_id")[row].as_py(), "t1", "flip", 1.0, 1, "{}", "", False)
    flipped = review.apply_verdicts(table, [outcome]).out
    before = table.column("margin")[row].as_py()
    out = export_pairs(flipped, "trl-standard").out
    assert out.column("chosen")[0].as_py() == " " + table.column("rejected")[row].as_py()
    assert before > 0 and out.column("margin_signed")[0].as_py() == pytest.approx(-before)
    assert out.column("margin")[0].as_py() == 0.0  # a reward loss never asks for a negative gap
    floored = export_pairs(flipped, "trl", margin_floor=-1.0)
    assert floored.out.column("margin")[0].as_py() == pytest.approx(max(-before, -1.0))
    revoted = flipped.set_column(flipped.column_names.index("margin"), "margin",
                                 pc.if_else(pc.equal(flipped.column("review_task_id"), "t1"),
                                            pa.scalar(0.7), flipped.column("margin")))
    assert export_pairs(revoted, "trl").out.column("margin")[0].as_py() == pytest.approx(0.7)


def test_repeats_and_non_representatives_are_counted(pairs_file, tmp_path):
    _, table = pairs_file
    kept = table.filter(pc.invert(table.column("tie")))
    doubled = pa.concat_tables([kept, kept.slice(0, 5)])  # five exact repeats of (prompt, chosen, rejected)
    io.write_table(doubled, tmp_path / "doubled.parquet")
    common = ["export", str(tmp_path / "doubled.parquet"), "--to", "trl", "--json"]
    stats = json.loads(run_inproc(*common, "-o", str(tmp_path / "a.jsonl")).stdout)
    assert stats["repeats_left_out"] == 5 and stats["rows_out"] == kept.num_rows
    non_reps = int(pc.sum(pc.invert(kept.column("dedup_is_rep")).cast(pa.int64())).as_py())  # rows written
    assert stats["non_representatives"] == non_reps > 0
    stats = json.loads(run_inproc(*common, "-o", str(tmp_path / "b.jsonl"), "--keep-repeats").stdout)
    assert stats["repeats_left_out"] == 0 and stats["rows_out"] == doubled.num_rows
    proc = run_inproc("export", str(tmp_path / "doubled.parquet"), "--to", "jsonl", "-o", str(tmp_path / "c.jsonl"),
                      "--json")
    assert json.loads(proc.stdout)["rows_out"] == doubled.num_rows  # jsonl writes every row as stored


@pytest.mark.parametrize("to", ["trl", "parquet", "openrlhf"])
def test_export_streams_batch_by_batch_with_the_same_output(pairs_file, tmp_path, monkeypatch, to):
    """The local engine runs export over 7-row batches of its input (repeats found against the rows seen in
    earlier batches): the training file is the same as one run on the whole table, the stats the same."""
    import prefcli
    from prefcli.stages.export import iter_rows

    root, table = pairs_file
    repeats = pa.concat_tables([table, table.slice(3, 20), table.slice(60, 9)])  # repeats across batches
    io.write_table(repeats, tmp_path / "in.parquet")
    whole = prefcli.run_stage("export", repeats, to=to, where="source != 'nothing'")
    calls = stream_in_batches(monkeypatch, 7)
    suffix = ".parquet" if to == "parquet" else ".jsonl"
    proc = run_inproc("export", str(tmp_path / "in.parquet"), "--to", to, "--where", "source != 'nothing'",
                      "-o", str(tmp_path / f"out{suffix}"), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert calls == [7]
    stats = json.loads(proc.stdout)
    assert stats["repeats_left_out"] == whole.stats["repeats_left_out"]
    assert stats["repeats_left_out"] > 20  # 29 repeated rows, one of them a tie
    assert stats["rows_out"] == whole.table.num_rows
    if to == "parquet":  # the same table (the footer's serialised Arrow schema may be spelled differently)
        assert io.read_table(tmp_path / "out.parquet").equals(whole.table)
    else:
        assert (tmp_path / "out.jsonl").read_text() == "".join(io.jsonl_lines(iter_rows(whole.table)))


def test_streamed_export_holds_one_batch_at_a_time(tmp_path, monkeypatch):
    """Streaming keeps memory flat: while the 20th batch is exported, no earlier batch's rows are still held
    (each batch's rows go to a spill file; an empty slice of them had kept all their buffers alive)."""
    import random

    import pyarrow.parquet as pq

    from prefcli.stages.export import ExportStage

    rng = random.Random(0)
    text = lambda: "".join(rng.choice("abcdefghij klmnop") for _ in range(400))  # noqa: E731
    n = 40_000
    table = build_pairs([[{"role": "user", "content": f"q{i}"}] for i in range(n)], [text() for _ in range(n)],
                        [f"b{i}" for i in range(n)], source="s")
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=2_000)
    batch_bytes = table.slice(0, 2_000).nbytes
    del table
    held = []
    real_run = ExportStage.run
    monkeypatch.setattr(ExportStage, "run", lambda self, batch, ctx: held.append(pa.total_allocated_bytes())
                        or real_run(self, batch, ctx))
    assert stream_in_batches(monkeypatch, 2_000) is not None
    proc = run_inproc("export", tmp_path / "big.parquet", "--to", "trl", "-o", tmp_path / "out.jsonl", "--quiet")
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(held) == 20 and max(held) < 6 * batch_bytes, (max(held), batch_bytes)
    assert sum(1 for _ in open(tmp_path / "out.jsonl")) == n
