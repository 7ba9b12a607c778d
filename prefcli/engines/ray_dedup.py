"""Exact and semantic dedup over Ray Data datasets: the local stage's decisions (prefcli/stages/dedup.py),
computed as distributed algorithms. Rows, texts and vectors stay on the cluster; the driver sees counts, a
k-means sample, the centroids and the duplicate edges.

Exact dedup is a hash groupby. Each block computes the rows' content keys (the local `text_keys`) and keep
priorities (the local `keep_priority`); a hash partition on the key puts every copy of a text in one block,
where the local `choose_representatives` picks the same representative as the local stage: rows are sorted by
the global row index (prefcli.engines.ray_data.ROW) first, so "earlier row wins ties" means the same thing.

Semantic dedup is partitioned, the SemDeDup / NeMo Curator way:
1. exact pass (above): each row learns its node, the first row of its text;
2. embedding of each block's distinct texts, in an actor pool (the model loads once per actor);
3. spherical k-means (faiss) on a deterministic sample of the node vectors (nodes whose content hash falls
   under the sample fraction, so the sample does not depend on block layout);
4. every node is assigned to its `replicas` nearest centroids (top-2 by default: the border rule); a hash
   partition on the centroid id gathers each cluster's members;
5. within each cluster, the local kNN (`knn_edges`: exact inner product on normalised vectors, faiss) and the
   local typo rescue (`with_edits`) give the same edges the all-pairs graph would have between those nodes;
   only edges that link (cosine >= threshold, or typo-sized edits) leave the cluster;
6. the driver runs connected components over those edges (`connected_components`) and broadcasts the root
   (smallest node) of each linked node;
7. a second hash groupby on the component root picks each cluster's representative, as in the exact pass.

The cascade (the local default: the static model proposes, MiniLM verifies) is the same with a verifier: steps
2-4 use the proposer's vectors, and step 5 re-scores each cluster's proposals with the verifier, in an actor
pool that loads it once per actor (the local `cascade_graph`, cluster by cluster); the rows of linked texts
then get the verifier's vectors for dedup_sim_to_rep.

A pair of near-duplicates is missed only when the two texts share none of their `replicas` nearest
centroids; benchmarks/ray_semdedup.py measures that loss against the local all-pairs graph.
Per query the local graph keeps the top `k` neighbours over all texts; here the top `k` within each shared
cluster, so a text with more than `k` near-duplicates may get an edge the local graph caps away (clusters with
that many members are connected either way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..models.index import connected_components, rowwise_dot
from ..report import mark_set_aside
from ..schema import with_stage_columns
from ..stages.dedup import (DEFAULT_PROPOSE, PAIR_PARTS, STAGE, STATIC_TYPO_FLOOR, DedupOptions, EvalPrompts,
                            NeighbourGraph, _filled, by_parts, choose_representatives, contamination, dedup_columns,
                            edit_allowance, keep_priority, knn_edges, text_keys, with_edits)
from ..text import texts_for
from . import require_ray
from .ray_data import ROW, account, gather_table, one_line_errors, ordered_context, with_row_index

KEY = "_key"  # content key of the row's text (the local text_keys)
PRIORITY = "_priority"  # keep priority: higher wins, ties to the earlier row
ELIGIBLE = "_eligible"  # may represent its cluster (not contaminated)
BLANK = "_blank"  # the row's text is empty
NODE = "_node"  # the row index of the first row with the same text: the node id of the semantic pass
GROUP = "_group"  # the node id of the component root: the key of the second groupby
VECTOR = "_vector"
PART = "_part"  # the k-means cluster a node copy is assigned to
TEXT = "_text"  # a node's text (for the character edits of the typo rescue)
FIRST = "_first"  # the first row of its group (counts the clusters)
AGAINST = "_against"  # best cosine of the row's prompt to an eval prompt (1.0: an exact match): dedup_against_sim
CONTAMINATED = "_contaminated"  # 0: clean; 1: the prompt matches an eval prompt exactly; 2: semantically
PARTS = tuple(f"_{part}_text" for part in PAIR_PARTS)  # --on pair: a node's prompt, chosen and rejected texts
INTERNAL = (KEY, PRIORITY, ELIGIBLE, BLANK, NODE, GROUP, VECTOR, PART, TEXT, FIRST, AGAINST, CONTAMINATED, *PARTS)
ROWS_PER_PARTITION = 200_000  # rows per hash partition of a groupby (one reducer holds one partition)
NODES_PER_CLUSTER = 20_000  # default k-means size: a cluster is searched exactly (flat) below 50k
SAMPLE_PER_CLUSTER = 256  # k-means training points per centroid (faiss wants >= 39)


@dataclass
class RayDedupResult:
    """Datasets of kept and set-aside rows (set_aside None without drop), stats, and (semantic) the edges."""

    out: object
    set_aside: object | None
    stats: dict
    edges: pa.Table | None = None
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- per-block steps

def priority_basis(ds, keep: str) -> str | None:
    """What `--keep strongest` ranks by, decided once for the whole dataset (a block may lack scores that
    another has): pref_mean, else the score margin. None for the other policies."""
    if keep != "strongest":
        return None
    names = ds.schema().names
    if "pref_mean" in names:
        return "pref_mean"
    scored = ds.map_batches(_scored_rows, batch_format="pyarrow").sum("scored") if "chosen_score" in names else 0
    if not scored:
        raise InputError("--keep strongest: needs a pref_mean column (run `prefcli vote` first) "
                         "or chosen_score/rejected_score values")
    return "margin"


def _scored_rows(batch: pa.Table) -> pa.Table:
    return pa.table({"scored": [batch.num_rows - batch.column("chosen_score").null_count]})


def keys_batch(batch: pa.Table, on: str, keep: str, seed: int, basis: str | None,
               eligible: str | None = None) -> pa.Table:
    """Append the text key, keep priority, eligibility and blank flag of each row (one block, no neighbours)."""
    texts = texts_for(batch, on)
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(pa.array(texts, pa.large_string()))), 0)
    if basis == "margin":
        priority = _filled(pc.subtract(batch.column("chosen_score"), batch.column("rejected_score")))
    else:
        priority = keep_priority(batch, texts, keep, seed)[0]
    ok = pc.fill_null(batch.column(eligible), False) if eligible else pa.array(np.ones(batch.num_rows, bool))
    if CONTAMINATED in batch.column_names:  # a contaminated row never represents its cluster
        ok = pc.and_(ok, pc.equal(batch.column(CONTAMINATED), 0))
    return (batch.append_column(KEY, pa.array(text_keys(texts), pa.string()))
            .append_column(PRIORITY, pa.array(np.asarray(priority, dtype=np.float64)))
            .append_column(ELIGIBLE, ok)
            .append_column(BLANK, blank))


def decide_block(block: pa.Table, group: str, with_vectors: bool = False) -> pa.Table:
    """One hash partition of a groupby: every row of each of its groups is here. Picks each group's
    representative exactly as the local label_rows does and appends the dedup_ columns.

    `group` is KEY (exact pass: a group is one text) or GROUP (semantic pass: a group is a component of
    texts, each row carrying its node and, with_vectors, its node's vector for dedup_sim_to_rep)."""
    if not block.num_rows:
        return block
    block = block.sort_by(ROW)  # positions follow the global row order: "ties to the earlier row"
    rows = block.column(ROW).to_numpy()
    _, first_pos, cluster = np.unique(block.column(group).to_numpy(zero_copy_only=False),
                                      return_index=True, return_inverse=True)
    cluster = cluster.ravel()
    keys = np.asarray(block.column(KEY).to_pylist(), dtype=object)
    if NODE in block.column_names:
        node = block.column(NODE).to_numpy()
    else:  # exact pass: the node of a row is the first row with its key
        node = rows[first_pos][cluster]
    priority = block.column(PRIORITY).to_numpy().astype(float)
    eligible = block.column(ELIGIBLE).to_numpy(zero_copy_only=False).astype(bool)
    rep = choose_representatives(cluster, priority, eligible)
    n = len(rows)
    is_rep = rep == np.arange(n)
    rep_node = np.where(rep >= 0, node[np.maximum(rep, 0)], -1)
    sim = np.full(n, np.nan)
    same = rep_node == node
    sim[same] = 1.0
    todo = ~same & (rep >= 0)
    if with_vectors and todo.any():
        vectors = _vectors(block.column(VECTOR))
        rows = np.flatnonzero(todo)
        sim[todo] = np.clip(rowwise_dot(vectors, rows, vectors, rep[rows]), -1.0, 1.0)
    reasons = np.where(same, "exact", "semantic").astype(object)
    reasons[is_rep] = None
    if not eligible.all():
        reasons[~eligible] = "contaminated"
    # the cluster's id is the key of its first row's text (the local: the key of its smallest node)
    cluster_key = keys[first_pos][cluster]
    against = block.column(AGAINST).to_numpy() if AGAINST in block.column_names else None
    columns = dedup_columns(cluster_key.tolist(), is_rep, sim, reasons.tolist(), against)
    out = with_stage_columns(block, STAGE, columns)
    if NODE not in out.column_names:
        out = out.append_column(NODE, pa.array(node, pa.int64()))
    first = np.zeros(n, bool)
    first[first_pos] = True
    return out.drop_columns([c for c in (FIRST,) if c in out.column_names]).append_column(FIRST, pa.array(first))


def _vectors(column) -> np.ndarray:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def _vector_array(vectors: np.ndarray) -> pa.Array:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])


def split_block(block: pa.Table, set_aside: bool = False, keep_row: bool = False) -> pa.Table:
    """Kept rows (set_aside False) or set-aside rows with their reason, internal columns dropped."""
    is_rep = pc.fill_null(block.column("dedup_is_rep"), False)
    part = drop_internal(block.filter(pc.invert(is_rep) if set_aside else is_rep), keep_row)
    if set_aside:
        part = mark_set_aside(part, part.column("dedup_reason").to_pylist(), STAGE)
    return part


def drop_internal(block: pa.Table, keep_row: bool = False) -> pa.Table:
    """The stage's own columns only; the row index too unless `keep_row` (a next stage on the cluster can
    order by it: filtering keeps it increasing in the local engine's row order)."""
    drop = [c for c in INTERNAL if c in block.column_names]
    return block.drop_columns(drop + ([ROW] if ROW in block.column_names and not keep_row else []))


def count_block(block: pa.Table) -> pa.Table:
    """Per-block counters, summed on the driver into the stage's stats."""
    reason = block.column("dedup_reason")
    rows = block.column(ROW).to_numpy()
    node = block.column(NODE).to_numpy()
    return pa.table({
        "rows": [block.num_rows],
        "unique_texts": [int(np.sum(rows == node))],
        "clusters": [int(np.sum(block.column(FIRST).to_numpy(zero_copy_only=False)))],
        "representatives": [int(pc.sum(pc.cast(block.column("dedup_is_rep"), pa.int64())).as_py() or 0)],
        "exact": [int(pc.sum(pc.cast(pc.equal(reason, "exact"), pa.int64())).as_py() or 0)],
        "semantic": [int(pc.sum(pc.cast(pc.equal(reason, "semantic"), pa.int64())).as_py() or 0)],
        "contaminated": [int(pc.sum(pc.cast(pc.equal(reason, "contaminated"), pa.int64())).as_py() or 0)],
        **({f"contaminated_{kind}": [int(pc.sum(pc.cast(pc.equal(block.column(CONTAMINATED), code), pa.int64()))
                                         .as_py() or 0)] for kind, code in (("exact", 1), ("semantic", 2))}
           if CONTAMINATED in block.column_names else {}),
    })


# --------------------------------------------------------------------------- shared driver-side steps

def _cpus() -> int:
    ray = require_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def hash_partitions(rows: int, num_partitions: int | None = None) -> int:
    """How many hash partitions a groupby over `rows` rows uses: at least one per CPU, at most
    ROWS_PER_PARTITION rows each (one reducer holds one partition in memory)."""
    if num_partitions:
        return int(num_partitions)
    return max(_cpus(), -(-rows // ROWS_PER_PARTITION))


def hash_groupby(ds, key: str, fn, rows: int, num_partitions: int | None = None, *, actors: int = 0,
                 constructor: dict | None = None, num_gpus: float | None = None, **fn_kwargs):
    """Rows sharing `key` meet in one block (a hash partition), where `fn` handles all of its groups at once.
    `fn` is a function run as tasks, or (actors > 0) a callable class on an actor pool of that size."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    parts = hash_partitions(rows, num_partitions)
    pool = dict(compute=ActorPoolStrategy(size=actors), fn_constructor_kwargs=constructor or {},
                num_gpus=num_gpus) if actors else dict(compute=TaskPoolStrategy())
    return ds.repartition(parts, keys=[key]).map_batches(fn, batch_size=None, batch_format="pyarrow",
                                                         fn_kwargs=fn_kwargs, **pool)


def _prepare(ds, options: DedupOptions, eligible: str | None):
    """Row index (if missing), keys and priorities; checks blank texts like the local stage (first row named)."""
    options.check()
    ordered_context()
    if ROW not in ds.schema().names:
        ds = with_row_index(ds)
    basis = priority_basis(ds, options.keep)
    keyed = ds.map_batches(keys_batch, batch_format="pyarrow",
                           fn_kwargs=dict(on=options.on, keep=options.keep, seed=options.seed, basis=basis,
                                          eligible=eligible)).materialize()
    blank = keyed.map_batches(_blank_rows, batch_format="pyarrow")
    first_blank = blank.min(ROW)  # None when no row is blank
    if first_blank is not None:
        raise InputError(f"row {first_blank}: empty {options.on} text (dedup --on {options.on} needs text to compare)")
    return keyed


def _blank_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(batch.column(BLANK)).select([ROW])


def _finish(decided, rows_in: int, options: DedupOptions, extra_stats: dict, edges=None, meta=None,
            keep_row: bool = False) -> RayDedupResult:
    decided = decided.materialize()
    totals = gather_table(decided.map_batches(count_block, batch_format="pyarrow"))
    sums = {c: int(pc.sum(totals.column(c)).as_py() or 0) for c in totals.column_names} if totals.num_rows else {}
    if options.drop:
        out = decided.map_batches(split_block, batch_format="pyarrow", fn_kwargs={"keep_row": keep_row}).materialize()
        set_aside = decided.map_batches(split_block, batch_format="pyarrow",
                                        fn_kwargs={"set_aside": True, "keep_row": keep_row}).materialize()
    else:
        out = decided.map_batches(drop_internal, batch_format="pyarrow", fn_kwargs={"keep_row": keep_row}).materialize()
        set_aside = None
    acc = account(rows_in, out, set_aside)
    stats = {
        "rows_in": rows_in,
        "unique_texts": sums.get("unique_texts", 0),
        "exact_duplicates": sums.get("exact", 0),
        "semantic_duplicates": sums.get("semantic", 0),
        "contaminated": sums.get("contaminated", 0),
        **({key: sums[key] for key in ("contaminated_exact", "contaminated_semantic")} if "contaminated_exact" in sums
           else {}),
        "clusters": sums.get("clusters", 0),
        "threshold": options.threshold,
        "on": options.on,
        "keep": options.keep,
        **extra_stats,
        "representatives": sums.get("representatives", 0),
        "rows_out": acc.rows_out,
        "rows_removed": acc.rows_set_aside,
        "engine": "ray",
    }
    return RayDedupResult(out, set_aside, stats, edges, meta or {})


# --------------------------------------------------------------------------- exact dedup

def exact_dedup(ds, options: DedupOptions | None = None, *, eligible: str | None = None,
                num_partitions: int | None = None, keep_row: bool = False) -> RayDedupResult:
    """Exact dedup as a hash groupby on the content key: the local stage's exact pass, distributed.

    Each row keeps its columns plus the dedup_ columns, as the local label_rows gives them for an empty
    neighbour graph; with options.drop the duplicates go to `set_aside` with their reason. `eligible` names a
    boolean column of rows that may represent a cluster (False: contaminated). `keep_row` keeps the global row
    index column (ray_data.ROW) in the outputs."""
    options = options or DedupOptions()
    with one_line_errors():
        keyed = _prepare(ds, options, eligible)
        rows_in = keyed.count()
        decided = hash_groupby(keyed, KEY, decide_block, rows_in, num_partitions, group=KEY)
        return _finish(decided, rows_in, options, {"index": "none"}, keep_row=keep_row)


# --------------------------------------------------------------------------- decontamination

class ContaminationBlock:
    """Actor-pool callable: the local `contamination` (exact and semantic matches of each row's prompt against
    the eval prompts), block by block; each actor builds its models and embeds the eval prompts once."""

    def __init__(self, prompts: list[str], factory: Callable[[], object], threshold: float, device: str = "auto",
                 proposer_factory: Callable[[], object] | None = None, propose: float = DEFAULT_PROPOSE):
        self.evals = EvalPrompts(prompts, device)
        self.embedder = factory()
        self.proposer = proposer_factory() if proposer_factory is not None else None
        self.threshold, self.device, self.propose = threshold, device, propose

    def __call__(self, batch: pa.Table) -> pa.Table:
        found = contamination(batch, self.evals, self.embedder, threshold=self.threshold, device=self.device,
                              proposer=self.proposer, propose=self.propose)
        kind = np.where(found.exact_rows, 1, np.where(found.flagged, 2, 0)).astype(np.int8)
        batch = batch.drop_columns([c for c in (AGAINST, CONTAMINATED) if c in batch.column_names])
        return batch.append_column(AGAINST, pa.array(found.similarity, pa.float64())).append_column(
            CONTAMINATED, pa.array(kind, pa.int8()))


def decontaminate(ds, prompts: list[str], factory: Callable[[], object], options: DedupOptions, *,
                  proposer_factory: Callable[[], object] | None = None, actors: int = 1, batch_size: int = 1024,
                  num_gpus: float | None = None):
    """`ds` with each row's match against the eval prompts, for `exact_dedup`/`semantic_dedup` to act on: a
    contaminated row is flagged (dropped with --drop) and never represents a cluster, as in the local stage.
    With `proposer_factory` it is the cascade: the proposer's cosine decides which prompts `factory`'s model
    re-scores."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(ContaminationBlock, batch_format="pyarrow", batch_size=batch_size,
                          fn_constructor_kwargs={"prompts": list(prompts), "factory": factory,
                                                 "threshold": options.against_threshold, "device": options.device,
                                                 "proposer_factory": proposer_factory, "propose": options.propose},
                          compute=ActorPoolStrategy(size=actors), num_gpus=num_gpus)


# --------------------------------------------------------------------------- semantic dedup

class EmbedBlock:
    """Actor-pool callable: the embedder is built once per actor by `factory` (a picklable callable, e.g.
    functools.partial(build_embedder, "static")); each batch embeds its distinct texts once."""

    def __init__(self, factory: Callable[[], object], on: str, only: np.ndarray | None = None):
        self.embedder, self.on, self.only = factory(), on, only

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Appends (or replaces) each row's vector; with `only` (sorted node ids) other rows get zeros."""
        texts = texts_for(batch, self.on)
        keys = batch.column(KEY).to_numpy(zero_copy_only=False)
        wanted = np.ones(batch.num_rows, bool) if self.only is None else _member(batch.column(NODE).to_numpy(),
                                                                                 self.only)
        out = np.zeros((batch.num_rows, self.embedder.dim), dtype=np.float32)
        if wanted.any():
            rows = np.flatnonzero(wanted)
            _, first, inverse = np.unique(keys[rows], return_index=True, return_inverse=True)
            vectors = np.asarray(self.embedder.encode([texts[rows[i]] for i in first]), dtype=np.float32)
            out[rows] = vectors[inverse.ravel()]
        if VECTOR in batch.column_names:
            batch = batch.drop_columns([VECTOR])
        return batch.append_column(VECTOR, _vector_array(out))


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def _sampled(batch: pa.Table, fraction: float) -> pa.Table:
    """Nodes whose content key hashes under `fraction`: a sample that does not depend on block layout."""
    keys = batch.column(KEY).to_pylist()
    keep = np.array([int(k[:8], 16) / 0x100000000 < fraction for k in keys], dtype=bool)
    return batch.filter(pa.array(keep)).select([ROW, VECTOR])


def _nodes(batch: pa.Table) -> pa.Table:
    """One row per text (its first row), with the columns the partition step needs."""
    first = pc.equal(batch.column(ROW), batch.column(NODE))
    return batch.filter(first)


def train_centroids(sample: np.ndarray, n_clusters: int, *, seed: int = 0, niter: int = 20) -> np.ndarray:
    """Spherical k-means (faiss) on the sample: unit-norm centroids, so inner product is cosine."""
    from ..models.index import _faiss

    faiss = _faiss()
    n_clusters = max(1, min(n_clusters, len(sample)))
    if n_clusters == 1:
        centroid = sample.mean(axis=0, keepdims=True)
        return (centroid / max(np.linalg.norm(centroid), 1e-12)).astype(np.float32)
    km = faiss.Kmeans(sample.shape[1], n_clusters, niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign_block(batch: pa.Table, centroids: np.ndarray, replicas: int, on: str) -> pa.Table:
    """Each node once per each of its `replicas` nearest centroids (the partition id), with its text."""
    from ..models.index import NeighbourIndex

    if not batch.num_rows:
        return pa.table({NODE: pa.array([], pa.int64()), PART: pa.array([], pa.int64()),
                         TEXT: pa.array([], pa.large_string()),
                         VECTOR: _vector_array(np.zeros((0, centroids.shape[1]), np.float32))})
    vectors = _vectors(batch.column(VECTOR))
    r = min(replicas, len(centroids))
    _, parts = NeighbourIndex(centroids, device="cpu").search(vectors, r)
    take = np.repeat(np.arange(batch.num_rows), r)
    texts = np.asarray(texts_for(batch, on), dtype=object)
    columns = {
        NODE: pa.array(batch.column(ROW).to_numpy()[take], pa.int64()),
        PART: pa.array(parts.ravel().astype(np.int64)),
        TEXT: pa.array(texts[take].tolist(), pa.large_string()),
        VECTOR: _vector_array(vectors[take]),
    }
    if on == "pair":  # the partition step scores pairs part by part (the local by_parts)
        for name, part in zip(PARTS, PAIR_PARTS):
            columns[name] = pa.array(np.asarray(texts_for(batch, part), dtype=object)[take].tolist(), pa.large_string())
    return pa.table(columns)


_BUILT: dict[str, object] = {}  # embedders built in this worker process, by factory


def _built(factory: Callable[[], object]):
    key = repr(factory)
    if key not in _BUILT:
        _BUILT[key] = factory()
    return _BUILT[key]


def partition_edges(block: pa.Table, k: int, floor: float, threshold: float | None, lexical: bool,
                    device: str = "cpu", verifier=None, propose: float = DEFAULT_PROPOSE,
                    part_models: list | None = None, part_factories: list | None = None) -> pa.Table:
    """Within each k-means cluster of this hash partition: the local kNN graph among its members (top-k at
    cosine >= floor, with character edits), as undirected (src < dst) node-id edges. With `threshold`, only
    the edges that link duplicates are kept.

    With a `verifier` (cascade) the block's vectors are the proposer's: the cluster's graph is the local
    cascade_graph's, i.e. proposals at cosine >= `propose` or typo-sized edits (searched down to
    STATIC_TYPO_FLOOR), re-scored with the verifier's vectors of the proposed texts, kept at cosine >= floor.

    --on pair (the block has the part columns): each edge is then scored part by part (the local by_parts) with
    `part_models`, or embedders built once per worker process from `part_factories`."""
    empty = pa.table({"src": pa.array([], pa.int64()), "dst": pa.array([], pa.int64()),
                      "sim": pa.array([], pa.float32()), "edits": pa.array([], pa.int32()),
                      "length": pa.array([], pa.int32())})
    if block.num_rows < 2:
        return empty
    parts = block.column(PART).to_numpy()
    nodes = block.column(NODE).to_numpy()
    vectors = _vectors(block.column(VECTOR))
    texts = block.column(TEXT).to_pylist()
    pair_texts = [block.column(name).to_pylist() for name in PARTS] if PARTS[0] in block.column_names else None
    if pair_texts is not None and part_models is None:
        part_models = [_built(factory) for factory in part_factories or []]
    order = np.argsort(parts, kind="stable")
    bounds = np.flatnonzero(np.diff(parts[order])) + 1
    out = []
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        members = members[np.argsort(nodes[members], kind="stable")]
        search_floor = floor if verifier is None else min(STATIC_TYPO_FLOOR, propose)
        src, dst, sim, _ = knn_edges(vectors[members], vectors[members], k=k + 1, floor=search_floor, device=device)
        if not len(src):
            continue
        # positions follow node order within the cluster, so (position lo, position hi) is (node lo, node hi)
        pos_lo, pos_hi = np.minimum(src, dst), np.maximum(src, dst)
        graph = with_edits(*_unique_pairs(pos_lo, pos_hi, sim), [texts[i] for i in members])
        if verifier is not None:
            graph = _verified(graph, [texts[i] for i in members], verifier, propose, floor)
        if pair_texts is not None:
            graph = by_parts(graph, _member_parts(pair_texts, members), part_models, propose, floor)
        a, b = nodes[members][graph.src], nodes[members][graph.dst]
        keep = graph.linked(threshold, lexical) if threshold is not None else np.ones(len(a), bool)
        out.append(pa.table({"src": pa.array(a[keep], pa.int64()), "dst": pa.array(b[keep], pa.int64()),
                             "sim": pa.array(graph.sim[keep], pa.float32()),
                             "edits": pa.array(graph.edits[keep], pa.int32()),
                             "length": pa.array(graph.length[keep], pa.int32())}))
    return pa.concat_tables(out) if out else empty


def _member_parts(pair_texts: list[list[str]], members: np.ndarray):
    """by_parts' part_texts over one cluster: node ids there are positions in `members`."""
    def texts(part: str, nodes: np.ndarray) -> list[str]:
        column = pair_texts[PAIR_PARTS.index(part)]
        return [column[members[i]] for i in nodes]
    return texts


def _verified(graph: NeighbourGraph, texts: list[str], verifier, propose: float, floor: float) -> NeighbourGraph:
    """The local cascade_graph's verification, on one cluster's proposer graph."""
    proposed = (graph.sim >= propose) | (graph.edits <= edit_allowance(graph.length))
    src, dst, edits, length = graph.src[proposed], graph.dst[proposed], graph.edits[proposed], graph.length[proposed]
    nodes = np.unique(np.concatenate([src, dst]))
    vectors = np.zeros((len(texts), verifier.dim), dtype=np.float32)
    if len(nodes):
        vectors[nodes] = verifier.encode([texts[i] for i in nodes])
    sim = np.clip(rowwise_dot(vectors, src, vectors, dst), -1.0, 1.0)
    kept = sim >= floor
    return NeighbourGraph(src[kept], dst[kept], sim[kept].astype(np.float32), edits[kept], length[kept])


class VerifyPartitions:
    """Actor-pool callable for the cascade's partition step: the verifier loads once per actor."""

    def __init__(self, factory: Callable[[], object], proposer_factory: Callable[[], object] | None = None):
        self.verifier = factory()
        self.part_models = [proposer_factory(), self.verifier] if proposer_factory is not None else None

    def __call__(self, block: pa.Table, **kwargs) -> pa.Table:
        return partition_edges(block, verifier=self.verifier, part_models=self.part_models, **kwargs)


def _unique_pairs(lo: np.ndarray, hi: np.ndarray, sim: np.ndarray):
    order = np.lexsort((hi, lo))
    lo, hi, sim = lo[order], hi[order], sim[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], np.clip(sim[first], -1.0, 1.0).astype(np.float32)


def merge_edges(table: pa.Table) -> NeighbourGraph:
    """Edges found in several clusters (a pair of border texts) once each, with their largest cosine."""
    if not table.num_rows:
        z = np.zeros(0, np.int64)
        return NeighbourGraph(z, z, np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32))
    src, dst = table.column("src").to_numpy(), table.column("dst").to_numpy()
    sim = table.column("sim").to_numpy()
    edits, length = table.column("edits").to_numpy(), table.column("length").to_numpy()
    order = np.lexsort((-sim, dst, src))
    src, dst, sim, edits, length = (x[order] for x in (src, dst, sim, edits, length))
    first = np.ones(len(src), dtype=bool)
    first[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    return NeighbourGraph(src[first], dst[first], sim[first].astype(np.float32), edits[first].astype(np.int32),
                          length[first].astype(np.int32), index_kind="partitioned-flat")


def component_roots(graph: NeighbourGraph, threshold: float, lexical: bool) -> tuple[np.ndarray, np.ndarray]:
    """(linked node ids, sorted; the root of each: the smallest node id of its component)."""
    src, dst = graph.edges_at(threshold, lexical)
    touched = np.unique(np.concatenate([src, dst])).astype(np.int64)
    if not len(touched):
        return touched, touched
    labels = connected_components(len(touched), np.searchsorted(touched, src), np.searchsorted(touched, dst))
    return touched, touched[labels]


def group_block(batch: pa.Table, touched: np.ndarray, roots: np.ndarray) -> pa.Table:
    """Each row's component root (its own node when it has no duplicate edge)."""
    node = batch.column(NODE).to_numpy()
    group = node.copy()
    if len(touched):
        at = np.minimum(np.searchsorted(touched, node), len(touched) - 1)
        hit = touched[at] == node
        group[hit] = roots[at[hit]]
    return batch.append_column(GROUP, pa.array(group, pa.int64()))


def _strip_exact(batch: pa.Table) -> pa.Table:
    return batch.drop_columns([c for c in batch.column_names if c.startswith("dedup_")])


def semantic_dedup(ds, embedder_factory: Callable[[], object], options: DedupOptions | None = None, *,
                   n_clusters: int | None = None, replicas: int = 2, sample_fraction: float | None = None,
                   embed_actors: int = 1, embed_batch_size: int = 1024, num_gpus: float | None = None,
                   eligible: str | None = None, num_partitions: int | None = None,
                   keep_graph: bool = False, keep_row: bool = False,
                   verifier_factory: Callable[[], object] | None = None, verify_actors: int = 1) -> RayDedupResult:
    """Near-duplicate dedup, partitioned by k-means cluster (see the module docstring for the algorithm).

    `embedder_factory()` builds the embedder inside each actor (`.encode(texts)` -> normalised float32 rows).
    `n_clusters` defaults to one per NODES_PER_CLUSTER texts; `replicas` is how many nearest centroids each
    text joins (1: no border handling; 2: SemDeDup-style borders). `keep_graph` returns every kNN edge at
    cosine >= options.floor (the local graph artefact's edges within clusters), not only the linking ones.

    With `verifier_factory` it is the local cascade (`dedup(..., verifier=...)`): `embedder_factory` builds the
    proposer (the static model) whose vectors are clustered and searched; within each cluster the proposals
    (cosine >= options.propose, or typo-sized edits) are re-scored by the verifier, on `verify_actors` actors
    that each load it once; dedup_sim_to_rep is the verifier's cosine, as in the local cascade.
    """
    from ray.data import ActorPoolStrategy

    options = options or DedupOptions()
    if replicas < 1:
        raise InputError(f"replicas: expected at least 1, got {replicas}")
    with one_line_errors():
        keyed = _prepare(ds, options, eligible)
        rows_in = keyed.count()
        exact = hash_groupby(keyed, KEY, decide_block, rows_in, num_partitions, group=KEY)
        embedded = exact.map_batches(_strip_exact, batch_format="pyarrow").map_batches(
            EmbedBlock, batch_format="pyarrow", batch_size=embed_batch_size,
            fn_constructor_kwargs={"factory": embedder_factory, "on": options.on},
            compute=ActorPoolStrategy(size=embed_actors), num_gpus=num_gpus).materialize()
        nodes = embedded.map_batches(_nodes, batch_format="pyarrow").materialize()
        n_nodes = nodes.count()
        clusters = n_clusters or max(1, -(-n_nodes // NODES_PER_CLUSTER))
        fraction = sample_fraction or min(1.0, clusters * SAMPLE_PER_CLUSTER / max(n_nodes, 1))
        sample = gather_table(nodes.map_batches(_sampled, batch_format="pyarrow", fn_kwargs={"fraction": fraction}))
        if sample.num_rows < clusters:  # a tiny input: train on every node
            sample = gather_table(nodes.map_batches(_sampled, batch_format="pyarrow", fn_kwargs={"fraction": 1.1}))
        sample = sample.sort_by(ROW) if sample.num_rows else sample
        centroids = train_centroids(_vectors(sample.column(VECTOR)), clusters, seed=options.seed) if n_nodes \
            else np.zeros((1, 1), np.float32)
        assigned = nodes.map_batches(assign_block, batch_format="pyarrow",
                                     fn_kwargs={"centroids": centroids, "replicas": replicas, "on": options.on})
        search = dict(k=options.k, floor=options.floor, threshold=None if keep_graph else options.threshold,
                      lexical=options.lexical)
        if verifier_factory is None:
            edges_ds = hash_groupby(assigned, PART, partition_edges, n_nodes * replicas, num_partitions,
                                    part_factories=[embedder_factory] if options.on == "pair" else None, **search)
        else:
            edges_ds = hash_groupby(assigned, PART, VerifyPartitions, n_nodes * replicas, num_partitions,
                                    actors=verify_actors,
                                    constructor={"factory": verifier_factory,
                                                 "proposer_factory": embedder_factory if options.on == "pair" else None},
                                    num_gpus=num_gpus, propose=options.propose, **search)
        edge_table = gather_table(edges_ds)
        graph = merge_edges(edge_table)
        touched, roots = component_roots(graph, options.threshold, options.lexical)
        grouped = embedded.map_batches(group_block, batch_format="pyarrow",
                                       fn_kwargs={"touched": touched, "roots": roots})
        if verifier_factory is not None:  # the verifier's vectors for the texts in a duplicate cluster
            grouped = grouped.map_batches(
                EmbedBlock, batch_format="pyarrow", batch_size=embed_batch_size,
                fn_constructor_kwargs={"factory": verifier_factory, "on": options.on, "only": touched},
                compute=ActorPoolStrategy(size=verify_actors), num_gpus=num_gpus)
        decided = hash_groupby(grouped, GROUP, decide_block, rows_in, num_partitions, group=GROUP, with_vectors=True)
        sizes = np.bincount(np.unique(roots, return_inverse=True)[1].ravel()) if len(roots) else np.zeros(0, int)
        linked = int(np.sum(graph.linked(options.threshold, options.lexical)))
        extra = {"linked_edges": linked, **({"graph_edges": int(len(graph.sim))} if keep_graph else {}),
                 "index": graph.index_kind, "kmeans_clusters": int(len(centroids)),
                 "replicas": replicas, "kmeans_sample": int(sample.num_rows),
                 "largest_text_cluster": int(sizes.max()) if len(sizes) else 1}
        if verifier_factory is not None:
            extra.update(propose_threshold=options.propose, cascade=True)
        return _finish(decided, rows_in, options, extra, edges=_graph_table(graph),
                       meta={"centroids": centroids, "nodes": n_nodes}, keep_row=keep_row)


def _graph_table(graph: NeighbourGraph) -> pa.Table:
    return pa.table({"src": pa.array(graph.src, pa.int64()), "dst": pa.array(graph.dst, pa.int64()),
                     "sim": pa.array(graph.sim, pa.float32()), "edits": pa.array(graph.edits, pa.int32()),
                     "length": pa.array(graph.length, pa.int32())})
