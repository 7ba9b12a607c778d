"""Nearest-neighbour search over L2-normalised vectors with faiss (GPU when present), and union-find."""

from __future__ import annotations

import numpy as np

# Below this many vectors an exact (flat) inner-product search is used; above, IVF.
EXACT_SEARCH_MAX = 200_000


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - depends on install
        from ..errors import InputError

        raise InputError("faiss is not installed: pip install 'prefcli[cpu]' (or [gpu])") from None
    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


class NeighbourIndex:
    """Inner-product (cosine on normalised rows) kNN: exact for small N, IVF past EXACT_SEARCH_MAX."""

    def __init__(self, vectors: np.ndarray, *, device: str = "auto", exact_max: int = EXACT_SEARCH_MAX,
                 nprobe: int = 32, seed: int = 0):
        faiss = _faiss()
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = self.vectors.shape
        self.on_gpu = device != "cpu" and gpu_available()
        if n <= exact_max:
            index = faiss.IndexFlatIP(dim)
            self.kind = "flat"
        else:
            nlist = int(min(65536, max(64, 4 * np.sqrt(n))))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = self.vectors[rng.choice(n, size=min(n, nlist * 64), replace=False)]
            index.train(sample)
            index.nprobe = nprobe
            self.kind = f"ivf{nlist}"
        if self.on_gpu:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
            self.kind += "-gpu"
        index.add(self.vectors)
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (len(queries), k); ids are -1 where fewer than k exist."""
        k = max(1, min(k, self.vectors.shape[0]))
        sims, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return sims, ids


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the smaller index becomes the root, so cluster ids follow first occurrence
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))])
