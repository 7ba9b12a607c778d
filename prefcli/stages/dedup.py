"""Exact and semantic near-duplicate detection, eval-set decontamination and keep policies.

Pipeline over one table:
1. exact pass: rows whose normalised text hashes alike share one node (only nodes are embedded);
2. semantic pass: kNN over node embeddings gives a neighbour graph (top-k above a floor), kept as an
   artefact so another --threshold re-clusters without embedding or searching again;
3. edges at cosine >= threshold join nodes into clusters (vectorised union-find);
4. one representative per cluster by the keep policy; contaminated rows are never representatives.

Everything here is pure: tables, vectors and models come in, a StageResult comes out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..cache.graphs import GRAPH_DIR, graph_path, graph_source  # noqa: F401 (GRAPH_DIR re-exported)
from ..errors import InputError
from ..memory import release_memory
from ..models.index import NeighbourIndex, SpilledVectors, connected_components, rowwise_dot, spilled
from ..report import StageResult, mark_set_aside
from ..schema import core_columns, with_stage_columns
from ..stage import (SET_ASIDE, TRUST_REMOTE_CODE_HELP, Context, Params, Read, Resources, Stage, Write, option,
                     register)
from ..text import TEXT_CHUNK, TableTexts, digest, normalize, pick, render_messages, take_texts, text_key, text_keys

STAGE = "dedup"
TEXT_VIEWS = ("prompt", "pair", "chosen")
KEEP_POLICIES = ("first", "longest", "strongest", "random")
DEFAULT_THRESHOLD = 0.92
DEFAULT_AGAINST_THRESHOLD = 0.9
GRAPH_K = 10  # neighbours kept per text in the graph artefact
SEARCH_CHUNK = 65_536  # queries per kNN search call
GRAPH_FLOOR = 0.5  # edges below this cosine are not kept: thresholds below it need a new search
# Typo rescue: kNN candidates whose normalised texts differ by a few character edits (OSA distance
# <= max(MIN_EDITS, EDIT_RATIO * length)) are duplicates whatever their cosine: a typo in a short
# prompt can drop MiniLM's cosine to 0.3, while templated prompts differing in a word stay apart.
MIN_EDITS = 2
EDIT_RATIO = 0.03
EDIT_CHUNK = 16_384  # edges per batch of edit distances
EXPLAIN_THRESHOLDS = (0.8, 0.85, 0.9, 0.92, 0.95, 0.98)
# Cascade: the static model proposes neighbours at this cosine (its own scale: generous, so that the
# encoder's duplicates are all among the candidates); the verifier embeds only the candidates' texts.
DEFAULT_PROPOSE = 0.8
STATIC_TYPO_FLOOR = 0.3  # a swapped pair of letters can take a short prompt's static cosine below 0.5
REASONS = ("exact", "semantic", "contaminated")


@dataclass
class DedupOptions:
    on: str = "prompt"
    threshold: float = DEFAULT_THRESHOLD
    keep: str = "first"
    seed: int = 0
    against_threshold: float = DEFAULT_AGAINST_THRESHOLD
    drop: bool = False
    device: str = "auto"
    lexical: bool = True
    k: int = GRAPH_K
    floor: float = GRAPH_FLOOR
    propose: float = DEFAULT_PROPOSE  # cascade only: static cosine at which a pair becomes a candidate

    def check(self) -> None:
        if self.on not in TEXT_VIEWS:
            raise InputError(f"--on: expected one of {', '.join(TEXT_VIEWS)}, got '{self.on}'")
        if self.keep not in KEEP_POLICIES:
            raise InputError(f"--keep: expected one of {', '.join(KEEP_POLICIES)}, got '{self.keep}'")
        for name, value in (("--threshold", self.threshold), ("--against-threshold", self.against_threshold)):
            if not 0.0 < value <= 1.0:
                raise InputError(f"{name}: expected a cosine similarity in (0, 1], got {value}")
        if self.threshold < self.floor:
            raise InputError(f"--threshold {self.threshold}: below the neighbour-graph floor {self.floor}")
        if not 0.0 < self.propose <= 1.0:
            raise InputError(f"--propose-threshold: expected a cosine similarity in (0, 1], got {self.propose}")


# --------------------------------------------------------------------------- exact pass

@dataclass
class ExactGroups:
    """Rows grouped by normalised-text hash. Nodes are numbered in order of first occurrence."""

    keys: list[str]  # one per node
    node_of_row: np.ndarray  # int64, row -> node
    first_row: np.ndarray  # int64, node -> its first row

    @property
    def nodes(self) -> int:
        return len(self.keys)


def exact_groups(keys: Sequence[str]) -> ExactGroups:
    if not len(keys):
        return ExactGroups([], np.zeros(0, np.int64), np.zeros(0, np.int64))
    packed = np.array(keys, dtype="S32")
    _, first, inverse = np.unique(packed, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    node_of_sorted = np.empty_like(order)
    node_of_sorted[order] = np.arange(len(order))
    first_row = first[order].astype(np.int64)
    return ExactGroups([keys[i] for i in first_row], node_of_sorted[inverse.ravel()].astype(np.int64), first_row)


# --------------------------------------------------------------------------- neighbour graph

@dataclass
class NeighbourGraph:
    """Undirected kNN edges between nodes (src < dst), cosine >= floor; the re-threshold artefact."""

    src: np.ndarray  # int64 node ids
    dst: np.ndarray
    sim: np.ndarray  # float32
    edits: np.ndarray  # int32 character edits between the normalised texts
    length: np.ndarray  # int32 length of the longer normalised text
    fingerprint: str = ""
    index_kind: str = ""
    meta: dict = field(default_factory=dict)

    def linked(self, threshold: float, lexical: bool = True) -> np.ndarray:
        """Which edges make duplicates: cosine >= threshold, or (lexical) only a few typo-sized edits apart."""
        keep = self.sim >= threshold
        if lexical:
            keep |= self.edits <= edit_allowance(self.length)
        return keep

    def edges_at(self, threshold: float, lexical: bool = True) -> tuple[np.ndarray, np.ndarray]:
        keep = self.linked(threshold, lexical)
        return self.src[keep], self.dst[keep]

    def to_table(self, groups: ExactGroups, pair_ids: "Sequence[str] | pa.ChunkedArray") -> pa.Table:
        """Parquet-ready: text keys (what re-clustering needs) plus the pair_ids of their first rows. Each node's
        key and pair_id is stored once, as a dictionary the edges index (two int32 per edge, not four strings)."""
        keys = pa.array(groups.keys, pa.large_string())
        pair_ids = pair_ids.combine_chunks() if isinstance(pair_ids, pa.ChunkedArray) else pa.array(pair_ids)
        first_pairs = pair_ids.cast(pa.large_string()).take(pa.array(groups.first_row, pa.int64()))
        src, dst = pa.array(self.src.astype(np.int32)), pa.array(self.dst.astype(np.int32))
        meta = {"fingerprint": self.fingerprint, "index": self.index_kind,
                **{k: str(v) for k, v in self.meta.items()}}
        return pa.table({
            "text_key": pa.DictionaryArray.from_arrays(src, keys),
            "neighbour_text_key": pa.DictionaryArray.from_arrays(dst, keys),
            "pair_id": pa.DictionaryArray.from_arrays(src, first_pairs),
            "neighbour_pair_id": pa.DictionaryArray.from_arrays(dst, first_pairs),
            "similarity": pa.array(self.sim, pa.float32()),
            "edits": pa.array(self.edits, pa.int32()),
            "length": pa.array(self.length, pa.int32()),
        }).replace_schema_metadata({f"prefcli.dedup.{k}": v for k, v in meta.items()})

    @classmethod
    def from_table(cls, table: pa.Table, groups: ExactGroups) -> "NeighbourGraph":
        meta = {k.decode()[len("prefcli.dedup."):]: v.decode()
                for k, v in (table.schema.metadata or {}).items() if k.startswith(b"prefcli.dedup.")}
        lookup = {k: i for i, k in enumerate(groups.keys)}
        try:
            src = np.array([lookup[k] for k in table.column("text_key").to_pylist()], dtype=np.int64)
            dst = np.array([lookup[k] for k in table.column("neighbour_text_key").to_pylist()], dtype=np.int64)
        except KeyError as exc:
            raise InputError(f"neighbour graph does not match this input (unknown text {exc})") from None
        sim = table.column("similarity").to_numpy().astype(np.float32)
        edits, length = (table.column(c).to_numpy().astype(np.int32) for c in ("edits", "length"))
        return cls(src, dst, sim, edits, length, meta.pop("fingerprint", ""), meta.pop("index", ""), meta)


def graph_fingerprint(groups: ExactGroups, *, model_id: str, on: str, k: int, floor: float) -> str:
    """Identifies a graph: the set of texts (order-free), the model, the text view and the kNN settings."""
    body = "\n".join([model_id, on, str(k), repr(float(floor)), *sorted(groups.keys)])
    return digest(body)


def build_graph(vectors: "np.ndarray | SpilledVectors", texts: Sequence[str], *, k: int = GRAPH_K,
                floor: float = GRAPH_FLOOR, device: str = "auto") -> NeighbourGraph:
    """Self-kNN over L2-normalised vectors (one per text): each node's top-k neighbours at cosine >= floor."""
    if len(vectors) < 2:
        return with_edits(*_no_edges(), texts, index_kind="none")
    src, dst, sim, kind = knn_edges(vectors, vectors, k=k + 1, floor=floor, device=device)
    return with_edits(*undirected_edges(src, dst, sim), texts, index_kind=kind)


def knn_edges(base: "np.ndarray | SpilledVectors", queries: "np.ndarray | SpilledVectors", *, k: int, floor: float,
              device: str, offset: int = 0, base_offset: int = 0):
    """(query node, base node, cosine, index kind) for each query's top-k base neighbours at cosine >= floor.

    Node ids are positions plus the offsets; a query never links to itself.
    """
    index = NeighbourIndex(base, device=device)
    found = []
    for start in range(0, len(queries), SEARCH_CHUNK):  # the search's buffers stay a chunk's size
        sims, ids = index.search(queries[start:start + SEARCH_CHUNK], k)
        rows = np.repeat(np.arange(start, start + len(ids), dtype=np.int64) + offset, ids.shape[1])
        ids, sims = ids.ravel().astype(np.int64), sims.ravel()
        keep = (ids >= 0) & (sims >= floor)
        ids = ids + base_offset
        keep &= ids != rows
        found.append((rows[keep], ids[keep], sims[keep]))
    if not found:
        return (*_no_edges(), index.kind)
    return (*(np.concatenate([f[i] for f in found]) for i in range(3)), index.kind)


def with_edits(src: np.ndarray, dst: np.ndarray, sim: np.ndarray, texts: Sequence[str], **kw) -> NeighbourGraph:
    """A graph whose edges carry the character edit distance between their normalised texts. With a TableTexts
    only a chunk's texts are held at a time."""
    from rapidfuzz.distance import OSA
    from rapidfuzz.process import cpdist

    if not len(src):
        return NeighbourGraph(src, dst, sim, np.zeros(0, np.int32), np.zeros(0, np.int32), **kw)
    ends = np.unique(np.concatenate([src, dst]))  # the texts with an edge
    sizes = np.empty(len(ends), np.int32)
    for start in range(0, len(ends), TEXT_CHUNK):
        sizes[start:start + TEXT_CHUNK] = [len(normalize(t)) for t in take_texts(texts, ends[start:start + TEXT_CHUNK])]
    a, b = np.searchsorted(ends, src), np.searchsorted(ends, dst)
    length = np.maximum(sizes[a], sizes[b])
    allowed = edit_allowance(length)
    # only pairs whose lengths could be within the allowance are compared, with a bounded (banded) distance;
    # a chunk at a time, normalising just that chunk's texts (no normalised copy of every text is kept)
    edits = length.copy()
    close = np.flatnonzero(np.abs(sizes[a] - sizes[b]) <= allowed)
    for start in range(0, len(close), EDIT_CHUNK):
        chunk = close[start:start + EDIT_CHUNK]
        ids = np.unique(np.concatenate([a[chunk], b[chunk]]))
        normal = dict(zip(ids.tolist(), map(normalize, take_texts(texts, ends[ids]))))
        edits[chunk] = cpdist([normal[i] for i in a[chunk].tolist()], [normal[i] for i in b[chunk].tolist()],
                              scorer=OSA.distance, score_cutoff=int(allowed[chunk].max()), workers=1)
    release_memory(collect=False)  # a million texts read and normalised a chunk at a time
    return NeighbourGraph(src, dst, sim, edits.astype(np.int32), length, **kw)


def edit_allowance(length: np.ndarray) -> np.ndarray:
    """Character edits at which two texts of this (longer) length count as the same text with typos."""
    return np.maximum(MIN_EDITS, (EDIT_RATIO * length).astype(np.int32))


def undirected_edges(a: np.ndarray, b: np.ndarray, sim: np.ndarray):
    """Edges as (low, high) node pairs, each once, with similarities clipped to [-1, 1]."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((hi, lo))
    lo, hi, sim = lo[order], hi[order], sim[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], np.clip(sim[first], -1.0, 1.0).astype(np.float32)


def _no_edges():
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


# --------------------------------------------------------------------------- decontamination

@dataclass
class Contamination:
    flagged: np.ndarray  # bool per row
    similarity: np.ndarray  # float64 per row: best cosine to any eval prompt (1.0 for exact matches)
    exact: int = 0
    semantic: int = 0
    exact_rows: np.ndarray | None = None  # bool per row: an exact match (the rest of `flagged` are semantic)


class EvalPrompts:
    """The eval prompts to decontaminate against: their content keys, and their vectors under each model,
    embedded once (an engine's worker keeps one for all the blocks it checks)."""

    def __init__(self, prompts: Sequence[str], device: str = "auto"):
        self.prompts = [p for p in prompts if p.strip()]
        self.keys = set(text_keys(self.prompts))
        self.device = device
        self._indexes: dict[str, NeighbourIndex] = {}

    def best_match(self, embedder, texts: Sequence[str]) -> np.ndarray:
        """Each text's highest cosine to any eval prompt."""
        index = self._indexes.get(embedder.model_id)
        if index is None:
            index = self._indexes[embedder.model_id] = NeighbourIndex(embedder.encode(self.prompts),
                                                                      device=self.device)
        sims, _ = index.search(embedder.encode(texts), 1)
        return np.clip(sims[:, 0], -1.0, 1.0).astype(np.float64)


def contamination(table: pa.Table, eval_prompts: "Sequence[str] | EvalPrompts", embedder, *, threshold: float,
                  device: str = "auto", proposer=None, propose: float = DEFAULT_PROPOSE) -> Contamination:
    """Rows whose prompt matches an eval prompt: exactly (whole prompt or any user turn) or at cosine >= threshold.

    With a `proposer` (cascade) only prompts whose proposer cosine to an eval prompt reaches `propose` are
    embedded by `embedder`; the others keep the proposer's cosine in dedup_against_sim. Row by row: any split of
    the table gives the same answer per row."""
    n = table.num_rows
    evals = eval_prompts if isinstance(eval_prompts, EvalPrompts) else EvalPrompts(eval_prompts, device)
    if not evals.prompts:
        return Contamination(np.zeros(n, bool), np.zeros(n), exact_rows=np.zeros(n, bool))
    if n > TEXT_CHUNK:  # row by row, so a chunk at a time: one chunk's prompts and vectors are held, not all
        parts = [contamination(table.slice(start, TEXT_CHUNK), evals, embedder, threshold=threshold,
                               device=device, proposer=proposer, propose=propose)
                 for start in range(0, n, TEXT_CHUNK)]
        return Contamination(np.concatenate([c.flagged for c in parts]),
                             np.concatenate([c.similarity for c in parts]),
                             sum(c.exact for c in parts), sum(c.semantic for c in parts),
                             exact_rows=np.concatenate([c.exact_rows for c in parts]))
    prompts = table.column("prompt").to_pylist()
    rendered = [render_messages(m) for m in prompts]
    groups = exact_groups(text_keys(rendered))
    node_exact = np.array([k in evals.keys for k in groups.keys], dtype=bool)
    turn_exact = np.array([any(m["role"] == "user" and text_key(m["content"]) in evals.keys for m in turns)
                           for turns in prompts], dtype=bool)
    exact = node_exact[groups.node_of_row] | turn_exact
    node_texts = [rendered[i] for i in groups.first_row]
    if proposer is None:
        node_best = evals.best_match(embedder, node_texts)
    else:
        node_best = evals.best_match(proposer, node_texts)
        candidates = np.flatnonzero(node_best >= propose)
        if len(candidates):
            node_best[candidates] = evals.best_match(embedder, [node_texts[i] for i in candidates])
    best = node_best[groups.node_of_row]
    semantic = (best >= threshold) & ~exact
    best[exact] = 1.0
    return Contamination(exact | semantic, best, int(exact.sum()), int(semantic.sum()), exact_rows=exact)


# --------------------------------------------------------------------------- keep policy and columns

def keep_priority(table: pa.Table, texts: Sequence[str], keep: str, seed: int) -> tuple[np.ndarray, str]:
    """Higher wins; ties go to the earlier row. Returns (priority per row, what it was computed from)."""
    n = table.num_rows
    if keep == "first":
        return np.zeros(n), "row order"
    if keep == "longest":
        return np.fromiter(map(len, texts), float, len(texts)), "text length"  # characters, as utf8_length
    if keep == "strongest":
        if "pref_mean" in table.column_names:
            return _filled(table.column("pref_mean")), "pref_mean"
        if table.column("chosen_score").null_count < n:
            margin = pc.subtract(table.column("chosen_score"), table.column("rejected_score"))
            return _filled(margin), "chosen_score - rejected_score"
        raise InputError("--keep strongest: needs a pref_mean column (run `prefcli vote` first) "
                         "or chosen_score/rejected_score values")
    if keep == "random":
        # a hash of (seed, pair_id): the same row wins whatever else is in the file or its order
        ids = table.column("pair_id").to_pylist()
        return np.array([int(digest(f"{seed}:{p}")[:12], 16) for p in ids], dtype=float), f"random (seed {seed})"
    raise InputError(f"--keep: expected one of {', '.join(KEEP_POLICIES)}, got '{keep}'")


def _filled(column) -> np.ndarray:
    values = pc.fill_null(pc.cast(column, pa.float64()), -np.inf)
    return values.to_numpy(zero_copy_only=False) if hasattr(values, "to_numpy") else np.asarray(values)


def choose_representatives(cluster: np.ndarray, priority: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Representative row of each row's cluster (-1 where no row of the cluster is eligible)."""
    n = len(cluster)
    rep = np.full(n, -1, dtype=np.int64)
    if not n:
        return rep
    rows = np.arange(n)
    order = np.lexsort((rows, -priority, ~eligible, cluster))
    starts = np.ones(n, dtype=bool)
    starts[1:] = cluster[order][1:] != cluster[order][:-1]
    winners = order[starts]
    winner_of = np.full(cluster.max() + 1, -1, dtype=np.int64)
    winner_of[cluster[winners]] = np.where(eligible[winners], winners, -1)
    return winner_of[cluster]


def similarity_to(nodes_a: np.ndarray, nodes_b: np.ndarray, vectors: "np.ndarray | SpilledVectors | None",
                  graph: NeighbourGraph) -> np.ndarray:
    """Cosine between node pairs: from vectors when given, else the graph edge (NaN if not adjacent)."""
    out = np.full(len(nodes_a), np.nan)
    same = nodes_a == nodes_b
    out[same] = 1.0
    todo = ~same & (nodes_a >= 0) & (nodes_b >= 0)
    if vectors is not None:
        out[todo] = np.clip(rowwise_dot(vectors, nodes_a[todo], vectors, nodes_b[todo]), -1.0, 1.0)
        return out
    lookup = dict(zip(zip(graph.src.tolist(), graph.dst.tolist()), graph.sim.tolist()))
    idx = np.flatnonzero(todo)
    lo, hi = np.minimum(nodes_a[idx], nodes_b[idx]), np.maximum(nodes_a[idx], nodes_b[idx])
    out[idx] = [lookup.get((x, y), np.nan) for x, y in zip(lo.tolist(), hi.tolist())]
    return out


def dedup_columns(cluster_key: Sequence[str], is_rep: np.ndarray, sim: np.ndarray,
                  reason: Sequence[str | None], against_sim: np.ndarray | None) -> dict[str, pa.Array]:
    columns = {
        "dedup_cluster": pa.array(cluster_key, pa.large_string()),
        "dedup_is_rep": pa.array(is_rep, pa.bool_()),
        "dedup_sim_to_rep": pa.array(np.round(sim, 6), pa.float64(), mask=np.isnan(sim)),
        "dedup_reason": pa.array(reason, pa.large_string()),
    }
    if against_sim is not None:
        columns["dedup_against_sim"] = pa.array(np.round(against_sim, 6), pa.float64())
    return columns


def split_result(table: pa.Table, is_rep: np.ndarray, reasons: Sequence[str | None], drop: bool,
                 stats: dict) -> StageResult:
    """Without drop every row stays (flagged); with drop non-representatives are set aside with their reason."""
    if not drop:
        return StageResult(table, None, stats)
    keep = pa.array(is_rep, pa.bool_())
    removed_idx = np.flatnonzero(~is_rep)
    removed = mark_set_aside(table.filter(pc.invert(keep)), [reasons[i] for i in removed_idx], STAGE)
    return StageResult(table.filter(keep), removed, stats)


# --------------------------------------------------------------------------- the stage

@dataclass
class DedupRun:
    result: StageResult
    graph: NeighbourGraph
    groups: ExactGroups
    texts: list[str]
    vectors: "np.ndarray | SpilledVectors | None"


def stage_texts(table: pa.Table, on: str) -> TableTexts:
    """The rows' texts in the `on` view, read from the table a chunk at a time when used (never held whole)."""
    texts = TableTexts(table, on)
    row = next((i for i, text in enumerate(texts) if not text or text.isspace()), None)
    if row is not None:
        raise InputError(f"row {row}: empty {on} text (dedup --on {on} needs text to compare)")
    return texts


def dedup(table: pa.Table, embedder, options: DedupOptions, *, against: Sequence[str] = (),
          graph_source: Callable[[str], pa.Table | None] | None = None, verifier=None,
          omit: Sequence[str] = ()) -> DedupRun:
    """Flag (or with options.drop set aside) duplicate and contaminated rows.

    `embedder` is a CachedEmbedder-like object (.encode, .lookup, .model_id, .computed).
    With a `verifier` (another such object) the search is a cascade: `embedder` (the static model)
    proposes the neighbours at cosine >= options.propose, and only their texts are embedded by the
    verifier, whose cosine decides at options.threshold (the typo rescue applies to the candidates).
    `graph_source(fingerprint)` may return a stored neighbour graph; one whose fingerprint matches
    this input's texts, models, text view and kNN settings is used with no embedding and no search.
    `omit`: input columns left out of the kept and set-aside tables (the caller puts them back).
    """
    options.check()
    models = [m for m in (embedder, verifier) if m is not None]
    computed_before = [m.computed for m in models]
    texts = stage_texts(table, options.on)
    priority = keep_priority(table, texts, options.keep, options.seed)  # before any embedding: fails fast
    groups = exact_groups(text_keys(texts))
    model_id = embedder.model_id if verifier is None else cascade_id(embedder, verifier, options.propose)
    view = "pair:parts" if options.on == "pair" else options.on  # pair graphs are scored part by part
    fingerprint = graph_fingerprint(groups, model_id=model_id, on=view, k=options.k, floor=options.floor)
    graph_table = graph_source(fingerprint) if graph_source is not None else None
    reused = graph_table is not None and _table_fingerprint(graph_table) == fingerprint
    graph = NeighbourGraph.from_table(graph_table, groups) if reused else None
    node_texts = pick(texts, groups.first_row)
    if graph is None:
        if verifier is None:
            vectors = spilled_vectors(embedder, node_texts)  # read back a chunk at a time: search, similarities
            release_memory(collect=False)  # each step below peaks on what the step before left resident
            graph = build_graph(vectors, node_texts, k=options.k, floor=options.floor, device=options.device)
        else:
            graph, vectors = cascade_graph(node_texts, embedder, verifier, options)
        release_memory(collect=False)
        if options.on == "pair":
            graph = by_parts(graph, pair_part_texts(table, groups.first_row), models, options.propose,
                             options.floor)
        graph.fingerprint = fingerprint
        graph.meta = {**graph.meta, "model": model_id, "on": options.on, "k": options.k, "floor": options.floor}
    else:  # exact similarities to representatives when the cache has every clustered text's vector
        vectors = cached_vectors(verifier or embedder, node_texts, graph)
    contam = contamination(table, against, verifier or embedder, threshold=options.against_threshold,
                           device=options.device, proposer=embedder if verifier is not None else None,
                           propose=options.propose) if against else None
    result = label_rows(table, groups, graph, vectors, options, contam, priority, omit=omit)
    embedded = [m.computed - before for m, before in zip(models, computed_before)]
    result.stats.update(embedded=embedded[-1], graph_reused=reused)
    if verifier is not None:
        result.stats.update(proposer=embedder.model_id, verifier=verifier.model_id, propose_threshold=options.propose,
                            proposed_edges=int(graph.meta.get("proposed_edges", len(graph.sim))),
                            verified_texts=int(graph.meta.get("verified_texts", 0)))
    return DedupRun(result, graph, groups, texts, vectors)


PAIR_PARTS = ("prompt", "chosen", "rejected")


def pair_part_texts(table: pa.Table, rows: np.ndarray) -> Callable[[str, np.ndarray], Sequence[str]]:
    """--on pair: `texts(part, nodes)` gives the part's texts of those nodes, `rows[node]` being each node's row
    of `table`, read from the table a chunk at a time when used."""
    def texts(part: str, nodes: np.ndarray) -> TableTexts:
        return TableTexts(table, part, rows[nodes])
    return texts


def by_parts(graph: NeighbourGraph, part_texts: Callable[[str, np.ndarray], Sequence[str]], models: Sequence,
             propose: float = DEFAULT_PROPOSE, floor: float = GRAPH_FLOOR) -> NeighbourGraph:
    """--on pair: two pairs are near-duplicates only when their prompts, chosen and rejected responses each are
    (one long shared part must not make two different pairs look alike). The whole-pair search proposes the
    edges; each edge's cosine becomes its least similar part's, each part embedded on its own (identical parts:
    1.0; with a proposer and a verifier, as in the cascade, the verifier re-scores the parts the proposer puts
    at `propose` or above); the typo rescue holds only when every part is within its own edit allowance.
    `part_texts(part, nodes)` gives the texts of a part (PAIR_PARTS) for sorted node ids; `models` are
    embedders (.encode, normalised rows). An edge is dropped as soon as one part is below the graph `floor`
    and not a typo copy (it can link at no threshold the graph keeps), so each part reads and embeds only the
    texts of the edges still standing, the prompt (shortest) first."""
    for part in PAIR_PARTS:
        if not len(graph.src):
            return graph
        part_sim, part_typo = _part_similarity(graph, part, part_texts, models, propose)
        sim = np.minimum(graph.sim if part != PAIR_PARTS[0] else 1.0, part_sim).astype(np.float32)
        edits = np.where(part_typo, graph.edits, graph.length + 1).astype(np.int32)
        keep = (sim >= floor) | (edits <= edit_allowance(graph.length))  # can still link
        graph = NeighbourGraph(graph.src[keep], graph.dst[keep], sim[keep], edits[keep], graph.length[keep],
                               graph.fingerprint, graph.index_kind, {**graph.meta, "by_parts": True})
        release_memory(collect=False)
    return graph


def _part_similarity(graph: NeighbourGraph, part: str, part_texts: Callable[[str, np.ndarray], Sequence[str]],
                     models: Sequence, propose: float) -> tuple[np.ndarray, np.ndarray]:
    """Each edge's cosine on one part, and whether that part is within its edit allowance. Locally the part's
    texts are a TableTexts, read a chunk at a time (sizes, edit distances, vectors), never all at once."""
    nodes = np.unique(np.concatenate([graph.src, graph.dst]))
    src, dst = np.searchsorted(nodes, graph.src), np.searchsorted(nodes, graph.dst)  # positions in `nodes`
    texts = part_texts(part, nodes)
    found = with_edits(src, dst, graph.sim, texts)
    part_typo = found.edits <= edit_allowance(found.length)
    part_sim = np.ones(len(src), np.float32)
    todo = np.flatnonzero(found.edits > 0)  # the same normalised text: 1.0
    del found
    for j, model in enumerate(models):
        if not len(todo):
            break
        ends = np.unique(np.concatenate([src[todo], dst[todo]]))
        vectors, row_of = distinct_vectors(model, pick(texts, ends))  # a text repeated in many pairs: one vector;
        #                                                                    spilled: its rows read as the edges ask
        part_sim[todo] = np.clip(rowwise_dot(vectors, row_of[np.searchsorted(ends, src[todo])],
                                             vectors, row_of[np.searchsorted(ends, dst[todo])]), -1.0, 1.0)
        del vectors, row_of
        if j + 1 < len(models):
            todo = todo[part_sim[todo] >= propose]
    return part_sim, part_typo


def distinct_vectors(model, texts: Sequence[str]) -> "tuple[np.ndarray | SpilledVectors, np.ndarray]":
    """(vectors of the distinct texts, each text's row among them): a CachedEmbedder's encode_distinct, its rows
    written to a temporary file as they are computed (SpilledVectors), else one in-memory row per text."""
    if hasattr(model, "encode_distinct"):
        return model.encode_distinct(texts, spill=True)
    return np.asarray(model.encode(texts), dtype=np.float32), np.arange(len(texts))


def spilled_vectors(model, texts: Sequence[str]) -> "np.ndarray | SpilledVectors":
    """The texts' vectors in a temporary file (read back by rows), never whole in memory where the model can
    write them chunk by chunk (a CachedEmbedder); else computed, then spilled."""
    if hasattr(model, "encode_distinct"):
        return model.encode(texts, spill=True)
    return spilled(np.asarray(model.encode(texts), dtype=np.float32))


def cascade_id(proposer, verifier, propose: float) -> str:
    return f"{proposer.model_id}>{verifier.model_id}@{propose:g}"


def cascade_graph(texts: Sequence[str], proposer, verifier, options: DedupOptions
                  ) -> tuple[NeighbourGraph, np.ndarray]:
    """Static kNN proposes edges at cosine >= options.propose, plus typo-sized neighbours down to
    STATIC_TYPO_FLOOR (a typo breaks the static model's tokens); the verifier re-scores them on its own vectors.

    Returns the graph (verifier cosines, edit distances for the typo rescue) and verifier vectors for
    the texts that have an edge (zeros elsewhere: no other text is ever compared)."""
    knn = build_graph(spilled_vectors(proposer, texts), texts, k=options.k,
                      floor=min(STATIC_TYPO_FLOOR, options.propose), device=options.device)
    keep = (knn.sim >= options.propose) | (knn.edits <= edit_allowance(knn.length))
    proposed = NeighbourGraph(knn.src[keep], knn.dst[keep], knn.sim[keep], knn.edits[keep], knn.length[keep],
                              index_kind=knn.index_kind)
    nodes = np.unique(np.concatenate([proposed.src, proposed.dst]))
    vectors = np.zeros((len(texts), verifier.dim), dtype=np.float32)
    if len(nodes):
        vectors[nodes] = verifier.encode(pick(texts, nodes))
    sim = np.clip(rowwise_dot(vectors, proposed.src, vectors, proposed.dst), -1.0, 1.0)
    kept = sim >= options.floor  # the same graph floor as a single-model search, on the verifier's cosine
    graph = NeighbourGraph(proposed.src[kept], proposed.dst[kept], sim[kept].astype(np.float32),
                           proposed.edits[kept], proposed.length[kept], index_kind=proposed.index_kind,
                           meta={"proposed_edges": len(sim), "verified_texts": len(nodes)})
    return graph, vectors


def cached_vectors(embedder, texts: Sequence[str], graph: NeighbourGraph) -> np.ndarray | None:
    """Vectors of every text with an edge, from the cache alone (no embedding), or None if any is missing."""
    nodes = np.unique(np.concatenate([graph.src, graph.dst]))
    found, vectors = embedder.lookup(pick(texts, nodes))
    if not found.all():
        return None
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    out[nodes] = vectors
    return out


def label_rows(table: pa.Table, groups: ExactGroups, graph: NeighbourGraph,
               vectors: "np.ndarray | SpilledVectors | None", options: DedupOptions, contam: Contamination | None,
               priority: tuple[np.ndarray, str], *, pinned: int = 0,
               pinned_clusters: Sequence[str] | None = None, omit: Sequence[str] = ()) -> StageResult:
    """Cluster at options.threshold, pick representatives, add the dedup_ columns, split if dropping.

    `priority` is keep_priority's (score per row, basis): the highest score in a cluster is its representative.
    The first `pinned` rows are an already-kept set: they win their clusters and lend them their
    `pinned_clusters` ids (incremental dedup); callers slice them off afterwards. The input columns in `omit`
    are left out of the result (not copied to split the rows: the caller has them).
    """
    n = table.num_rows
    eligible = ~contam.flagged if contam is not None else np.ones(n, bool)
    labels = connected_components(groups.nodes, *graph.edges_at(options.threshold, options.lexical))
    cluster = labels[groups.node_of_row]
    priority, keep_basis = np.array(priority[0], dtype=float), priority[1]  # a writable copy
    priority[:pinned] = np.inf
    eligible[:pinned] = True
    rep = choose_representatives(cluster, priority, eligible)
    is_rep = rep == np.arange(n)
    rep_node = np.where(rep >= 0, groups.node_of_row[np.maximum(rep, 0)], -1)
    sim = similarity_to(groups.node_of_row, rep_node, vectors, graph)
    reasons = np.where(rep_node == groups.node_of_row, "exact", "semantic").astype(object)
    reasons[is_rep] = None
    if contam is not None:
        reasons[contam.flagged] = "contaminated"
    cluster_key = np.array(groups.keys, dtype=object)[cluster]
    if pinned:
        from_kept = (rep >= 0) & (rep < pinned)
        cluster_key[from_kept] = np.asarray(pinned_clusters, dtype=object)[rep[from_kept]]
    columns = dedup_columns(cluster_key.tolist(), is_rep, sim, reasons.tolist(),
                            contam.similarity if contam is not None else None)
    stats = {
        "rows_in": n - pinned,
        "unique_texts": groups.nodes,
        "exact_duplicates": int(np.sum(reasons[pinned:] == "exact")),
        "semantic_duplicates": int(np.sum(reasons[pinned:] == "semantic")),
        "contaminated": int(contam.flagged[pinned:].sum()) if contam is not None else 0,
        "clusters": int(len(np.unique(cluster[pinned:]))),
        "graph_edges": int(len(graph.sim)),
        "index": graph.index_kind,
        "threshold": options.threshold,
        "on": options.on,
        "keep": options.keep,
        "keep_basis": keep_basis,
    }
    if contam is not None:
        stats.update(contaminated_exact=contam.exact, contaminated_semantic=contam.semantic,
                     against_threshold=options.against_threshold)
    if pinned:
        table, is_rep, reasons = table.slice(pinned), is_rep[pinned:], reasons[pinned:]
        columns = {name: values.slice(pinned) for name, values in columns.items()}
        stats["duplicates_of_kept"] = int(np.sum((rep[pinned:] >= 0) & (rep[pinned:] < pinned)))
    out = with_stage_columns(table, STAGE, columns)
    out = out.drop_columns([name for name in omit if name in out.column_names and not name.startswith(f"{STAGE}_")])
    result = split_result(out, is_rep, reasons.tolist(), options.drop, stats)
    stats.update(representatives=int(is_rep.sum()), rows_out=result.out.num_rows,
                 rows_removed=result.rows_set_aside)
    return result


def _table_fingerprint(graph_table: pa.Table) -> str:
    return (graph_table.schema.metadata or {}).get(b"prefcli.dedup.fingerprint", b"").decode()


# --------------------------------------------------------------------------- incremental: new rows vs kept set

def dedup_new_rows(new: pa.Table, kept: pa.Table, embedder, options: DedupOptions, *,
                   against: Sequence[str] = ()) -> StageResult:
    """Dedup only `new` rows: against the already-kept set (its representatives) and among themselves.

    Kept rows are never displaced: a new row that duplicates a kept row joins that row's cluster
    (its dedup_cluster id is reused) and is not a representative. Only new texts are searched, and
    only texts missing from the cache are embedded, so the cost follows the new rows.
    """
    options.check()
    computed_before = embedder.computed
    if "dedup_is_rep" in kept.column_names:
        kept = kept.filter(pc.fill_null(kept.column("dedup_is_rep"), False))
    needed = [c for c in new.schema.names if c in core_columns() or c == "pref_mean"]
    if any(c not in kept.column_names for c in needed):
        raise InputError(f"kept set lacks column '{next(c for c in needed if c not in kept.column_names)}'")
    both = pa.concat_tables([kept.select(needed).cast(new.select(needed).schema), new.select(needed)])
    texts = stage_texts(both, options.on)
    priority = keep_priority(both, texts, options.keep, options.seed)
    groups = exact_groups(text_keys(texts))
    kept_nodes = int(np.sum(groups.first_row < kept.num_rows))  # kept rows come first, so do their nodes
    node_texts = pick(texts, groups.first_row)
    graph = cross_graph(embedder.encode(node_texts), node_texts, kept_nodes, options)
    if options.on == "pair":
        graph = by_parts(graph, pair_part_texts(both, groups.first_row), [embedder], options.propose,
                         options.floor)
    contam = contamination(both, against, embedder, threshold=options.against_threshold,
                           device=options.device) if against else None
    pinned_clusters = kept.column("dedup_cluster").to_pylist() if "dedup_cluster" in kept.column_names \
        else [groups.keys[node] for node in groups.node_of_row[: kept.num_rows]]
    flagged = label_rows(both, groups, graph, None, DedupOptions(**{**vars(options), "drop": False}),
                         contam, priority, pinned=kept.num_rows, pinned_clusters=pinned_clusters)
    columns = {c: flagged.out.column(c) for c in flagged.out.column_names if c.startswith("dedup_")}
    out = with_stage_columns(new, STAGE, columns)
    is_rep = out.column("dedup_is_rep").to_numpy(zero_copy_only=False)
    stats = {**flagged.stats, "kept_rows": kept.num_rows, "embedded": embedder.computed - computed_before}
    result = split_result(out, is_rep, out.column("dedup_reason").to_pylist(), options.drop, stats)
    stats.update(rows_out=result.out.num_rows, rows_removed=result.rows_set_aside)
    return result


def cross_graph(vectors: np.ndarray, texts: Sequence[str], kept_nodes: int, options: DedupOptions) -> NeighbourGraph:
    """Edges among new nodes plus from each new node to its nearest kept nodes (kept-kept edges are skipped)."""
    fresh = vectors[kept_nodes:]
    knn = dict(k=options.k, floor=options.floor, device=options.device, offset=kept_nodes)
    parts = [knn_edges(fresh, fresh, base_offset=kept_nodes, **{**knn, "k": options.k + 1})] if len(fresh) > 1 else []
    if kept_nodes and len(fresh):
        parts.append(knn_edges(vectors[:kept_nodes], fresh, **knn))
    if not parts:
        return with_edits(*_no_edges(), texts, index_kind="none")
    src, dst, sim = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return with_edits(*undirected_edges(src, dst, sim), texts, index_kind=parts[0][3])


# --------------------------------------------------------------------------- explain

def explain(run: DedupRun, *, thresholds: Sequence[float] = EXPLAIN_THRESHOLDS, samples: int = 3,
            seed: int = 0, lexical: bool = True) -> dict:
    """Similarity histogram of each text's nearest neighbour, and what each threshold would do, with sample pairs."""
    graph, groups, texts = run.graph, run.groups, run.texts
    nearest = np.full(groups.nodes, np.nan)
    if len(graph.sim):
        best = np.full(groups.nodes, -np.inf)
        np.maximum.at(best, graph.src, graph.sim)
        np.maximum.at(best, graph.dst, graph.sim)
        nearest = np.where(np.isfinite(best), best, np.nan)
    edges = np.linspace(graph_floor(graph), 1.0, 11)
    counts, _ = np.histogram(nearest[~np.isnan(nearest)], bins=edges)
    histogram = [{"from": round(float(lo), 3), "to": round(float(hi), 3), "texts": int(c)}
                 for lo, hi, c in zip(edges[:-1], edges[1:], counts)]
    histogram.insert(0, {"from": None, "to": round(float(edges[0]), 3), "texts": int(np.isnan(nearest).sum())})
    rng = np.random.default_rng(seed)
    rows = []
    for t in sorted(thresholds):
        labels = connected_components(groups.nodes, *graph.edges_at(t, lexical))
        members = np.bincount(labels[groups.node_of_row], minlength=groups.nodes)
        band = np.flatnonzero((graph.sim >= t) & (graph.sim < t + 0.03))
        picks = rng.choice(band, size=min(samples, len(band)), replace=False) if len(band) else []
        rows.append({
            "threshold": t,
            "duplicates": int(len(groups.node_of_row) - np.count_nonzero(members)),
            "links": int(np.sum(graph.linked(t, lexical))),
            "largest_cluster": int(members.max()) if len(members) else 0,
            "samples": [{"similarity": round(float(graph.sim[e]), 4),
                         "text": _clip(texts[groups.first_row[graph.src[e]]]),
                         "neighbour": _clip(texts[groups.first_row[graph.dst[e]]])} for e in sorted(picks)],
        })
    out = {"histogram": histogram, "thresholds": rows}
    if "proposed_edges" in graph.meta:  # a cascade: what each stage did
        proposer, _, rest = str(graph.meta.get("model", "")).partition(">")
        verifier, _, propose = rest.partition("@")
        out["cascade"] = [
            {"stage": "propose", "model": proposer, "threshold": float(propose or "nan"), "texts": groups.nodes,
             "pairs": int(graph.meta["proposed_edges"])},
            {"stage": "verify", "model": verifier, "threshold": None, "texts": int(graph.meta["verified_texts"]),
             "pairs": int(graph.meta["proposed_edges"])},  # every candidate re-scored; thresholds table below
        ]
    return out


def graph_floor(graph: NeighbourGraph) -> float:
    return float(graph.meta.get("floor", GRAPH_FLOOR))


def _clip(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# --------------------------------------------------------------------------- the Stage object

def load_eval_prompts(paths: list[str] | str) -> list[str]:
    """Eval prompts from any file ingest reads, or a plain .txt / JSON / JSONL list of prompts."""
    from .ingest import load_prompts

    paths = [paths] if isinstance(paths, str) else list(paths)
    prompts = [render_messages(m) for m in load_prompts(paths)]
    if not any(p.strip() for p in prompts):
        raise InputError(f"--against {' '.join(paths)}: no prompts found")
    return prompts




class DedupParams(Params):
    on: Literal["prompt", "pair", "chosen"] = option(
        "prompt", "Text compared (prompt = rendered conversation history; pair = prompt + both responses).")
    threshold: float = option(DEFAULT_THRESHOLD, "Cosine at or above which texts are duplicates.", low=0.0, high=1.0)
    keep: Literal["first", "longest", "strongest", "random"] = option(
        "first", "Representative per cluster (strongest = highest pref_mean, from `prefcli vote`).")
    against_threshold: float = option(DEFAULT_AGAINST_THRESHOLD,
                                      "Cosine at or above which a prompt matches an eval prompt.", low=0.0, high=1.0)
    drop: bool = option(False, "Set duplicates and contaminated rows aside (default: keep every row, flagged).")
    lexical: bool = option(True, "Also link neighbours only a few character edits apart (typos), whatever their "
                                 "cosine.", negatable=True)
    model: str = option("static", "Embedding model that searches for neighbours: static (the packaged MiniLM "
                                  "distilled with model2vec, built once into the cache dir), minilm (the packaged "
                                  "all-MiniLM-L6-v2), or a sentence-transformers path or hub id (safetensors only).")
    verify: str = option("minilm", "With --model static: the model that re-scores the static model's candidate "
                                   "pairs (minilm, a path or hub id), or none to decide on static cosines alone.")
    propose: float = option(DEFAULT_PROPOSE, "With a --verify model: static cosine at which a pair becomes a "
                                             "candidate.", flag="--propose-threshold", low=0.0, high=1.0)
    trust_remote_code: bool = option(False, TRUST_REMOTE_CODE_HELP)
    explain: bool = option(False, "Print the similarity histogram and sample pairs at several thresholds.")


@register
class DedupStage(Stage):
    """Find exact and semantic near-duplicates (and eval-set contamination); flag them or --drop them."""

    name = "dedup"
    Params = DedupParams
    resources = Resources(mode="table", uses_models=True, batch_size=64,
                          on_ray="exact: hash groupby; semantic/cascade: k-means partitioned kNN, embedders in an "
                                 "actor pool (prefcli.engines.ray_dedup); with --against, --graph or --explain: "
                                 "one Ray task on a worker")
    engines = ("local", "ray")
    uses_seed = True
    sets_aside = True
    set_aside_word = "removed"
    output_help = "Output Parquet file, or - for stdout (optional with --explain)."
    reads = (Read("against", "--against", "Eval file(s) to decontaminate against: any format ingest reads, or a "
                  ".txt/.jsonl list of prompts. Repeatable.", load_eval_prompts, multiple=True),)
    writes = (Write(SET_ASIDE, "--removed", "Where --drop writes removed rows (default OUT.rejects.parquet).",
                    default_suffix=".rejects.parquet"),
              Write("graph", "--graph", "Neighbour graph Parquet: read when it matches this input, else (re)written."))

    def output_required(self) -> bool:
        return not self.params.explain

    def tables_to_stdout(self, output):
        return output is None

    def validate(self, call) -> None:
        super().validate(call)
        if call.writes.get(SET_ASIDE) and not self.params.drop:
            raise InputError("--removed needs --drop (without --drop every row is kept, flagged)")
        self._graph_path = call.writes.get("graph")

    def planned_writes(self):
        return tuple(w for w in self.writes if w.name != SET_ASIDE or self.params.drop)

    def takes_row_blocks(self) -> bool:
        return True

    def columns_needed(self, ctx: Context) -> list[str]:
        """The texts compared, pair_id (the graph, --keep random), the prompt (--against) and the keep scores."""
        texts = list(PAIR_PARTS) if self.params.on == "pair" else [self.params.on]
        return ["pair_id", "prompt", *texts, "pref_mean", "chosen_score", "rejected_score"]

    def options(self, ctx: Context) -> DedupOptions:
        p = self.params
        return DedupOptions(on=p.on, threshold=p.threshold, keep=p.keep, seed=ctx.seed,
                            against_threshold=p.against_threshold, drop=p.drop, device=ctx.device,
                            lexical=p.lexical, propose=p.propose)

    def check(self, ctx: Context) -> None:
        self.options(ctx).check()

    def run(self, table: pa.Table, ctx: Context) -> StageResult:
        from ..cache.vectors import default_cache_dir
        from ..models.embed import STATIC, build_embedder

        p = self.params
        models = dict(device=ctx.device, cache_dir=str(ctx.cache_dir) if ctx.cache_dir else None,
                      use_cache=ctx.use_cache, trust_remote_code=p.trust_remote_code)
        embedder = build_embedder(p.model, **models)
        verifier = build_embedder(p.verify, **models) if p.model == STATIC and p.verify != "none" else None
        cache_root = None if not ctx.use_cache else (ctx.cache_dir or default_cache_dir())
        source = ctx.inputs.get("graph_source") or graph_source(getattr(self, "_graph_path", None), cache_root)
        run = dedup(table, embedder, self.options(ctx), against=ctx.inputs.get("against") or [],
                    graph_source=source, verifier=verifier, omit=sorted(ctx.restored))
        result = run.result
        if cache_root is not None or getattr(self, "_graph_path", None):  # written: to the cache, or to --graph
            result.artifacts["graph"] = run.graph.to_table(run.groups, table.column("pair_id"))
        result.artifacts["graph_fingerprint"] = run.graph.fingerprint
        self._cache_root = cache_root
        if p.explain:
            result.stats["explain"] = explain(run, seed=ctx.seed, lexical=p.lexical)
        return result

    def write(self, plan, paths, result) -> None:
        from pathlib import Path

        graph_table = result.artifacts.get("graph")  # None from the Ray engine's partitioned dedup
        reused = result.stats.get("graph_reused", False)
        if graph_table is None:
            self._cache_root = None
        if not reused and getattr(self, "_cache_root", None) is not None:
            cached = plan.add("cache", str(graph_path(self._cache_root, result.artifacts["graph_fingerprint"])))
            plan.write(cached, graph_table)
        graph = paths.get("graph")
        if graph and graph_table is not None and not (reused and Path(graph).is_file()):
            plan.write(graph, graph_table)
        if "output" in paths:
            plan.write(paths["output"], result.out)
            if result.rows_set_aside and SET_ASIDE in paths:
                plan.write(paths[SET_ASIDE], result.set_aside)

    @classmethod
    def report_tables(cls, stats):
        return explain_tables(stats["explain"]) if "explain" in stats else []


def explain_tables(data: dict) -> list:
    from ..report import Table

    hist = Table("histogram", "nearest-neighbour cosine of each unique text",
                 ["from", "to", "texts"],
                 [[h["from"] if h["from"] is not None else "<", h["to"], h["texts"]] for h in data["histogram"]])
    levels = Table("thresholds", "what each --threshold would do", ["threshold", "duplicates", "links",
                                                                     "largest_cluster"],
                   [[t["threshold"], t["duplicates"], t["links"], t["largest_cluster"]] for t in data["thresholds"]])
    samples = Table("samples", "sample pairs just above each threshold", ["threshold", "similarity", "text",
                                                                          "neighbour"],
                    [[t["threshold"], s["similarity"], s["text"], s["neighbour"]]
                     for t in data["thresholds"] for s in t["samples"]])
    tables = [hist, levels, samples]
    if "cascade" in data:
        tables.insert(0, Table("cascade", "cascade: the static model proposes, the verifier re-scores",
                               ["stage", "model", "threshold", "texts", "pairs"],
                               [[c["stage"], c["model"], c["threshold"], c["texts"], c["pairs"]]
                                for c in data["cascade"]]))
    return tables
