"""`prefcli stats`: exact figures on a hand-built table, rich tables on stdout, --json, stage columns."""

from __future__ import annotations

import json

import pyarrow as pa

from ingest_helpers import cli
from prefcli import io
from prefcli.pairs import build_pairs
from prefcli.schema import with_stage_columns
from prefcli.stages.stats import StatsAccumulator, pair_stats


def table() -> pa.Table:
    prompts = [[{"role": "user", "content": "one two three"}],
               [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
                {"role": "user", "content": "and now?"}],
               [{"role": "user", "content": "x"}]]
    return build_pairs(prompts, ["a long chosen answer", "short", "same"], ["no", "a much longer rejected one", "sama"],
                       source=["s1", "s2", "s1"], label_source=["human", "ai", "human"], chosen_score=[1.0, None, 2.0])


def test_exact_figures():
    stats = pair_stats(table())
    assert stats["rows"] == 3 and stats["sources"] == {"s1": 2, "s2": 1}
    assert stats["label_sources"] == {"human": 2, "ai": 1}
    assert stats["chosen_longer_share"] == 1 / 3 and stats["same_length_share"] == 1 / 3
    assert stats["scored_rows"] == 2
    assert stats["lengths"]["prompt_chars"]["max"] == 2 + 11 + 8 and stats["lengths"]["prompt_chars"]["min"] == 1
    assert stats["lengths"]["prompt_words"]["max"] == 1 + 2 + 2
    assert stats["lengths"]["chosen_words"]["max"] == 4 and stats["lengths"]["rejected_chars"]["min"] == 2
    assert stats["turns"] == {"mean": 5 / 3, "histogram": {"1": 2, "3": 1}}


def test_batches_add_up():
    t = table()
    acc = StatsAccumulator()
    for i in range(3):
        acc.add(t.slice(i, 1))
    whole = pair_stats(t)
    assert acc.result() == whole


def test_cli_json_and_tables(tmp_path):
    t = with_stage_columns(table(), "dedup", {"dedup_cluster": pa.array([0, 1, 0])})
    io.write_table(t, tmp_path / "p.parquet")
    result = cli("stats", tmp_path / "p.parquet", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["rows"] == 3 and payload["stage_columns"] == {"dedup": ["dedup_cluster"]}
    text = cli("stats", tmp_path / "p.parquet").stdout
    for heading in ("sources", "label sources", "lengths", "turns per prompt", "stage columns present", "dedup_cluster"):
        assert heading in text
    assert cli("stats", tmp_path / "p.parquet", "--quiet").stdout == ""
