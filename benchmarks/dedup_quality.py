"""Near-duplicate detection quality: prefcli dedup vs SemHash, same MiniLM embeddings, one run.

Benchmark built from real text in ../shared/data:
- distinct prompts: every AlpacaEval instruction and distinct HH-RLHF (harmless test) first turns;
- positives: one constructed variant for each of --variants prompts (casing, whitespace,
  punctuation, a dropped function word, two swapped words, a prefix such as "Please answer:",
  a typo), plus natural duplicates: HH first turns that recur verbatim in other conversations;
- negatives: every other pair of distinct prompts, including the topically close ones; the
  `hard_negatives_merged` column counts how many of the --hard most similar distinct pairs
  (nearest non-duplicate neighbours by cosine) a method wrongly merges.

Scores are pairwise over rows: a pair is predicted duplicate when both rows share a cluster.

    .venv/bin/python benchmarks/dedup_quality.py [--variants 800] [--hard 300]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFCLI_CACHE_DIR", "/work/cache")

from dedup_data import alpaca_instructions, hh_transcripts, prompt_pairs, variants_of  # noqa: E402
from prefcli.models.embed import build_embedder  # noqa: E402
from prefcli.models.index import connected_components  # noqa: E402
from prefcli.stages.dedup import DedupOptions, dedup, text_keys  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
THRESHOLDS = (0.8, 0.85, 0.88, 0.9, 0.92, 0.95)


def build_benchmark(n_variants: int, seed: int):
    """(texts, true group per row, variant kind per row or None)."""
    hh_first = [m[0]["content"] for m, _, _ in hh_transcripts(DATA)]
    base, seen = [], set()
    for text, key in zip(alpaca_instructions(DATA) + hh_first, text_keys(alpaca_instructions(DATA) + hh_first)):
        if key not in seen:
            seen.add(key)
            base.append(text)
    group_of = {t: i for i, t in enumerate(base)}
    texts, groups, kinds = list(base), list(range(len(base))), [None] * len(base)
    first_hh = set()
    for text in hh_first:  # natural duplicates: verbatim repeats of a first turn
        if text in first_hh and text in group_of:
            texts.append(text)
            groups.append(group_of[text])
            kinds.append("natural")
        first_hh.add(text)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(base), size=min(n_variants, len(base)), replace=False))
    for (i, kind, text) in variants_of([base[j] for j in chosen], seed=seed):
        texts.append(text)
        groups.append(int(chosen[i]))
        kinds.append(kind)
    return texts, np.array(groups), kinds, len(base)


def pair_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    def pairs(counts):
        counts = np.asarray(counts, dtype=np.int64)
        return int(np.sum(counts * (counts - 1) // 2))

    _, pred_ids = np.unique(pred, return_inverse=True)
    cells = np.unique(pred_ids.astype(np.int64) * (truth.max() + 1) + truth, return_counts=True)[1]
    tp = pairs(cells)
    predicted, actual = pairs(np.bincount(pred_ids)), pairs(np.bincount(truth))
    precision = tp / predicted if predicted else 1.0
    recall = tp / actual if actual else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def hard_negatives(vectors: np.ndarray, n_base: int, count: int) -> np.ndarray:
    """The `count` most similar pairs of distinct prompts (row indices into the base block)."""
    sims = vectors[:n_base] @ vectors[:n_base].T
    np.fill_diagonal(sims, -1)
    iu = np.triu_indices(n_base, 1)
    top = np.argsort(sims[iu])[::-1][:count]
    return np.stack([iu[0][top], iu[1][top]], axis=1)


class FixedEncoder:
    """SemHash Encoder protocol over the same MiniLM embeddings prefcli uses (cache-backed)."""

    def __init__(self, embedder):
        self.embedder = embedder

    def encode(self, inputs, **_):
        return self.embedder.encode(list(inputs))


def semhash_clusters(texts: list[str], vectors: np.ndarray, threshold: float, encoder) -> np.ndarray:
    from semhash import SemHash

    result = SemHash.from_embeddings(vectors, texts, model=encoder).self_deduplicate(threshold=threshold)
    canonical = {t: t for t in result.selected}
    canonical.update({d.record: d.duplicate_of for d in result.filtered})
    first = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    a = np.array([first[t] for t in texts])
    b = np.array([first[canonical.get(t, t)] for t in texts])
    return connected_components(len(texts), a, b)[a]  # each row through its first copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=int, default=800)
    parser.add_argument("--hard", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing")
    texts, truth, kinds, n_base = build_benchmark(args.variants, args.seed)
    counts = collections.Counter(k for k in kinds if k)
    print(f"rows={len(texts)} distinct_prompts={n_base} positives={sum(counts.values())} {dict(counts)}")
    embedder = build_embedder(device="cpu")
    start = time.perf_counter()
    vectors = embedder.encode(texts)
    print(f"embedded {embedder.computed} new texts in {time.perf_counter() - start:.1f}s (cache {embedder.store.root})")
    table = prompt_pairs(texts)
    hard = hard_negatives(vectors, n_base, args.hard)
    encoder = FixedEncoder(embedder)
    graph_store = {}
    results = collections.defaultdict(dict)
    for t in THRESHOLDS:
        for name, lexical in (("prefcli", True), ("prefcli --no-lexical", False)):
            run = dedup(table, embedder, DedupOptions(threshold=t, lexical=lexical),
                        graph_source=graph_store.get)  # one kNN search, re-clustered per threshold
            graph_store.setdefault(run.graph.fingerprint,
                                   run.graph.to_table(run.groups, table.column("pair_id").to_pylist()))
            results[name][t] = np.array(text_keys(run.result.out.column("dedup_cluster").to_pylist()))
        results["semhash"][t] = semhash_clusters(texts, vectors, t, encoder)
    print("\n| method | threshold | precision | recall | F1 | hard negatives merged |")
    print("|---|---|---|---|---|---|")
    for name, by_t in results.items():
        for t, pred in by_t.items():
            scores = pair_scores(pred, truth)
            merged = int(np.sum(pred[hard[:, 0]] == pred[hard[:, 1]]))
            print(f"| {name} | {t} | {scores['precision']} | {scores['recall']} | {scores['f1']} | "
                  f"{merged}/{len(hard)} |")
    print("\nrecall by positive kind at threshold 0.92 (row joins its original's cluster):")
    print("| kind | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    rows = np.arange(len(texts))
    for kind in sorted(counts):
        mask = np.array([k == kind for k in kinds])
        cells = []
        for name in results:
            pred = results[name][0.92]
            cells.append(f"{np.mean(pred[rows[mask]] == pred[truth[mask]]):.3f}")
        print(f"| {kind} ({mask.sum()}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
