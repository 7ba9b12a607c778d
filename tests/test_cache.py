"""The shared vector cache: round trips, concurrent readers, crash safety, `prefcli cache info|prune`."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from conftest import assert_one_line_error, run_cli
from prefcli.cache.vectors import VectorStore
from prefcli.text import digest


def keys(n: int, tag: str = "") -> list[str]:
    return [digest(f"{tag}{i}") for i in range(n)]


def test_round_trip_across_instances_and_partial_hits(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(20, 8)).astype(np.float32)
    VectorStore(tmp_path, "embed/m", 8).put(keys(20), values)
    found, got = VectorStore(tmp_path, "embed/m", 8).get(keys(20) + keys(3, "other"))
    assert found.tolist() == [True] * 20 + [False] * 3
    assert np.array_equal(got[:20], values) and not got[20:].any()
    assert VectorStore(tmp_path, "embed/other-model", 8).get(keys(2))[0].tolist() == [False, False]


def test_crash_leftovers_are_ignored_and_reader_survives_prune(tmp_path):
    store = VectorStore(tmp_path, "embed/m", 4)
    store.put(keys(5), np.ones((5, 4), np.float32))
    # a writer killed mid-write leaves only a temp file: never read as an entry
    (store.path / ".tmp-deadbeef.npz").write_bytes(b"\x00partial")
    reader = VectorStore(tmp_path, "embed/m", 4)
    assert reader.get(keys(5))[0].all()
    VectorStore(tmp_path, "embed/m", 4).put(keys(5, "b"), np.zeros((5, 4), np.float32))
    VectorStore(tmp_path, "embed/m", 4).compact()  # replaces both shards under the reader's feet
    found, values = reader.get(keys(5) + keys(5, "b"))
    assert found.all() and values[:5].all() and not values[5:].any()
    assert len(list(store.path.glob("shard-*.npz"))) == 1


def test_cache_info_and_prune_cli(tmp_path):
    old = VectorStore(tmp_path, "embed/m", 4)
    old.put(keys(6), np.ones((6, 4), np.float32))
    stale = time.time() - 10 * 86400
    for shard in old.path.glob("shard-*.npz"):
        os.utime(shard, (stale, stale))
    VectorStore(tmp_path, "embed/m", 4).put(keys(3, "new"), np.ones((3, 4), np.float32))
    info = json.loads(run_cli("cache", "info", "--cache-dir", str(tmp_path), "--json").stdout)
    assert info["tables"]["namespaces"][0]["entries"] == 9
    pruned = json.loads(run_cli("cache", "prune", "--cache-dir", str(tmp_path), "--older-than", "7", "--json").stdout)
    assert pruned["entries_dropped"] == 6 and pruned["bytes_after"] < pruned["bytes_before"]
    found, _ = VectorStore(tmp_path, "embed/m", 4).get(keys(6) + keys(3, "new"))
    assert found.tolist() == [False] * 6 + [True] * 3
    assert_one_line_error(run_cli("cache", "prune", "--cache-dir", str(tmp_path), "--older-than", "-1"),
                          "--older-than")
