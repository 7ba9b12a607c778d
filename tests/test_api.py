"""The Python API runs the same Stage objects as the CLI: same tables for the same options."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import prefcli
from prefcli.errors import InputError
from prefcli.stage import STAGES, stage_class

from conftest import SAMPLE_DATA
from ingest_helpers import cli


@pytest.fixture(scope="module")
def hh_pairs(tmp_path_factory, shared_data):
    """The first 400 HH-RLHF harmless test pairs, ingested."""
    out = tmp_path_factory.mktemp("api") / "hh.parquet"
    result = cli("ingest", str(shared_data / "hh-rlhf-harmless" / "test.jsonl.gz"), "-o", str(out), "-q")
    assert result.exit_code == 0, result.stderr
    pq.write_table(pq.read_table(out).slice(0, 400), out)
    return out


def _cli_dedup(src, tmp_path, *args):
    out = tmp_path / "cli.parquet"
    result = cli("dedup", str(src), "-o", str(out), "-q", *args)
    assert result.exit_code == 0, result.stderr
    return pq.read_table(out)


def test_run_stage_dedup_equals_cli_on_real_data(hh_pairs, tmp_path, session_cache):
    table = pq.read_table(hh_pairs)
    from_api = prefcli.run_stage("dedup", table, on="prompt", cache_dir=session_cache)
    from_cli = _cli_dedup(hh_pairs, tmp_path, "--on", "prompt", "--cache-dir", str(session_cache))
    assert from_api.table.equals(from_cli)
    assert from_api.stats["exact_duplicates"] + from_api.stats["semantic_duplicates"] > 0  # HH repeats prompts
    assert from_api.table.num_rows == table.num_rows  # flagged, not dropped


def test_run_stage_drop_accounts_for_every_row(hh_pairs, tmp_path, session_cache):
    table = pq.read_table(hh_pairs)
    result = prefcli.run_stage("dedup", str(hh_pairs), on="pair", drop=True, threshold=0.9, cache_dir=session_cache)
    cli_kept = _cli_dedup(hh_pairs, tmp_path, "--on", "pair", "--drop", "--threshold", "0.9",
                          "--cache-dir", str(session_cache))
    assert result.table.equals(cli_kept)
    assert result.table.num_rows + result.set_aside.num_rows == table.num_rows
    assert set(result.set_aside.column("set_aside_reason").to_pylist()) <= {"exact", "semantic"}


def test_run_stage_against_takes_paths_or_prompts(tmp_path):
    pairs = tmp_path / "p.parquet"
    assert cli("ingest", str(SAMPLE_DATA / "trl_standard.jsonl"), "-o", str(pairs), "-q").exit_code == 0
    by_path = prefcli.run_stage("dedup", pairs, against=[str(SAMPLE_DATA / "eval_prompts.txt")], verify="none")
    prompts = (SAMPLE_DATA / "eval_prompts.txt").read_text().splitlines()
    by_data = prefcli.run_stage("dedup", pairs, against=[p for p in prompts if p.strip()], verify="none")
    assert by_path.stats["contaminated"] > 0
    assert by_path.table.equals(by_data.table)


def test_run_stage_errors_name_the_option():
    table = pa.table({"x": [1]})
    with pytest.raises(InputError, match="--threshold"):
        prefcli.run_stage("dedup", table, threshold=1.5)
    with pytest.raises(InputError, match="--nonsense: no such option"):
        prefcli.run_stage("dedup", table, nonsense=1)
    with pytest.raises(InputError, match="no stage named"):
        prefcli.run_stage("no-such-stage", table)
    with pytest.raises(InputError, match="pair_id"):  # a table is validated like a file
        prefcli.run_stage("dedup", table)


def test_every_stage_declares_its_contract():
    stage_class("dedup")
    assert STAGES, "no stages registered"
    for name, cls in STAGES.items():
        assert cls.name == name
        assert cls.resources.mode in ("batch", "table")
        assert (cls.__doc__ or cls.summary).strip(), name
        for field_name, info in cls.Params.model_fields.items():
            assert info.description, f"{name} --{field_name} has no help"


def test_run_stage_ingest_equals_cli(tmp_path):
    src = SAMPLE_DATA / "trl_standard.jsonl"
    out = tmp_path / "cli.parquet"
    assert cli("ingest", str(src), "-o", str(out), "-q").exit_code == 0
    result = prefcli.run_stage("ingest", str(src))
    assert result.table.equals(pq.read_table(out))
    assert result.stats["written"] == result.table.num_rows
