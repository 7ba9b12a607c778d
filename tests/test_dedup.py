"""dedup stage on real prompts (AlpacaEval instructions, HH-RLHF first turns) with constructed near-duplicates."""

from __future__ import annotations

import collections

import numpy as np
import pyarrow as pa
import pytest

from dedup_data import alpaca_instructions, hh_first_prompts, prompt_pairs, variants_of
from prefcli.cache.vectors import VectorStore
from prefcli.models.embed import CachedEmbedder
from prefcli.models.index import connected_components
from prefcli.report import check_accounting
from prefcli.stages.dedup import DedupOptions, dedup, dedup_new_rows, explain, text_keys

N_EACH = 90


@pytest.fixture(scope="module")
def base_prompts(shared_data) -> list[str]:
    """Distinct real prompts (distinct after normalisation too)."""
    prompts = alpaca_instructions(shared_data)[:N_EACH] + hh_first_prompts(shared_data, N_EACH)
    seen, out = set(), []
    for p, key in zip(prompts, text_keys(prompts)):
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


@pytest.fixture(scope="module")
def variant_table(base_prompts):
    variants = variants_of(base_prompts, seed=7)
    table = prompt_pairs(base_prompts + [v for _, _, v in variants])
    return table, variants


class Counting:
    """An embedder that counts what it is asked to embed (wraps the session's cached embedder)."""

    def __init__(self, inner, fail: bool = False):
        self.inner, self.fail = inner, fail
        self.model_id, self.dim, self.calls = inner.model_id, inner.dim, 0

    def encode(self, texts):
        if self.fail:
            raise AssertionError(f"asked to embed {len(texts)} texts")
        self.calls += len(texts)
        return self.inner.encode(texts)


def fresh_cache(embedder, root, fail: bool = False) -> CachedEmbedder:
    base = Counting(embedder, fail)
    return CachedEmbedder(base, VectorStore(root, f"embed/{base.model_id}", base.dim))


@pytest.mark.slow
def test_constructed_near_duplicates_found_and_distinct_prompts_survive(variant_table, embedder):
    table, variants = variant_table
    n = table.num_rows - len(variants)
    out = dedup(table, embedder, DedupOptions()).result.out
    cluster = out.column("dedup_cluster").to_pylist()
    found, total = collections.Counter(), collections.Counter()
    for i, kind, _ in variants:
        total[kind] += 1
        found[kind] += cluster[n + i] == cluster[i]
    recall = {k: found[k] / total[k] for k in total}
    assert sum(found.values()) / sum(total.values()) >= 0.95, recall
    assert min(recall.values()) >= 0.85, recall
    # every distinct real prompt stays its own representative
    assert len(set(cluster[:n])) == n
    assert all(out.column("dedup_is_rep").to_pylist()[:n])
    reasons = out.column("dedup_reason").to_pylist()
    assert {reasons[n + i] for i, kind, _ in variants if kind in ("case", "whitespace")} == {"exact"}
    assert all(reasons[i] is None for i in range(n))


def test_exact_duplicates_join_first_occurrence_and_are_not_embedded(base_prompts, embedder, tmp_path):
    prompts = base_prompts[:40]
    copies = [p.upper() for p in prompts[:10]] + [f"  {p}  " for p in prompts[10:20]] + prompts[:5]
    table = prompt_pairs(prompts + copies)
    counting = fresh_cache(embedder, tmp_path)
    run = dedup(table, counting, DedupOptions())
    out = run.result.out
    assert counting.embedder.calls == len(prompts) == run.result.stats["unique_texts"]
    reasons = out.column("dedup_reason").to_pylist()[len(prompts):]
    assert reasons == ["exact"] * len(copies)
    cluster = out.column("dedup_cluster").to_pylist()
    originals = list(range(10)) + list(range(10, 20)) + list(range(5))
    assert [cluster[len(prompts) + j] for j in range(len(copies))] == [cluster[i] for i in originals]
    assert out.column("dedup_sim_to_rep").to_pylist()[len(prompts):] == [1.0] * len(copies)


def test_decontamination_flags_planted_eval_prompts(base_prompts, embedder):
    eval_prompts = base_prompts[:8]
    train = base_prompts[8:]
    planted = eval_prompts[:4] + ["Please answer: " + eval_prompts[4], eval_prompts[5].rstrip("?.!") + "",
                                  eval_prompts[6].lower(), "  ".join(eval_prompts[7].split())]
    table = prompt_pairs(train + planted)
    result = dedup(table, embedder, DedupOptions(drop=True), against=eval_prompts).result
    removed = result.set_aside
    contaminated = [r for r, why in zip(removed.column("prompt").to_pylist(),
                                        removed.column("set_aside_reason").to_pylist()) if why == "contaminated"]
    assert sorted(m[0]["content"] for m in contaminated) == sorted(planted)
    assert result.stats["contaminated"] == len(planted)
    assert result.out.column("dedup_against_sim").to_numpy().max() < 0.9
    check_accounting(table.num_rows, result)


def test_embedding_cache_hit_on_second_run_and_one_percent_new(base_prompts, embedder, tmp_path):
    table = prompt_pairs(base_prompts)
    first = fresh_cache(embedder, tmp_path)
    dedup(table, first, DedupOptions())
    assert first.computed == len(base_prompts)
    second = fresh_cache(embedder, tmp_path)  # a new process would start like this
    dedup(table, second, DedupOptions())
    assert second.computed == 0 and second.embedder.calls == 0
    new_prompts = ["How do I repot a root-bound fiddle leaf fig without killing it?",
                   "Write a limerick about a forgetful lighthouse keeper."]
    third = fresh_cache(embedder, tmp_path)
    dedup(prompt_pairs(base_prompts + new_prompts), third, DedupOptions())
    assert third.computed == len(new_prompts)


def test_rethreshold_reuses_graph_without_embedding(variant_table, embedder, tmp_path):
    table, _ = variant_table
    first = dedup(table, embedder, DedupOptions())
    stored = first.graph.to_table(first.groups, table.column("pair_id").to_pylist())
    never = fresh_cache(embedder, tmp_path, fail=True)  # empty cache and an encoder that refuses to run
    again = dedup(table, never, DedupOptions(threshold=0.8), graph_source=lambda fp: stored)
    assert again.result.stats["graph_reused"] and never.computed == 0
    direct = dedup(table, embedder, DedupOptions(threshold=0.8)).result.out
    assert again.result.out.column("dedup_cluster").equals(direct.column("dedup_cluster"))
    assert again.result.stats["semantic_duplicates"] >= first.result.stats["semantic_duplicates"]
    # a graph of other texts is ignored, not misapplied
    other = dedup(prompt_pairs(["Name three rivers in Peru.", "Say hi."]), embedder, DedupOptions())
    wrong = other.graph.to_table(other.groups, ["a", "b"])
    assert not dedup(table, embedder, DedupOptions(), graph_source=lambda fp: wrong).result.stats["graph_reused"]


def test_drop_accounts_for_every_row_and_output_is_deterministic(variant_table, embedder):
    table, _ = variant_table
    one = dedup(table, embedder, DedupOptions(drop=True, keep="random", seed=3)).result
    two = dedup(table, embedder, DedupOptions(drop=True, keep="random", seed=3)).result
    check_accounting(table.num_rows, one)
    assert one.out.equals(two.out) and one.set_aside.equals(two.set_aside)
    assert all(one.out.column("dedup_is_rep").to_pylist())
    assert set(one.set_aside.column("set_aside_reason").to_pylist()) <= {"exact", "semantic"}
    assert set(one.set_aside.column("set_aside_stage").to_pylist()) == {"dedup"}
    kept_ids = set(one.out.column("pair_id").to_pylist()) | set(one.set_aside.column("pair_id").to_pylist())
    assert kept_ids == set(table.column("pair_id").to_pylist())
    flags = [dedup(table, embedder, DedupOptions(keep="random", seed=s)).result.out.column("dedup_is_rep")
             for s in (3, 4)]
    assert flags[0].to_pylist() == [p in set(one.out.column("pair_id").to_pylist())
                                    for p in table.column("pair_id").to_pylist()]
    assert not flags[0].equals(flags[1])  # the seed matters


def test_keep_policies_pick_longest_and_strongest(base_prompts, embedder):
    short = base_prompts[0]
    table = prompt_pairs([short, short + "  ", "Please answer: " + short])
    longest = dedup(table, embedder, DedupOptions(keep="longest")).result.out
    assert longest.column("dedup_is_rep").to_pylist() == [False, False, True]
    strengths = pa.array([0.1, 2.0, -1.0], pa.float64())
    strongest = dedup(table.append_column("pref_mean", strengths), embedder,
                      DedupOptions(keep="strongest")).result.out
    assert strongest.column("dedup_is_rep").to_pylist() == [False, True, False]
    assert strongest.column("dedup_reason").to_pylist() == ["exact", None, "semantic"]


def test_new_rows_dedup_against_kept_set(base_prompts, embedder, tmp_path):
    kept = dedup(prompt_pairs(base_prompts[:60]), embedder, DedupOptions(drop=True)).result.out
    fresh_prompts = base_prompts[60:70]
    new = prompt_pairs([base_prompts[3].lower(), "Please answer: " + base_prompts[5]] + fresh_prompts
                       + [fresh_prompts[0].upper()])
    counting = fresh_cache(embedder, tmp_path)
    counting.encode(base_prompts[:60])  # the kept set is cached, as after the previous run
    before = counting.computed
    result = dedup_new_rows(new, kept, counting, DedupOptions())
    assert counting.computed - before == len(fresh_prompts) + 1  # only new texts are embedded
    out = result.out
    kept_cluster = dict(zip(kept.column("pair_id").to_pylist(), kept.column("dedup_cluster").to_pylist()))
    clusters = out.column("dedup_cluster").to_pylist()
    assert clusters[0] == kept_cluster[kept.column("pair_id")[3].as_py()]
    assert clusters[1] == kept_cluster[kept.column("pair_id")[5].as_py()]
    assert out.column("dedup_reason").to_pylist() == ["exact", "semantic"] + [None] * 10 + ["exact"]
    assert out.column("dedup_is_rep").to_pylist() == [False, False] + [True] * 10 + [False]
    assert result.stats["duplicates_of_kept"] == 2


def test_explain_histogram_and_thresholds(variant_table, embedder):
    table, _ = variant_table
    run = dedup(table, embedder, DedupOptions())
    report = explain(run)
    assert sum(h["texts"] for h in report["histogram"]) == run.result.stats["unique_texts"]
    dups = [t["duplicates"] for t in report["thresholds"]]
    assert dups == sorted(dups, reverse=True) and dups[0] > 0
    at_default = next(t for t in report["thresholds"] if t["threshold"] == 0.92)
    assert at_default["duplicates"] == table.num_rows - run.result.stats["clusters"]
    assert all(s["similarity"] >= t["threshold"] for t in report["thresholds"] for s in t["samples"])


def test_connected_components_label_each_node_with_its_smallest_member():
    """What dedup clusters with: checked against label propagation (each edge takes the smaller label of
    its ends until nothing changes, which leaves every node the smallest index of its component)."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 500, 300), rng.integers(0, 500, 300)
    expected = np.arange(500)
    while True:
        low = np.minimum(expected[a], expected[b])
        if np.array_equal(expected[a], low) and np.array_equal(expected[b], low):
            break
        np.minimum.at(expected, a, low)
        np.minimum.at(expected, b, low)
    assert np.array_equal(connected_components(500, a, b), expected)
    assert np.array_equal(connected_components(4, [], []), np.arange(4))


def test_ivf_search_finds_planted_near_duplicates():
    """The IVF path (used past EXACT_SEARCH_MAX) on clustered vectors with planted pairs at cosine ~0.93."""
    from prefcli.models.index import NeighbourIndex

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 64)).astype(np.float32)
    x = centres[rng.integers(0, 40, 4000)] * 0.35 + rng.standard_normal((4000, 64)).astype(np.float32)
    x[2000:2100] = x[:100] + 0.2 * rng.standard_normal((100, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = NeighbourIndex(x, device="cpu", exact_max=0)
    assert index.kind.startswith("ivf")
    _, ids = index.search(x[:100], 5)
    assert np.mean([2000 + i in ids[i] for i in range(100)]) >= 0.99
