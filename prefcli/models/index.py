"""Nearest-neighbour search over L2-normalised vectors with faiss (GPU when present), and the connected
components of a link graph."""

from __future__ import annotations

import numpy as np

# Below this many vectors an exact (flat) inner-product search is used; above, IVF. Measured on the
# 2-core CPU box with benchmarks/faiss_knn_gpu.py (BENCHMARKS.md, section dedup): self-kNN with IVF
# (training included) takes 0.9x the flat time at 10k-30k vectors, 0.49x at 100k, 0.13x at 200k, and
# finds >= 99.6% of planted near-duplicates; below ~50k the gain is small, so exact search is kept.
EXACT_SEARCH_MAX = 50_000
# On a GPU flat search stays fast far longer; a default to re-check with the same script on a GPU.
EXACT_SEARCH_MAX_GPU = 1_000_000
IVF_TRAIN_PER_LIST = 40  # training points per inverted list (faiss wants >= 39)
IVF_TRAIN_ITERATIONS = 10


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

    def __init__(self, vectors: "np.ndarray | SpilledVectors", *, device: str = "auto", exact_max: int | None = None,
                 nprobe: int = 32, seed: int = 0):
        faiss = _faiss()
        n, dim = vectors.shape
        self.size = n
        self.on_gpu = device != "cpu" and gpu_available()
        if exact_max is None:
            exact_max = EXACT_SEARCH_MAX_GPU if self.on_gpu else EXACT_SEARCH_MAX
        nlist = 0
        if n <= exact_max:
            index = faiss.IndexFlatIP(dim)
            self.kind = "flat"
        else:
            nlist = int(min(65536, max(64, 4 * np.sqrt(n))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self.kind = f"ivf{nlist}"
        if self.on_gpu:  # train and search on the GPU
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, 0, index)
            self.kind += "-gpu"
        if nlist:
            index.cp.niter = IVF_TRAIN_ITERATIONS
            index.nprobe = nprobe
            rng = np.random.default_rng(seed)
            sample = rng.choice(n, size=min(n, nlist * IVF_TRAIN_PER_LIST), replace=False)
            index.train(_float32(vectors[np.sort(sample)]))
        for start in range(0, n, ADD_CHUNK):  # the index holds its own copy; `vectors` may be spilled to disk
            index.add(_float32(vectors[start:start + ADD_CHUNK]))
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (len(queries), k); ids are -1 where fewer than k exist."""
        k = max(1, min(k, self.size))
        sims, ids = self.index.search(_float32(queries), k)
        return sims, ids


ADD_CHUNK = 65_536  # vectors per index.add (faiss's IVF adds in blocks of this size anyway: same index)


def _float32(rows) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


class SpilledVectors:
    """A float32 matrix kept in an unnamed temporary file ($TMPDIR) instead of memory. Indexing (a slice, or
    an array of row ids) returns those rows as an array; the file is mapped only while they are read, so
    resident memory holds the rows asked for, not the matrix. The file goes when this object is closed or
    collected, or when the process ends, however it ends."""

    def __init__(self, vectors: np.ndarray):
        import tempfile

        vectors = _float32(vectors)
        self.shape, self.dtype = vectors.shape, vectors.dtype
        self._file = tempfile.TemporaryFile(prefix="prefcli-vectors-")
        try:
            for start in range(0, len(vectors), ADD_CHUNK):
                self._file.write(vectors[start:start + ADD_CHUNK].tobytes())
            self._file.flush()
        except BaseException:
            self._file.close()
            raise

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        if not self.shape[0] or not self.shape[1]:
            return np.zeros((0, self.shape[1]), self.dtype)[rows]
        mapped = np.memmap(self._file, dtype=self.dtype, mode="r", shape=self.shape)
        return np.array(mapped[rows])  # a copy: the mapping goes with `mapped` on return

    def close(self) -> None:
        self._file.close()


def spilled(vectors: np.ndarray) -> "SpilledVectors | np.ndarray":
    """The vectors moved to a temporary file (SpilledVectors), or kept as they are when no temporary file can be
    written (a read-only or full $TMPDIR): the same rows either way, only where they are held differs."""
    try:
        return SpilledVectors(vectors)
    except OSError:
        return vectors


ROW_CHUNK = 65_536  # row pairs per step of rowwise_dot


def rowwise_dot(a: np.ndarray, ia: np.ndarray, b: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """a[ia[k]] · b[ib[k]] for every k (float32), a chunk at a time: never a copy of every pair's vectors."""
    out = np.empty(len(ia), np.float32)
    for start in range(0, len(ia), ROW_CHUNK):
        stop = start + ROW_CHUNK
        out[start:stop] = np.einsum("ij,ij->i", a[ia[start:stop]], b[ib[start:stop]])
    return out


def connected_components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Component label of each of n nodes, given undirected edges: the smallest node index in the component."""
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    if not len(src):
        return np.arange(n)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as components

    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    _, labels = components(graph, directed=False)
    smallest = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    return smallest[labels]
