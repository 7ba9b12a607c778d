"""Nearest-neighbour search over L2-normalised vectors with faiss (GPU when present), and the connected
components of a link graph."""

from __future__ import annotations

import os
from typing import Iterable

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
        if nlist and not self.on_gpu:
            fill_inverted_lists(index, vectors)
        else:
            for start in range(0, n, ADD_CHUNK):  # the index holds its own copy; `vectors` may be spilled to disk
                index.add(_float32(vectors[start:start + ADD_CHUNK]))
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (len(queries), k); ids are -1 where fewer than k exist."""
        k = max(1, min(k, self.size))
        sims, ids = self.index.search(_float32(queries), k)
        return sims, ids


ADD_CHUNK = 65_536  # vectors per index.add (faiss's IVF adds in blocks of this size anyway: same index)


def fill_inverted_lists(index, vectors: "np.ndarray | SpilledVectors") -> None:
    """`index.add(vectors)` for a trained CPU IVF-Flat index, with every inverted list allocated once at its
    final size. faiss's add grows each list's buffer by doubling, so at 1M vectors the index held about 1.5x
    their bytes; here it holds 1.0x. Same lists, ids and order within each list as add (the same search
    results): each vector goes to its nearest centroid (the quantizer's top hit, as add assigns), in row order.
    `vectors` is read twice, a chunk at a time (it may be spilled to disk)."""
    import faiss

    n, lists = len(vectors), index.invlists
    assigned = np.empty(n, np.int64)
    for start in range(0, n, ADD_CHUNK):
        assigned[start:start + ADD_CHUNK] = index.quantizer.search(_float32(vectors[start:start + ADD_CHUNK]), 1)[1][:, 0]
    if n and assigned.min() < 0:
        raise RuntimeError("faiss assigned a vector to no list (NaN in the vectors?)")
    sizes = np.bincount(assigned, minlength=index.nlist)
    for list_no in np.flatnonzero(sizes):
        lists.resize(int(list_no), int(sizes[list_no]))
    filled = np.zeros(index.nlist, np.int64)
    for start in range(0, n, ADD_CHUNK):
        chunk = _float32(vectors[start:start + ADD_CHUNK])
        order = np.argsort(assigned[start:start + len(chunk)], kind="stable")
        chunk_lists, bounds = np.unique(assigned[start:start + len(chunk)][order], return_index=True)
        bounds = np.append(bounds, len(chunk))
        for list_no, lo, hi in zip(chunk_lists.tolist(), bounds[:-1].tolist(), bounds[1:].tolist()):
            rows = order[lo:hi]
            ids = np.ascontiguousarray(rows + start, dtype=np.int64)  # held here while faiss reads them
            codes = np.ascontiguousarray(chunk[rows]).view(np.uint8)
            lists.update_entries(list_no, int(filled[list_no]), len(rows), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
            filled[list_no] += len(rows)
    index.ntotal = n


def _float32(rows) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


class SpilledVectors:
    """A float32 matrix kept in an unnamed temporary file ($TMPDIR) instead of memory. Indexing (a slice, or
    an array of row ids) returns those rows as an array, read from the file, so resident memory holds the rows
    asked for, not the matrix. The file goes when this object is closed or
    collected, or when the process ends, however it ends."""

    def __init__(self, vectors: np.ndarray | None = None, *, dim: int | None = None):
        """The rows of `vectors`, or none yet: a matrix of `dim` columns that `append` grows."""
        import tempfile

        vectors = _float32(vectors) if vectors is not None else np.zeros((0, dim), np.float32)
        self.shape, self.dtype = (0, vectors.shape[1]), vectors.dtype
        self._file = tempfile.TemporaryFile(prefix="prefcli-vectors-")
        try:
            self.append(vectors)
        except BaseException:
            self._file.close()
            raise

    def append(self, rows: np.ndarray) -> None:
        """Add rows at the end (an OSError, e.g. a full disk, leaves the rows before them as they were)."""
        rows = _float32(rows)
        self._file.seek(self.shape[0] * self.shape[1] * self.dtype.itemsize)
        for start in range(0, len(rows), ADD_CHUNK):
            self._file.write(rows[start:start + ADD_CHUNK].tobytes())
        self._file.flush()
        self.shape = (self.shape[0] + len(rows), self.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        """The rows asked for (a slice, an array of row ids, or one id), read with pread into a new array: each
        run of consecutive ids one read. Not mapped: a mapping's page faults bring in the pages around each row
        too, and scattered rows would make most of the file resident."""
        n = self.shape[0]
        if isinstance(rows, slice):
            positions = np.arange(*rows.indices(n))
        elif np.ndim(rows) == 0:
            return self[np.array([rows])][0]
        else:  # ids as numpy takes them (negative from the end), without an index array of the whole matrix
            positions = np.asarray(rows, np.int64)
            if len(positions) and (positions.min() < -n or positions.max() >= n):
                raise IndexError(f"row id out of range for {n} spilled vectors")
            positions = np.where(positions < 0, positions + n, positions)
        out = np.empty((len(positions), self.shape[1]), self.dtype)
        if not out.size:
            return out
        width = self.shape[1] * self.dtype.itemsize
        view = memoryview(out).cast("B")
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        starts, stops = np.append(0, breaks).tolist(), np.append(breaks, len(positions)).tolist()
        fd = self._file.fileno()
        for start, stop, row in zip(starts, stops, positions[starts].tolist()):
            _read_exactly(fd, view[start * width:stop * width], row * width)
        return out

    def close(self) -> None:
        self._file.close()


def _read_exactly(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        got = os.preadv(fd, [view], offset)
        if not got:
            raise OSError(f"spilled vectors: the temporary file ended early at byte {offset}")
        view, offset = view[got:], offset + got


def spill_chunks(chunks: Iterable[np.ndarray], rows: int, dim: int) -> "SpilledVectors | np.ndarray":
    """The `rows` vectors that `chunks` yields, appended to a temporary file as they come (SpilledVectors), so
    the whole matrix is never in memory; held in memory instead from the point no temporary file can be
    written (a read-only or full $TMPDIR): the same rows either way."""
    try:
        spill = SpilledVectors(dim=dim)
    except OSError:
        spill = None
    held, filled = None, 0
    for chunk in chunks:
        chunk = _float32(chunk)
        if spill is not None:
            try:
                spill.append(chunk)
                filled += len(chunk)
                continue
            except OSError:
                held = np.empty((rows, dim), np.float32)
                held[:filled] = spill[:filled]
                spill.close()
                spill = None
        if held is None:
            held = np.empty((rows, dim), np.float32)
        held[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    if filled != rows:
        raise AssertionError(f"spill_chunks: expected {rows} rows, got {filled}")
    return spill if spill is not None else (held if held is not None else np.zeros((0, dim), np.float32))


def spilled(vectors: np.ndarray) -> "SpilledVectors | np.ndarray":
    """The vectors moved to a temporary file (SpilledVectors), or kept as they are when no temporary file can be
    written (a read-only or full $TMPDIR): the same rows either way, only where they are held differs."""
    try:
        return SpilledVectors(vectors)
    except OSError:
        return vectors


ROW_CHUNK = 65_536  # row pairs per step of rowwise_dot
SPILLED_ROW_CHUNK = 16_384  # ... when rows are read from a SpilledVectors (a chunk's rows held three times)


def rowwise_dot(a: np.ndarray, ia: np.ndarray, b: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """a[ia[k]] · b[ib[k]] for every k (float32), a chunk at a time: never a copy of every pair's vectors."""
    out = np.empty(len(ia), np.float32)
    step = SPILLED_ROW_CHUNK if isinstance(a, SpilledVectors) or isinstance(b, SpilledVectors) else ROW_CHUNK
    for start in range(0, len(ia), step):
        stop = start + step
        if a is b and isinstance(a, SpilledVectors):  # read from disk: each row the chunk needs once, in file order
            rows, where = np.unique(np.concatenate([ia[start:stop], ib[start:stop]]), return_inverse=True)
            held = a[rows]
            out[start:stop] = np.einsum("ij,ij->i", held[where[:len(where) // 2]], held[where[len(where) // 2:]])
        else:
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
