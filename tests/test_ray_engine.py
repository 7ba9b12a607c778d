"""The Ray Data engine's distributed algorithms (prefcli/engines) against the local stage's decisions.

One local Ray cluster for the whole session (starting one costs ~15 s on the 2-core box); every test here
skips with the reason when Ray is not installed, except the one that checks the pip hint.
"""

from __future__ import annotations

import functools
import glob
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE_DATA
from dedup_data import alpaca_instructions, hh_first_prompts, prompt_pairs, variants_of
from prefcli.errors import InputError
from prefcli.models.embed import STATIC, build_embedder
from prefcli.report import SET_ASIDE_REASON, SET_ASIDE_STAGE
from prefcli.stages.dedup import (DedupOptions, NeighbourGraph, dedup, exact_groups, keep_priority, label_rows,
                                  stage_texts, text_keys)
from prefcli.stages.ingest import load_pairs

DEDUP_COLUMNS = ["pair_id", "dedup_cluster", "dedup_is_rep", "dedup_reason"]
SAMPLE_SOURCES = ["hh_rlhf.jsonl.gz", "multi_response.jsonl", "oasst_trees.jsonl", "pairwise.csv",
                  "pairwise_signed.json", "trl_conversational.jsonl", "trl_standard.jsonl", "votes.json"]


@pytest.fixture(scope="module")
def sample_table() -> pa.Table:
    return load_pairs([str(SAMPLE_DATA / name) for name in SAMPLE_SOURCES])


def blocks(ray, table: pa.Table, n: int = 6):
    step = -(-table.num_rows // n)
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)])


def gather(ds) -> pa.Table:
    from prefcli.engines.ray_data import gather_table

    return gather_table(ds)


def local_exact(table: pa.Table, options: DedupOptions):
    """The local stage's exact pass alone: label_rows over an empty neighbour graph."""
    texts = stage_texts(table, options.on)
    priority = keep_priority(table, texts, options.keep, options.seed)
    none = np.zeros(0, np.int64)
    graph = NeighbourGraph(none, none, np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32))
    return label_rows(table, exact_groups(text_keys(texts)), graph, None, options, None, priority)


def decisions(out: pa.Table, set_aside: pa.Table | None, columns=DEDUP_COLUMNS) -> list[tuple]:
    """Every row's dedup decision (kept and set aside), as sorted tuples: Ray's row order is its own."""
    parts = [out.select(columns)]
    if set_aside is not None:
        parts.append(set_aside.select(columns))
    return sorted(tuple(r.values()) for r in pa.concat_tables(parts).to_pylist())


def set_aside_reasons(table: pa.Table | None) -> list[tuple]:
    if table is None:
        return []
    return sorted(zip(table.column("pair_id").to_pylist(), table.column(SET_ASIDE_REASON).to_pylist(),
                      table.column(SET_ASIDE_STAGE).to_pylist()))


# --------------------------------------------------------------------------- no Ray: the hint

def test_missing_ray_is_one_line_pip_hint(monkeypatch):
    from prefcli.engines import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    with pytest.raises(InputError) as err:
        require_ray()
    message = str(err.value)
    assert "\n" not in message and "pip install 'prefcli[ray]'" in message


def test_engine_modules_import_without_ray():
    """Importing the engine modules never imports Ray: only calling into them does."""
    code = "import sys, prefcli.engines.ray_data, prefcli.engines.ray_dedup; print('ray' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# --------------------------------------------------------------------------- exact dedup

@pytest.mark.parametrize("keep", ["first", "longest", "strongest", "random"])
def test_exact_dedup_decisions_equal_local_on_sample_data(ray_cluster, sample_table, keep):
    from prefcli.engines.ray_dedup import exact_dedup

    options = DedupOptions(on="pair" if keep == "longest" else "prompt", keep=keep, seed=3, drop=True)
    local = local_exact(sample_table, options)
    result = exact_dedup(blocks(ray_cluster, sample_table), options)
    out, aside = gather(result.out), gather(result.set_aside)
    assert sorted(out.column("pair_id").to_pylist()) == sorted(local.out.column("pair_id").to_pylist())
    assert decisions(out, aside, DEDUP_COLUMNS + ["dedup_sim_to_rep"]) == \
        decisions(local.out, local.set_aside, DEDUP_COLUMNS + ["dedup_sim_to_rep"])
    assert set_aside_reasons(aside) == set_aside_reasons(local.set_aside)
    assert out.schema.names == local.out.schema.names  # no internal column leaks
    for stat in ("rows_in", "unique_texts", "exact_duplicates", "clusters", "representatives", "rows_out",
                 "rows_removed"):
        assert result.stats[stat] == local.stats[stat], stat
    assert local.stats["exact_duplicates"] > 0  # the sample has repeated prompts: the test decides something


@pytest.mark.slow
def test_exact_dedup_on_real_file_in_eight_part_files(ray_cluster, shared_data, tmp_path):
    """HH-RLHF harmless test (2.3k pairs, natural prompt repeats) as an 8-part Parquet dataset: the global row
    index follows the parts in order, so "first" keeps the same row as the local run on the whole file."""
    from prefcli.engines.ray_data import ROW, read_parquet_dataset, write_parquet_dataset
    from prefcli.engines.ray_dedup import exact_dedup

    table = load_pairs(str(shared_data / "hh-rlhf-harmless" / "test.jsonl.gz"))
    manifest = write_parquet_dataset(blocks(ray_cluster, table, 8), str(tmp_path / "pairs"))
    assert len(manifest["files"]) == 8 and manifest["rows"] == table.num_rows
    ds = read_parquet_dataset(str(tmp_path / "pairs"))
    indexed = gather(ds).sort_by(ROW)
    assert indexed.column(ROW).to_pylist() == list(range(table.num_rows))
    assert indexed.column("pair_id").to_pylist() == table.column("pair_id").to_pylist()
    for keep in ("first", "random"):
        options = DedupOptions(keep=keep, drop=True)
        local = local_exact(table, options)
        result = exact_dedup(ds, options)
        out, aside = gather(result.out), gather(result.set_aside)
        assert decisions(out, aside) == decisions(local.out, local.set_aside)
        assert set_aside_reasons(aside) == set_aside_reasons(local.set_aside)
        assert local.stats["exact_duplicates"] > 0 and result.stats["rows_out"] == local.stats["rows_out"]


def test_blank_text_is_the_local_one_line_error(ray_cluster, sample_table):
    from prefcli.engines.ray_dedup import exact_dedup

    chosen = sample_table.column("chosen").to_pylist()
    chosen[150] = "   "
    bad = sample_table.set_column(sample_table.column_names.index("chosen"), "chosen", pa.array(chosen))
    with pytest.raises(InputError) as local_err:
        local_exact(bad, DedupOptions(on="chosen"))
    with pytest.raises(InputError) as ray_err:
        exact_dedup(blocks(ray_cluster, bad), DedupOptions(on="chosen"))
    assert str(ray_err.value) == str(local_err.value)
    assert str(ray_err.value) == "row 150: empty chosen text (dedup --on chosen needs text to compare)"


def test_prefcli_error_inside_a_task_comes_out_as_itself(ray_cluster):
    from prefcli.engines.ray_data import one_line_errors, ordered_context

    ordered_context()  # what every engine entry point sets up

    def bad_rows(batch):
        raise InputError("row 3: not a conversation")

    with pytest.raises(InputError) as err:
        with one_line_errors():
            ray_cluster.data.range(4).map_batches(bad_rows).materialize()
    assert type(err.value) is InputError and str(err.value) == "row 3: not a conversation"


# --------------------------------------------------------------------------- semantic dedup

@pytest.mark.parametrize("on", ["prompt", "pair"])
def test_partitioned_semantic_dedup_recovers_local_groups_on_sample_data(ray_cluster, sample_table, on):
    """Measured (static model, threshold 0.9, 4 k-means clusters x top-2): the same decisions as the local
    all-pairs run for every row, i.e. recall 1.0 of the local duplicate pairs (prompt: 43 clusters of 211
    rows, 18 semantic duplicates; pair: 44 clusters, 144 semantic duplicates)."""
    from prefcli.engines.ray_dedup import semantic_dedup

    options = DedupOptions(on=on, threshold=0.9, drop=True)
    local = dedup(sample_table, build_embedder(STATIC), options).result
    result = semantic_dedup(blocks(ray_cluster, sample_table), functools.partial(build_embedder, STATIC), options,
                            n_clusters=4, replicas=2)
    out, aside = gather(result.out), gather(result.set_aside)
    assert local.stats["semantic_duplicates"] > 0
    assert decisions(out, aside) == decisions(local.out, local.set_aside)
    ours, theirs = similarity_to_rep(out, aside), similarity_to_rep(local.out, local.set_aside)
    assert ours.keys() == theirs.keys()
    for pair, sim in theirs.items():
        assert (sim is None and ours[pair] is None) or abs(ours[pair] - sim) <= 1e-6, pair
    for stat in ("unique_texts", "exact_duplicates", "semantic_duplicates", "clusters", "rows_out"):
        assert result.stats[stat] == local.stats[stat], stat


def test_partitioned_cascade_matches_local_cascade_on_sample_data(ray_cluster, sample_table, embedder):
    """The local default (static model proposes, MiniLM verifies), partitioned: the same decisions on every row
    and the same verifier similarities to the representative (measured on 211 rows: all equal)."""
    from prefcli.engines.ray_dedup import semantic_dedup

    options = DedupOptions(drop=True)  # threshold 0.92 on MiniLM's cosine, proposals at 0.8 on the static one
    local = dedup(sample_table, build_embedder(STATIC), options, verifier=embedder).result
    verifier = functools.partial(build_embedder, cache_dir=os.environ["PREFCLI_CACHE_DIR"], device="cpu")
    result = semantic_dedup(blocks(ray_cluster, sample_table), functools.partial(build_embedder, STATIC), options,
                            n_clusters=4, replicas=2, verifier_factory=verifier)
    out, aside = gather(result.out), gather(result.set_aside)
    assert local.stats["semantic_duplicates"] > 0 and result.stats["cascade"]
    assert decisions(out, aside) == decisions(local.out, local.set_aside)
    ours, theirs = similarity_to_rep(out, aside), similarity_to_rep(local.out, local.set_aside)
    for pair, sim in theirs.items():
        assert (sim is None and ours[pair] is None) or abs(ours[pair] - sim) <= 1e-5, pair


@pytest.mark.slow
def test_partitioned_recall_against_local_graph_on_real_prompts(ray_cluster, shared_data):
    """360 real prompts and one constructed variant each, split into 6 k-means clusters: with top-2 borders
    the partitioned run keeps >= 98% of the local run's duplicate row pairs (measured: 1.0) and finds the
    local graph's linking edges."""
    from prefcli.engines.ray_dedup import semantic_dedup

    prompts = alpaca_instructions(shared_data)[:180] + hh_first_prompts(shared_data, 180)
    base = list(dict(zip(text_keys(prompts), prompts)).values())
    table = prompt_pairs(base + [v for _, _, v in variants_of(base, seed=5)])
    options = DedupOptions(threshold=0.9)
    run = dedup(table, build_embedder(STATIC), options)
    src, dst = run.graph.edges_at(options.threshold, options.lexical)
    first = run.groups.first_row
    local_edges = {(min(a, b), max(a, b)) for a, b in zip(first[src].tolist(), first[dst].tolist())}
    result = semantic_dedup(blocks(ray_cluster, table), functools.partial(build_embedder, STATIC), options,
                            n_clusters=6, replicas=2)
    edges = {(min(a, b), max(a, b)) for a, b in zip(result.edges.column("src").to_pylist(),
                                                    result.edges.column("dst").to_pylist())}
    ids = table.column("pair_id").to_pylist()
    ours = dict(zip(*(gather(result.out).column(c).to_pylist() for c in ("pair_id", "dedup_cluster"))))
    theirs = dict(zip(run.result.out.column("pair_id").to_pylist(), run.result.out.column("dedup_cluster").to_pylist()))
    local_pairs = same_cluster_pairs([theirs[p] for p in ids])
    kept = len(local_pairs & same_cluster_pairs([ours[p] for p in ids])) / len(local_pairs)
    assert len(local_pairs) > 300
    assert kept >= 0.98, kept
    assert len(local_edges & edges) / len(local_edges) >= 0.98
    assert result.stats["kmeans_clusters"] == 6


def similarity_to_rep(out: pa.Table, set_aside: pa.Table) -> dict:
    rows = pa.concat_tables([out, set_aside.select(out.column_names)])
    return dict(zip(rows.column("pair_id").to_pylist(), rows.column("dedup_sim_to_rep").to_pylist()))


def same_cluster_pairs(labels: list[str]) -> set[tuple[int, int]]:
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    return {(a, b) for rows in by_label.values() for i, a in enumerate(rows) for b in rows[i + 1:]}


# --------------------------------------------------------------------------- Parquet datasets

def test_parquet_dataset_round_trip_and_atomic_commit(ray_cluster, sample_table, tmp_path):
    from prefcli.engines.ray_data import MANIFEST, ROW, read_manifest, read_parquet_dataset, write_parquet_dataset

    target = tmp_path / "out" / "pairs"
    manifest = write_parquet_dataset(blocks(ray_cluster, sample_table, 4), str(target))
    assert sorted(os.listdir(target)) == sorted([MANIFEST] + [f["file"] for f in manifest["files"]])
    assert read_manifest(str(target)) == manifest and manifest["rows"] == sample_table.num_rows
    back = gather(read_parquet_dataset(str(target))).sort_by(ROW)
    assert back.drop_columns([ROW]).to_pylist() == sample_table.to_pylist()

    def fail_midway(batch: pa.Table) -> pa.Table:  # the first blocks are written, then a task fails
        if batch.num_rows and max(batch.column(ROW).to_pylist()) >= 100:
            raise RuntimeError("worker lost mid-write")
        return batch

    failing = read_parquet_dataset(str(target)).map_batches(fail_midway, batch_format="pyarrow", batch_size=50)
    with pytest.raises(Exception, match="worker lost mid-write"):
        write_parquet_dataset(failing, str(target))
    # the previous dataset is intact and nothing half-written is left beside it
    assert read_manifest(str(target)) == manifest
    assert sorted(os.listdir(target.parent)) == ["pairs"]
    with pytest.raises(Exception, match="worker lost mid-write"):
        write_parquet_dataset(failing, str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists() and not glob.glob(str(tmp_path / ".fresh.*"))

    # an overwrite swaps in the new dataset whole
    smaller = sample_table.slice(0, 30)
    write_parquet_dataset(blocks(ray_cluster, smaller, 3), str(target))
    assert gather(read_parquet_dataset(str(target))).num_rows == 30
    assert sorted(os.listdir(target.parent)) == ["pairs"]


def test_directory_without_manifest_is_not_a_dataset(ray_cluster, sample_table, tmp_path):
    from prefcli.engines.ray_data import read_parquet_dataset

    half = tmp_path / "half"
    half.mkdir()
    pq.write_table(sample_table, half / "part-000000-000000.parquet")
    with pytest.raises(InputError, match="not a complete prefcli Parquet dataset"):
        read_parquet_dataset(str(half))


# --------------------------------------------------------------------------- row accounting

def test_row_accounting_sums_blocks(ray_cluster, sample_table):
    from prefcli.engines.ray_data import account, block_rows
    from prefcli.engines.ray_dedup import exact_dedup

    ds = blocks(ray_cluster, sample_table, 5).materialize()
    assert block_rows(ds) == [43, 43, 43, 43, 39]
    result = exact_dedup(ds, DedupOptions(drop=True))
    acc = account(ds, result.out, result.set_aside)
    assert acc.holds and acc.rows_in == sample_table.num_rows
    assert acc.rows_out == result.stats["representatives"] > 0
    assert acc.rows_out + acc.rows_set_aside == sum(block_rows(result.out)) + sum(block_rows(result.set_aside))
    with pytest.raises(AssertionError, match="row accounting broken"):
        account(sample_table.num_rows + 1, result.out, result.set_aside)
    kept = exact_dedup(ds, DedupOptions(drop=False))  # flag only: every row stays
    assert account(ds, kept.out, kept.set_aside).rows_out == sample_table.num_rows
