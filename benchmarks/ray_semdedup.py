"""Semantic dedup partitioned on Ray (k-means clusters, kNN within each) vs the local all-pairs graph.

Same near-duplicate benchmark as benchmarks/dedup_cascade.py and dedup_quality.py (real AlpacaEval and HH-RLHF
prompts, constructed variants and natural repeats), embedded with the static model. For each partitioning
(k-means clusters x centroids per text) it prints precision, recall and F1 against the ground truth, the F1
difference to local (goal: within 0.005), and what the partitioning loses against the local run:
- edge recall: the local graph's linking edges (cosine >= threshold or typo-sized edits) also found partitioned;
- pair recall: the local run's duplicate row pairs that the partitioned run also puts in one cluster.

With --cascade it also compares the local default, the cascade (static model proposes at 0.8, MiniLM verifies
at 0.92), with the same cascade run partitioned (top-2 borders); both share one MiniLM vector cache.

    .venv/bin/python benchmarks/ray_semdedup.py [--variants 800] [--threshold 0.9] [--clusters 8,32] [--cascade]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dedup_data import prompt_pairs  # noqa: E402
from dedup_quality import DATA, build_benchmark, pair_scores  # noqa: E402
from prefcli.models.embed import MINILM, STATIC, build_embedder, ensure_static_model  # noqa: E402
from prefcli.stages.dedup import DEFAULT_THRESHOLD, DedupOptions, dedup  # noqa: E402


def clusters_by_row(table, pair_ids: list[str]) -> np.ndarray:
    """dedup_cluster of each benchmark row (rows matched by pair_id: the Ray output's order is its own)."""
    found = dict(zip(table.column("pair_id").to_pylist(), table.column("dedup_cluster").to_pylist()))
    return np.array([found[p] for p in pair_ids], dtype=object)


def pair_recall(pred: np.ndarray, reference: np.ndarray) -> float:
    """Share of the reference's same-cluster row pairs that `pred` also puts in one cluster."""
    _, ref_ids = np.unique(reference, return_inverse=True)
    _, pred_ids = np.unique(pred, return_inverse=True)
    scores = pair_scores(pred_ids, ref_ids.astype(np.int64))
    return scores["recall"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.9, help="static-model cosine (dedup_cascade: 0.9)")
    parser.add_argument("--clusters", default="8,32", help="k-means cluster counts to try")
    parser.add_argument("--replicas", default="1,2", help="nearest centroids per text to try (2: borders)")
    parser.add_argument("--blocks", type=int, default=8, help="input blocks of the Ray dataset")
    parser.add_argument("--cascade", action="store_true", help="also the static->MiniLM cascade, local vs Ray")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing")
    from prefcli.engines.ray_data import connect, gather_table

    ensure_static_model()
    texts, truth, kinds, n_base = build_benchmark(args.variants, args.seed)
    table = prompt_pairs(texts)
    pair_ids = table.column("pair_id").to_pylist()
    print(f"rows={len(texts)} distinct_prompts={n_base} positives={sum(k is not None for k in kinds)} "
          f"threshold={args.threshold} model=static", flush=True)
    options = DedupOptions(threshold=args.threshold)
    cache = tempfile.mkdtemp(prefix="ray-semdedup-cache-")
    minilm = functools.partial(build_embedder, MINILM, device="cpu", cache_dir=cache)

    def local_run(name: str, opts: DedupOptions, verifier=None):
        start = time.perf_counter()
        run = dedup(table, build_embedder(STATIC), opts, verifier=verifier)
        seconds = time.perf_counter() - start
        src, dst = run.graph.edges_at(opts.threshold, opts.lexical)
        first = run.groups.first_row  # local node index -> its first row: the Ray side's node id
        edges = {(min(a, b), max(a, b)) for a, b in zip(first[src].tolist(), first[dst].tolist())}
        clusters = clusters_by_row(run.result.out, pair_ids)
        rows.append({"method": name, **pair_scores(clusters, truth), "edge_recall": 1.0, "pair_recall": 1.0,
                     "seconds": seconds, "base": True})
        print(f"  {rows[-1]} linking edges {len(edges)}", flush=True)
        return clusters, edges

    rows: list[dict] = []
    local, local_edges = local_run("local all-pairs kNN", options)

    start = time.perf_counter()
    ray = connect(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=500 * 2**20,
                  log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"ray {ray.__version__} started in {time.perf_counter() - start:.1f}s", flush=True)
    from prefcli.engines.ray_dedup import semantic_dedup

    step = -(-table.num_rows // args.blocks)
    ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)])
    factory = functools.partial(build_embedder, STATIC)

    def ray_run(name: str, opts: DedupOptions, reference, reference_edges, **kwargs):
        start = time.perf_counter()
        result = semantic_dedup(ds, factory, opts, **kwargs)
        seconds = time.perf_counter() - start
        pred = clusters_by_row(gather_table(result.out), pair_ids)
        edges = {(min(a, b), max(a, b)) for a, b in zip(result.edges.column("src").to_pylist(),
                                                       result.edges.column("dst").to_pylist())}
        rows.append({"method": name, **pair_scores(pred, truth),
                     "edge_recall": round(len(reference_edges & edges) / max(len(reference_edges), 1), 4),
                     "pair_recall": pair_recall(pred, reference), "seconds": seconds})
        print(f"  {rows[-1]}", flush=True)

    for clusters in [int(c) for c in args.clusters.split(",")]:
        for replicas in [int(r) for r in args.replicas.split(",")]:
            ray_run(f"ray partitioned, {clusters} clusters x top-{replicas}", options, local, local_edges,
                    n_clusters=clusters, replicas=replicas)
    if args.cascade:
        cascade = DedupOptions(threshold=DEFAULT_THRESHOLD)
        reference, reference_edges = local_run(f"local cascade static->MiniLM @{DEFAULT_THRESHOLD}", cascade,
                                               minilm())
        for clusters in [int(c) for c in args.clusters.split(",")]:
            ray_run(f"ray partitioned cascade, {clusters} clusters x top-2", cascade, reference, reference_edges,
                    n_clusters=clusters, replicas=2, verifier_factory=minilm)
    print("\n| method | precision | recall | F1 | F1 - local | local edges found | local dup pairs kept | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    base = rows[0]
    for r in rows:
        base = r if r.get("base") else base
        print(f"| {r['method']} | {r['precision']} | {r['recall']} | {r['f1']} | {r['f1'] - base['f1']:+.4f} | "
              f"{r['edge_recall']:.4f} | {r['pair_recall']:.4f} | {r['seconds']:.1f} |")
    print("\ngoal: |F1 - local| <= 0.005 for the top-2 (border) partitionings")


if __name__ == "__main__":
    main()
