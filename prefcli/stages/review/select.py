"""Review selection: a queue of at most `budget` pairs worth a human look.

First a random audit slice (so that calibration sees an unbiased sample), then priority tiers that take
turns: the vote's `incorrect` bucket (lowest pref_mean first), embedding neighbours of gold pairs the AI
got wrong (error-driven retrieval), the `ambiguous` bucket and high RM disagreement (highest pref_std
first). Within a tier, picks go round-robin over topic groups (k-means on embeddings, or
`dedup_cluster`) so the budget is not spent on one topic. Each task shows the two responses in a random
left/right order; the mapping stays in the queue only.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import InputError
from ...io import take_rows
from ...report import StageResult
from ...schema import with_stage_columns
from ...text import digest, texts_for

STAGE = "review"
PRIORITIES = ("incorrect", "near-error", "ambiguous", "high-std")
AUDIT = "audit"
SELECT_REQUIRES = {
    "pref_mean": "run `prefcli vote` first",
    "pref_std": "run `prefcli vote` first",
    "pref_bucket": "run `prefcli vote` first",
}
# Queue-only columns: they describe the task, not the pair, and are not copied back on import.
QUEUE_COLUMNS = ("review_task_id", "review_reason", "review_left_is_chosen", "review_rank", "review_group")
KMEANS_FULL_MAX = 50_000  # above this many pairs, topic groups use mini-batch k-means


def select_for_review(
    table: pa.Table,
    budget: int,
    *,
    embedder=None,
    gold: pa.Table | None = None,
    audit_share: float = 0.1,
    groups: str = "auto",
    neighbours: int = 10,
    min_similarity: float = 0.5,
    std_quantile: float = 0.9,
    on: str = "prompt",
    index_device: str = "auto",
    seed: int = 0,
) -> StageResult:
    """A review queue: at most `budget` distinct pairs with `review_*` task columns.

    `groups`: auto (k-means when an embedder is given, else dedup_cluster, else none), kmeans, dedup, none.
    `gold`: an earlier `review import` output; its pairs the AI got wrong seed the error-driven retrieval.
    """
    if budget < 1:
        raise InputError(f"--budget: must be at least 1, got {budget}")
    if not 0.0 <= audit_share <= 1.0:
        raise InputError(f"--audit-share: must be within 0..1, got {audit_share}")
    rng = np.random.default_rng(seed)
    pair_ids = table.column("pair_id").to_numpy(zero_copy_only=False).astype(object)
    _, first = np.unique(pair_ids.astype(str), return_index=True)
    eligible = np.zeros(table.num_rows, bool)
    eligible[first] = True  # one task per distinct pair
    if "review_verdict" in table.column_names:  # humans already judged these (an earlier round's output)
        eligible &= np.asarray(table.column("review_verdict").is_null().to_numpy(zero_copy_only=False), bool)
    budget = min(budget, int(eligible.sum()))

    group_mode = _group_mode(groups, table, embedder)
    vectors = None
    if group_mode == "kmeans" or gold is not None:
        if embedder is None:
            raise InputError("review select: an embedder is needed for k-means groups and --gold retrieval")
        vectors = embedder.encode(texts_for(table, on))
    group = _groups(table, group_mode, vectors, budget, seed)

    taken = ~eligible
    # The audit slice first: uniform over all eligible pairs, so calibration is unbiased.
    n_audit = min(budget, int(round(budget * audit_share)))
    picked = list(rng.permutation(np.flatnonzero(eligible))[:n_audit])
    reasons = [AUDIT] * len(picked)
    taken[picked] = True

    stats: dict[str, Any] = {"rows_in": table.num_rows, "eligible": int(eligible.sum()), "budget": budget,
                             "groups": group_mode,
                             "n_groups": int(len(np.unique(group)))}
    mean = float_column(table, "pref_mean")
    std = float_column(table, "pref_std")
    bucket = np.asarray(table.column("pref_bucket").to_pylist(), dtype=object)
    tiers: dict[str, tuple[np.ndarray, np.ndarray]] = {  # reason -> (candidate rows, sort key: lower first)
        "incorrect": (np.flatnonzero(bucket == "incorrect"), np.nan_to_num(mean, nan=np.inf)),
        "ambiguous": (np.flatnonzero(bucket == "ambiguous"), -np.nan_to_num(std, nan=0.0)),
    }
    if gold is not None:
        candidates, similarity, stats["gold_errors"] = _near_gold_errors(
            table, vectors, gold, embedder, on, neighbours, min_similarity, index_device)
        tiers["near-error"] = (candidates, -similarity)
    if np.isfinite(std).any():
        cut = np.nanquantile(std, std_quantile)
        tiers["high-std"] = (np.flatnonzero(np.nan_to_num(std, nan=-np.inf) >= cut), -np.nan_to_num(std, nan=0.0))
    # Each tier in its own best-first, group round-robin order; tiers take turns, so one huge bucket
    # (25% of a dataset can be `incorrect`) cannot crowd out the others.
    queues = {r: deque(_round_robin(tiers[r][0], tiers[r][1][tiers[r][0]], group[tiers[r][0]]).tolist())
              for r in PRIORITIES if r in tiers}
    while len(picked) < budget and any(queues.values()):
        for reason, rows in queues.items():
            while rows and taken[rows[0]]:
                rows.popleft()
            if rows and len(picked) < budget:
                row = rows.popleft()
                taken[row] = True
                picked.append(row)
                reasons.append(reason)
    # Whatever budget the priorities left goes to more random audit.
    rest = list(rng.permutation(np.flatnonzero(~taken))[:budget - len(picked)])
    picked += rest
    reasons += [AUDIT] * len(rest)

    rows = np.asarray(picked, dtype=np.int64)
    queue = take_rows(table, rows)  # not Table.take: it copies every whole column of a chunked table
    queue_ids = [str(p) for p in pair_ids[rows]]
    columns = {
        "review_task_id": pa.array([task_id(p, seed) for p in queue_ids], pa.large_string()),
        "review_reason": pa.array(reasons, pa.large_string()),
        "review_left_is_chosen": pa.array([_left_is_chosen(p, seed) for p in queue_ids], pa.bool_()),
        "review_rank": pa.array(np.arange(len(rows)), pa.int64()),
        "review_group": pa.array(group[rows], pa.int64()),
    }
    queue = with_stage_columns(queue, STAGE, columns)
    stats["selected"] = queue.num_rows
    stats["by_reason"] = dict(Counter(reasons))
    return StageResult(out=queue, stats=stats)


def task_id(pair_id: str, seed: int) -> str:
    return digest(f"task:{seed}:{pair_id}")[:16]


def _left_is_chosen(pair_id: str, seed: int) -> bool:
    # Derived from the pair, not from the selection order: the same pair keeps its sides at any budget.
    return int(digest(f"side:{seed}:{pair_id}")[:8], 16) % 2 == 0


def float_column(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _group_mode(groups: str, table: pa.Table, embedder) -> str:
    if groups not in ("auto", "kmeans", "dedup", "none"):
        raise InputError(f"--groups: expected auto, kmeans, dedup or none, got '{groups}'")
    if groups == "dedup" and "dedup_cluster" not in table.column_names:
        raise InputError("--groups dedup: input has no 'dedup_cluster' column (run `prefcli dedup` first)")
    if groups != "auto":
        return groups
    if embedder is not None:
        return "kmeans"
    return "dedup" if "dedup_cluster" in table.column_names else "none"


def _groups(table: pa.Table, mode: str, vectors: np.ndarray | None, budget: int, seed: int) -> np.ndarray:
    n = table.num_rows
    if mode == "none" or n == 0:
        return np.zeros(n, np.int64)
    if mode == "dedup":
        values = table.column("dedup_cluster").to_pylist()
        _, inverse = np.unique(np.asarray([str(v) for v in values]), return_inverse=True)
        return inverse.astype(np.int64)
    k = int(min(n, max(2, min(budget, round(math.sqrt(n))))))
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if n <= KMEANS_FULL_MAX:
        model = KMeans(n_clusters=k, n_init=1, random_state=seed)
    else:  # millions of pairs: mini-batches keep it to seconds
        model = MiniBatchKMeans(n_clusters=k, n_init=1, batch_size=4096, random_state=seed)
    return model.fit_predict(vectors).astype(np.int64)


def _round_robin(candidates: np.ndarray, key: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Best-first within each group, one group at a time: the r-th pick of every group before any (r+1)-th."""
    order = np.lexsort((candidates, key))  # by key, ties by row number: deterministic
    candidates, group = candidates[order], group[order]
    rank_in_group = np.zeros(len(candidates), np.int64)
    seen: Counter = Counter()
    for i, g in enumerate(group.tolist()):
        rank_in_group[i] = seen[g]
        seen[g] += 1
    final = np.lexsort((np.arange(len(candidates)), rank_in_group))
    return candidates[final]


def gold_errors(gold: pa.Table) -> np.ndarray:
    """Gold rows the AI got wrong: humans flipped the label, or the RM vote's sign disagreed with humans."""
    if "review_verdict" not in gold.column_names:
        raise InputError("--gold: missing column 'review_verdict' (use a `prefcli review import` output)")
    verdict = np.asarray(gold.column("review_verdict").to_pylist(), dtype=object)
    wrong = verdict == "flip"
    if "pref_mean" in gold.column_names:
        mean = float_column(gold, "pref_mean")
        rm_says_flip = np.nan_to_num(mean, nan=0.0) < 0
        wrong |= ((verdict == "keep") & rm_says_flip) | ((verdict == "flip") & ~rm_says_flip)
    return np.flatnonzero(wrong)


def _near_gold_errors(table, vectors, gold, embedder, on, neighbours, min_similarity, device):
    """Rows of `table` most similar to gold errors (not themselves gold): (rows, best similarity, n errors)."""
    from ...models.index import NeighbourIndex

    errors = gold_errors(gold)
    if not len(errors) or table.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros(table.num_rows), len(errors)
    queries = embedder.encode(texts_for(gold.take(pa.array(errors)), on))
    sims, ids = NeighbourIndex(vectors, device=device).search(queries, neighbours)
    best = np.full(table.num_rows, -np.inf)
    for sim_row, id_row in zip(sims, ids):
        valid = id_row >= 0
        np.maximum.at(best, id_row[valid], sim_row[valid])
    in_gold = pc.is_in(table.column("pair_id"), value_set=gold.column("pair_id").combine_chunks())
    best[np.asarray(in_gold.to_numpy(zero_copy_only=False), bool)] = -np.inf
    rows = np.flatnonzero(best >= min_similarity)
    return rows, best, len(errors)
