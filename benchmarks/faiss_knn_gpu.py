"""Self-kNN with faiss on N random 384-d vectors: exact (flat) vs IVF, GPU when present, CPU otherwise.

Measures what `prefcli dedup` does in its search step: every vector queries its k nearest neighbours.
Vectors are clustered (a Gaussian mixture on the sphere, like sentence embeddings) and 1% of them get
a planted near-duplicate at cosine ~0.93; `dup_recall` is the share of those pairs found in the top k.

Full self-kNN of flat search costs O(N^2), so for large N the search time is measured on a sample of
queries and scaled to all N (`--queries`); build/train time is measured in full.

    .venv/bin/python benchmarks/faiss_knn_gpu.py                        # GPU: 1M, 2M, 5M, 10M
    .venv/bin/python benchmarks/faiss_knn_gpu.py --device cpu           # CPU: 10k .. 200k (switchover)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefcli.models.index import NeighbourIndex, gpu_available  # noqa: E402

DIM = 384


def clustered_vectors(n: int, seed: int = 0, centres: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, planted_a, planted_b): unit vectors around random centres, with 1% planted near-duplicates."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, DIM), dtype=np.float32)
    x = centre[rng.integers(0, centres, n)] * 0.35 + rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    planted = max(1, n // 100)
    a = rng.choice(n // 2, planted, replace=False)
    b = n // 2 + a
    noise = rng.standard_normal((planted, DIM), dtype=np.float32)
    x[b] = x[a] + 0.38 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    x[b] /= np.linalg.norm(x[b], axis=1, keepdims=True)
    return x, a, b


def run(n: int, exact_max: int, device: str, k: int, sample: int) -> dict:
    x, a, b = clustered_vectors(n)
    start = time.perf_counter()
    index = NeighbourIndex(x, device=device, exact_max=exact_max)
    build = time.perf_counter() - start
    queries = np.unique(np.concatenate([a, np.random.default_rng(1).choice(n, min(sample, n), replace=False)]))
    start = time.perf_counter()
    _, ids = index.search(x[queries], k + 1)
    search = time.perf_counter() - start
    found = np.array([b[i] in ids[np.searchsorted(queries, q)] for i, q in enumerate(a)])
    full = build + search * n / len(queries)
    return {"n": n, "index": index.kind, "build_s": round(build, 2), "self_knn_s": round(full, 2),
            "queries_per_s": round(len(queries) / search), "dup_recall": round(float(found.mean()), 4),
            "dup_cosine": round(float(np.mean(np.sum(x[a] * x[b], axis=1))), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--sizes", help="comma-separated N (default GPU 1M..10M, CPU 10k..200k)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=4000, help="sampled queries per size (search time scaled)")
    args = parser.parse_args()
    on_gpu = args.device != "cpu" and gpu_available()
    if args.device == "cuda" and not on_gpu:
        sys.exit("faiss-gpu or a GPU is missing (try --device cpu)")
    default = "1000000,2000000,5000000,10000000" if on_gpu else "10000,30000,100000,200000"
    sizes = [int(s) for s in (args.sizes or default).split(",")]
    print(f"device={'gpu' if on_gpu else 'cpu'} k={args.k}")
    rows = []
    for n in sizes:
        for label, exact_max in (("flat", n), ("ivf", 0)):
            row = {"search": label, **run(n, exact_max, args.device, args.k, args.queries)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    for n in sizes:
        flat, ivf = (next(r for r in rows if r["n"] == n and r["search"] == s) for s in ("flat", "ivf"))
        print(f"N={n}: ivf/flat time {ivf['self_knn_s'] / flat['self_knn_s']:.2f}x, "
              f"ivf dup_recall {ivf['dup_recall']}")


if __name__ == "__main__":
    main()
