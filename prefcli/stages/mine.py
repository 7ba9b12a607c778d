"""Hard-negative mining with a false-negative guard (`prefcli mine`).

For each source pair (prompt, chosen, rejected) the stage looks for a *harder* rejected response:
near-correct (similar to the chosen) but still judged worse by the reward models.

1. Candidates: every distinct response to the same prompt group (`same-prompt`; the group is the
   dedup cluster when `dedup_cluster` exists, else `prompt_id`), and/or every response to the k
   nearest prompt groups in embedding space (`neighbor-prompts`). An optional `pool` table adds
   unlabelled responses (both its chosen and rejected) to the candidates.
2. Always excluded: the chosen itself (normalised text), the pair's own rejected, any pair that
   already exists, and candidates the input already labels *better* than the chosen.
3. Guard (each part switchable; `guard=False` turns them all off):
   - TopK-PercPos (NV-Retriever): sim(candidate, prompt) < perc_pos x sim(chosen, prompt);
   - not a near-duplicate of the chosen: cosine < dup_threshold;
   - RM consensus: mean z-scaled margin chosen - candidate >= min_margin, and the share of reward
     models that put the candidate below the chosen >= min_agree.
4. Hardness = sim(candidate, chosen) - margin_weight x margin: high similarity, small positive margin.
   `hardest` keeps the top `per_pair`; `mu-2sigma` ("Finding the Sweet Spot", 2025) keeps the
   qualified candidates whose consensus reward is closest to mu - 2 sigma of all the responses
   scored for that prompt (falls back to hardest with fewer than `min_scored` scored responses).
   `score_candidates` returns the whole candidate list with features, guard status and picks (the
   pool `mine` selects from, e.g. for a random baseline); `mine` runs the same scoring.
5. Output: originals pass through (neg_origin=original). `add` appends mined pairs
   (neg_origin=mined). `replace-easy` swaps the rejected of `strong` pairs (vote's pref_bucket):
   the new row (neg_origin=replaced, neg_replaced_rejected=old rejected) takes the original's place
   and the original row is set aside with reason `replaced-easy`, so nothing is lost:
   rows in + new rows = rows out + rows set aside.

Margins are per reward model divided by the std of that model's margins over the input pairs, so
voters on different scales weigh equally and `--min-margin` reads in standard deviations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..models.index import rowwise_dot
from ..pairs import build_pairs
from ..report import StageResult, mark_set_aside
from ..schema import with_stage_columns
from ..stage import (SET_ASIDE, Context, Read, Resources, Stage,
                     Write, option, register)
from ..text import render_messages, text_key
from .vote import EmbedAndVoteParams, build_reward_models, enforce_failure_rate

STAGE = "mine"
STRATEGIES = ("same-prompt", "neighbor-prompts", "both")
MODES = ("add", "replace-easy")
SELECTIONS = ("hardest", "mu-2sigma")
SAME_PROMPT, NEIGHBOR_PROMPT = "same-prompt", "neighbor-prompt"
REPLACED_REASON = "replaced-easy"
EASY_BUCKET = "strong"
# Candidates are scored by the reward models in chunks of this many (prompt, response) items.
SCORE_CHUNK = 8192
# The default voters: two single-view offline ensembles, so that "the ensemble agrees" (--min-agree) has two
# voters to count.
DEFAULT_RMS = ("emb=ensemble:views=emb", "lex=ensemble:views=lex")
GUARD_COUNTS = ("excluded_same_as_chosen", "excluded_existing_pair", "excluded_labelled_better", "blocked_perc_pos",
                "blocked_near_duplicate", "blocked_margin", "blocked_agree")


@dataclass(frozen=True)
class MineOptions:
    strategy: str = "same-prompt"
    per_pair: int = 1
    mode: str = "add"
    min_margin: float = 0.25  # vote's `ambiguous` threshold: a mined pair must not be ambiguous
    min_agree: float = 0.8
    perc_pos: float = 0.95
    dup_threshold: float = 0.92
    neighbours: int = 5
    selection: str = "hardest"
    guard: bool = True
    max_candidates: int = 32
    margin_weight: float = 0.1
    min_scored: int = 4
    device: str = "auto"
    seed: int = 0

    def check(self) -> None:
        """One-line InputError naming the option for any bad value."""
        choices = {"--strategy": (self.strategy, STRATEGIES), "--mode": (self.mode, MODES),
                   "--selection": (self.selection, SELECTIONS)}
        for flag, (value, allowed) in choices.items():
            if value not in allowed:
                raise InputError(f"{flag}: expected one of {', '.join(allowed)}, got '{value}'")
        for flag, value, low in (("--per-pair", self.per_pair, 1), ("--neighbours", self.neighbours, 1),
                                 ("--max-candidates", self.max_candidates, 1)):
            if value < low:
                raise InputError(f"{flag}: expected at least {low}, got {value}")
        for flag, value in (("--min-agree", self.min_agree), ("--perc-pos", self.perc_pos),
                            ("--dup-threshold", self.dup_threshold)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{flag}: expected a value in [0, 1], got {value}")
        if self.min_margin < 0:
            raise InputError(f"--min-margin: expected a value >= 0, got {self.min_margin}")


# --------------------------------------------------------------------------- the stage

# Why a candidate was or was not qualified (the `status` of `score_candidates`); only the first applies.
QUALIFIED = "qualified"
STATUSES = (QUALIFIED, "perc-pos", "near-duplicate", "not-scored", "margin", "agree")
_PERC_POS, _NEAR_DUP, _NOT_SCORED, _MARGIN, _AGREE = range(1, len(STATUSES))
# stats key counting each status
STATUS_STATS = {"perc-pos": "blocked_perc_pos", "near-duplicate": "blocked_near_duplicate",
                "margin": "blocked_margin", "agree": "blocked_agree"}


def mine(table: pa.Table, embedder, reward_models: Sequence, params: MineOptions,
         pool: pa.Table | None = None) -> StageResult:
    """Mine hard negatives for the pairs of a validated table. Reward models must be ready to `score`."""
    scored = _score(table, embedder, reward_models, params, pool)
    picked = scored.cand.take(scored.picked)
    return _assemble(table, scored.sources, picked, scored.responses, params, scored.stats)


def score_candidates(table: pa.Table, embedder, reward_models: Sequence, params: MineOptions,
                     pool: pa.Table | None = None) -> pa.Table:
    """Every candidate `mine` considers, one row per (source pair, candidate response), with its features,
    its guard `status` (`qualified` or the first guard that blocked it, or `not-scored` when beyond
    --max-candidates) and `pick_rank` (1 = mine's first pick for that source pair, null = not picked).
    Lets you inspect the guard, or draw baselines from exactly the pool `mine` selects from."""
    scored = _score(table, embedder, reward_models, params, pool)
    cand = scored.cand
    pick_rank = np.full(len(cand.pair), -1, np.int64)
    pick_rank[scored.picked] = _rank_within(cand.pair[scored.picked])
    pair_ids = table.column("pair_id").take(pa.array(scored.sources[cand.pair], pa.int64()))
    return pa.table({
        "source_pair_id": pair_ids,
        "source_row": pa.array(scored.sources[cand.pair], pa.int64()),
        "candidate": pa.array([scored.responses.texts[i] for i in cand.resp], pa.large_string()),
        "candidate_source": pa.array(np.where(cand.origin == 0, SAME_PROMPT, NEIGHBOR_PROMPT).tolist(),
                                     pa.large_string()),
        "status": pa.array(np.asarray(STATUSES, dtype=object)[scored.status].tolist(), pa.large_string()),
        "sim_chosen": pa.array(cand.sim_chosen.astype(np.float64)),
        "sim_prompt": pa.array(cand.sim_prompt.astype(np.float64)),
        "sim_prompt_chosen": pa.array(cand.sim_prompt_chosen.astype(np.float64)),
        "margin": pa.array(cand.margin, from_pandas=True),
        "agree": pa.array(cand.agree, from_pandas=True),
        "hardness": pa.array(cand.hardness, from_pandas=True),
        "pick_rank": pa.array(pick_rank + 1, mask=pick_rank < 0),
    })


@dataclass
class _Scored:
    responses: "_ResponsePool"
    sources: np.ndarray
    cand: "_Candidates"  # every candidate left after the trivial exclusions, with its features
    status: np.ndarray  # index into STATUSES
    picked: np.ndarray  # indices into cand, per source pair in rank order
    stats: dict


def _score(table: pa.Table, embedder, reward_models: Sequence, params: MineOptions,
           pool: pa.Table | None) -> _Scored:
    """Candidates, guard, reward-model consensus, hardness and the picks: everything but the output table."""
    params.check()
    responses = _ResponsePool(table, pool)
    sources = _source_rows(table, params)
    stats: dict = {"rows_in": table.num_rows, "source_pairs": int(len(sources)), "strategy": params.strategy,
                   "mode": params.mode, "selection": params.selection, "guard": params.guard,
                   "reward_models": [getattr(rm, "name", "rm") for rm in reward_models]}
    if params.guard and not reward_models:
        raise InputError("mine: the guard needs at least one reward model (give --rm, or --no-guard)")

    for rm in reward_models:
        rm.fit(table, seed=params.seed)
    response_vectors = embedder.encode(responses.texts)
    prompt_vectors = embedder.encode(responses.group_prompt_texts)
    cand = _candidates(responses, sources, prompt_vectors, params)
    stats["candidates"] = int(len(cand.pair))

    chosen_resp = responses.row_chosen[sources]
    cand = _exclude_trivial(cand, responses, table, sources, chosen_resp, stats)
    cand = _embedding_features(cand, responses, sources, chosen_resp, response_vectors, prompt_vectors)
    status = np.zeros(len(cand.pair), np.int64)
    if params.guard:
        status[cand.sim_chosen >= params.dup_threshold] = _NEAR_DUP
        status[cand.sim_prompt >= params.perc_pos * cand.sim_prompt_chosen] = _PERC_POS
    eligible = np.flatnonzero(status == 0)
    scored = np.sort(eligible[_top_per_group(cand.pair[eligible], cand.sim_chosen[eligible], params.max_candidates)])
    status[np.setdiff1d(eligible, scored)] = _NOT_SCORED
    stats["candidates_scored"] = int(len(scored))

    scores = _consensus(table, sources, cand.take(scored), responses, reward_models)
    if "no_vote" in scores:
        stats["candidates_without_vote"] = int(scores["no_vote"].sum())
    remote = {rm.name: rm.remote_stats() for rm, _ in mining_voters(reward_models) if getattr(rm, "remote", False)}
    if remote:
        stats["remote"] = remote
        stats["failure_rate"] = max(r["failed"] / max(r["failed"] + r["computed"] + r["cache_hits"], 1)
                                    for r in remote.values())
        for key in ("requests", "retries", "prompt_tokens", "completion_tokens", "failed"):
            stats[key] = int(sum(r[key] for r in remote.values()))
    for name in ("margin", "agree", "reward"):
        column = np.full(len(cand.pair), np.nan)
        column[scored] = scores[name]
        setattr(cand, name, column)
    if params.guard:
        status[scored[scores["agree"] < params.min_agree]] = _AGREE
        status[scored[scores["margin"] < params.min_margin]] = _MARGIN
    for name, key in STATUS_STATS.items():
        if params.guard:
            stats[key] = int((status == STATUSES.index(name)).sum())
    qualified = status == 0
    cand.hardness = np.full(len(cand.pair), np.nan)
    cand.hardness[qualified] = hardness(cand.pair[qualified], cand.sim_chosen[qualified], cand.margin[qualified],
                                        params.margin_weight)
    per_pair = 1 if params.mode == "replace-easy" else params.per_pair
    picked = _select(cand, qualified, scored, scores["source_reward"], per_pair, params, stats)
    stats["qualified"] = int(qualified.sum())
    return _Scored(responses, sources, cand, status, picked, stats)


# --------------------------------------------------------------------------- candidates

class _ResponsePool:
    """Distinct responses per prompt group, from the table (chosen and rejected) and an optional pool."""

    def __init__(self, table: pa.Table, pool: pa.Table | None):
        frames = [table] + ([pool] if pool is not None and pool.num_rows else [])
        prompt_ids = [pid for t in frames for pid in t.column("prompt_id").to_pylist()]
        group_of_prompt = _prompt_groups(table, prompt_ids)
        self.group_names = list(dict.fromkeys(group_of_prompt[p] for p in prompt_ids))
        group_index = {g: i for i, g in enumerate(self.group_names)}
        first_prompt: dict[int, list] = {}
        texts: list[str] = []
        groups: list[int] = []
        keys: list[int] = []
        index: dict[tuple[int, int], int] = {}
        row_refs = []  # per frame: (chosen response idx, rejected response idx) arrays
        for frame in frames:
            prompts = frame.column("prompt").to_pylist()
            refs = []
            for side in ("chosen", "rejected"):
                side_idx = np.empty(frame.num_rows, np.int64)
                for r, (pid, text) in enumerate(zip(frame.column("prompt_id").to_pylist(),
                                                    frame.column(side).to_pylist())):
                    g = group_index[group_of_prompt[pid]]
                    first_prompt.setdefault(g, prompts[r])
                    key = int(text_key(text)[:16], 16)  # 64 bits of it: equal keys = exact duplicates
                    slot = index.get((g, key))
                    if slot is None:
                        slot = index[(g, key)] = len(texts)
                        texts.append(text)
                        groups.append(g)
                        keys.append(key)
                    side_idx[r] = slot
                refs.append(side_idx)
            row_refs.append(refs)
        self.texts = texts
        self.group = np.asarray(groups, np.int64)
        self.key = np.asarray(keys, np.uint64)
        self.row_chosen, self.row_rejected = row_refs[0]
        self.row_group = self.group[self.row_chosen]
        self.group_prompt_texts = [render_messages(first_prompt[g]) for g in range(len(self.group_names))]
        order = np.argsort(self.group, kind="stable")
        self.by_group = order
        counts = np.bincount(self.group, minlength=len(self.group_names))
        self.group_start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.group_count = counts.astype(np.int64)


def _prompt_groups(table: pa.Table, prompt_ids: list[str]) -> dict[str, str]:
    """prompt_id -> group name: the row's dedup cluster when dedup ran, else the prompt itself."""
    groups = {pid: f"p:{pid}" for pid in prompt_ids}
    if "dedup_cluster" in table.column_names:
        for pid, cluster in zip(table.column("prompt_id").to_pylist(), table.column("dedup_cluster").to_pylist()):
            if cluster is not None and groups.get(pid, "").startswith("p:"):
                groups[pid] = f"c:{cluster}"
    return groups


def _source_rows(table: pa.Table, params: MineOptions) -> np.ndarray:
    """Rows to mine for: every non-tie pair (add), or the `strong` (easy) pairs (replace-easy)."""
    mask = ~table.column("tie").to_numpy(zero_copy_only=False).astype(bool)
    if params.mode == "replace-easy":
        if "pref_bucket" not in table.column_names:
            raise InputError("--mode replace-easy: input has no column 'pref_bucket' (run `prefcli vote` first)")
        easy = pc.fill_null(pc.equal(table.column("pref_bucket"), EASY_BUCKET), False)
        mask &= easy.to_numpy(zero_copy_only=False)
    return np.flatnonzero(mask)


@dataclass
class _Candidates:
    """Flat candidate list: one entry per (source position, response index)."""

    pair: np.ndarray  # position in the sources array
    resp: np.ndarray  # index into the response pool
    origin: np.ndarray  # 0 same-prompt, 1 neighbor-prompt
    sim_chosen: np.ndarray | None = None
    sim_prompt: np.ndarray | None = None
    sim_prompt_chosen: np.ndarray | None = None
    margin: np.ndarray | None = None
    agree: np.ndarray | None = None
    reward: np.ndarray | None = None
    hardness: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> "_Candidates":
        fields = {k: (v[idx] if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}
        return _Candidates(**fields)


def _expand(responses: _ResponsePool, owner: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All responses of `group[j]` for each j, flat: (owner repeated, response index)."""
    counts = responses.group_count[group]
    total = int(counts.sum())
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    within = np.arange(total, dtype=np.int64) - np.repeat(offsets, counts)
    resp = responses.by_group[np.repeat(responses.group_start[group], counts) + within]
    return np.repeat(owner, counts), resp


def _candidates(responses: _ResponsePool, sources: np.ndarray, prompt_vectors: np.ndarray,
                params: MineOptions) -> _Candidates:
    parts = []
    source_group = responses.row_group[sources]
    positions = np.arange(len(sources), dtype=np.int64)
    if params.strategy in ("same-prompt", "both"):
        pair, resp = _expand(responses, positions, source_group)
        parts.append((pair, resp, np.zeros(len(pair), np.int8)))
    if params.strategy in ("neighbor-prompts", "both") and len(responses.group_names) > 1:
        from ..models.index import NeighbourIndex

        index = NeighbourIndex(prompt_vectors, device=params.device)
        unique_groups = np.unique(source_group)
        _, neighbour_ids = index.search(prompt_vectors[unique_groups], params.neighbours + 1)
        # drop self and padding, keep the k nearest other groups
        ok = (neighbour_ids >= 0) & (neighbour_ids != unique_groups[:, None])
        ranks = np.cumsum(ok, axis=1)
        ok &= ranks <= params.neighbours
        row_of_group = np.full(len(responses.group_names), -1, np.int64)
        row_of_group[unique_groups] = np.arange(len(unique_groups))
        rows = row_of_group[source_group]
        owner_rows, cols = np.nonzero(ok[rows])
        pair, resp = _expand(responses, positions[owner_rows], neighbour_ids[rows][owner_rows, cols])
        parts.append((pair, resp, np.ones(len(pair), np.int8)))
    if not parts:
        empty = np.zeros(0, np.int64)
        return _Candidates(empty, empty, np.zeros(0, np.int8))
    pair, resp, origin = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((resp, origin, pair))  # deterministic order: by pair, then source, then response
    return _Candidates(pair[order], resp[order], origin[order])


def _triple_key(prompt: np.ndarray, chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """One uint64 per (prompt key, chosen key, rejected key); order matters."""
    with np.errstate(over="ignore"):
        return (prompt * np.uint64(0x9E3779B97F4A7C15)) ^ (chosen * np.uint64(0xC2B2AE3D27D4EB4F)) \
            ^ (rejected * np.uint64(0x165667B19E3779F9)) ^ (rejected >> np.uint64(29))


def _exclude_trivial(cand: _Candidates, responses: _ResponsePool, table: pa.Table, sources: np.ndarray,
                     chosen_resp: np.ndarray, stats: dict) -> _Candidates:
    """Drop the chosen itself, existing pairs, and candidates the input already labels better."""
    prompt_key = np.asarray([int(p[:16], 16) for p in table.column("prompt_id").to_pylist()], np.uint64)
    row_c, row_r = responses.key[responses.row_chosen], responses.key[responses.row_rejected]
    existing = np.unique(_triple_key(prompt_key, row_c, row_r))
    src_prompt = prompt_key[sources][cand.pair]
    c_key = responses.key[chosen_resp][cand.pair]
    r_key = responses.key[cand.resp]
    same_as_chosen = r_key == c_key
    already_pair = np.isin(_triple_key(src_prompt, c_key, r_key), existing)
    labelled_better = np.isin(_triple_key(src_prompt, r_key, c_key), existing)
    stats["excluded_same_as_chosen"] = int(same_as_chosen.sum())
    stats["excluded_existing_pair"] = int((~same_as_chosen & already_pair).sum())
    stats["excluded_labelled_better"] = int((~same_as_chosen & ~already_pair & labelled_better).sum())
    return cand.take(np.flatnonzero(~(same_as_chosen | already_pair | labelled_better)))


def _embedding_features(cand: _Candidates, responses: _ResponsePool, sources: np.ndarray, chosen_resp: np.ndarray,
                        response_vectors: np.ndarray, prompt_vectors: np.ndarray) -> _Candidates:
    src_chosen = chosen_resp[cand.pair]
    src_group = responses.row_group[sources][cand.pair]
    cand.sim_chosen = rowwise_dot(response_vectors, cand.resp, response_vectors, src_chosen)
    cand.sim_prompt = rowwise_dot(response_vectors, cand.resp, prompt_vectors, src_group)
    cand.sim_prompt_chosen = rowwise_dot(response_vectors, src_chosen, prompt_vectors, src_group)
    return cand


def _top_per_group(group: np.ndarray, value: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest `value` within each group (ties broken by position), in group order."""
    if not len(group):
        return np.zeros(0, np.int64)
    order = np.lexsort((np.arange(len(group)), -value, group))
    return order[_rank_within(group[order]) < k]


def _rank_within(sorted_group: np.ndarray) -> np.ndarray:
    """0-based position of each element within its run of equal (sorted) group values."""
    if not len(sorted_group):
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    return np.arange(len(sorted_group)) - np.repeat(starts, np.diff(np.r_[starts, len(sorted_group)]))


def hardness(group: np.ndarray, sim_chosen: np.ndarray, margin: np.ndarray, margin_weight: float) -> np.ndarray:
    """Hardness of each qualified candidate of a source pair (`group`): sim(candidate, chosen) - margin_weight x
    consensus margin (a missing margin, without reward models, counts 0)."""
    return sim_chosen - margin_weight * np.nan_to_num(margin)


# --------------------------------------------------------------------------- reward-model consensus

def _consensus(table: pa.Table, sources: np.ndarray, cand: _Candidates, responses: _ResponsePool,
               reward_models: Sequence) -> dict[str, np.ndarray]:
    """Per candidate: consensus margin chosen - candidate, weighted share of voters agreeing, consensus reward.

    Each voter's scores are divided by vote's robust scale of its margins over all input pairs, so
    `min_margin` reads in the same units as pref_mean. `source_reward` holds (chosen, rejected) per source.
    """
    from ..scoring import aggregate_margins, robust_scale

    n = len(cand.pair)
    if not reward_models:
        nan = np.full(n, np.nan)
        return {"margin": nan, "agree": nan, "reward": nan, "source_reward": np.full((len(sources), 2), np.nan)}
    voters = mining_voters(reward_models)
    weights = np.asarray([w for _, w in voters])
    # every (prompt, response) item to score: input chosen, input rejected, candidates; each scored once
    prompt_ids = table.column("prompt_id").to_pylist()
    prompt_index = {p: i for i, p in enumerate(dict.fromkeys(prompt_ids))}
    row_prompt = np.asarray([prompt_index[p] for p in prompt_ids], np.int64)
    first_row = np.unique(row_prompt, return_index=True)[1]
    n_resp = len(responses.texts)
    code = np.concatenate([row_prompt * n_resp + responses.row_chosen, row_prompt * n_resp + responses.row_rejected,
                           row_prompt[sources][cand.pair] * n_resp + cand.resp])
    unique, inverse = np.unique(code, return_inverse=True)
    messages = table.column("prompt").take(pa.array(first_row[unique // n_resp], pa.int64())).to_pylist()
    texts = [responses.texts[i] for i in unique % n_resp]
    scores = np.zeros((len(code), len(voters)))
    rows = table.num_rows
    for j, (voter, _) in enumerate(voters):
        if getattr(voter, "pairwise", False):
            scores[:, j] = _pairwise_scores(voter, table, sources, cand, responses)
            continue
        # the same scorer for chosen, rejected and candidates, so their margins compare like with like
        unique_scores = np.concatenate([np.asarray(voter.score(messages[i:i + SCORE_CHUNK], texts[i:i + SCORE_CHUNK]),
                                                   np.float64) for i in range(0, len(texts), SCORE_CHUNK)])
        scores[:, j] = unique_scores[inverse.ravel()]
        if not getattr(voter, "remote", False) and not np.isfinite(scores[:, j]).all():
            raise InputError("mine: a reward model returned a non-finite score (NaN or inf)")
    chosen, rejected, cand_scores = scores[:rows], scores[rows:2 * rows], scores[2 * rows:]
    scale = robust_scale(chosen - rejected)
    margins = (chosen[sources][cand.pair] - cand_scores) / scale
    agg = aggregate_margins(margins, weights=weights, normalise=False) if n else {"mean": np.zeros(0),
                                                                                  "agree": np.zeros(0)}
    # a candidate no voter answered for (served:/judge: failures) gets no margin and counts as not agreeing
    no_vote = ~np.isfinite(margins).any(axis=1) if margins.shape[1] else np.zeros(n, bool)
    margin, agree = agg["mean"].copy(), agg["agree"].copy()
    margin[no_vote], agree[no_vote] = np.nan, 0.0
    w = weights / weights.sum()
    return {"margin": margin, "agree": agree, "reward": _nan_dot(cand_scores / scale, w),
            "source_reward": np.stack([_nan_dot(chosen[sources] / scale, w), _nan_dot(rejected[sources] / scale, w)],
                                      axis=1), "no_vote": no_vote}


def _nan_dot(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean over the voters that answered (NaN: no answer)."""
    valid = np.isfinite(values)
    weights = valid * w[None, :]
    total = weights.sum(axis=1)
    return np.where(total > 0, (np.where(valid, values, 0.0) * weights).sum(axis=1) / np.where(total > 0, total, 1),
                    np.nan)


def _pairwise_scores(voter, table: pa.Table, sources: np.ndarray, cand: _Candidates,
                     responses: _ResponsePool) -> np.ndarray:
    """A pairwise voter (judge) has no score per response: chosen/rejected get +-margin/2 of the input pair
    (so vote's scale applies) and a candidate gets chosen - margin(chosen over candidate)."""
    prompts = table.column("prompt").to_pylist()
    chosen_text = table.column("chosen").to_pylist()
    row_margin = voter.margin_pairs(prompts, chosen_text, table.column("rejected").to_pylist())
    src_rows = sources[cand.pair]
    cand_margin = voter.margin_pairs([prompts[i] for i in src_rows], [chosen_text[i] for i in src_rows],
                                     [responses.texts[i] for i in cand.resp]) if len(cand.pair) else np.zeros(0)
    return np.concatenate([row_margin / 2, -row_margin / 2, row_margin[src_rows] / 2 - cand_margin])


def mining_voters(reward_models: Sequence) -> list[tuple[object, float]]:
    """The vote stage's voters (members vote separately, each --rm weighs 1) when every member can score
    new responses; otherwise each --rm is one voter (its `score` averages its members)."""
    from ..scoring import voters_of

    voters = voters_of(reward_models)
    if all(callable(getattr(voter, "score", None)) for voter, _ in voters):
        return voters
    return [(rm, 1.0) for rm in reward_models]


# --------------------------------------------------------------------------- selection

def _select(cand: _Candidates, qualified: np.ndarray, scored: np.ndarray, source_reward: np.ndarray, per_pair: int,
            params: MineOptions, stats: dict) -> np.ndarray:
    """Indices (into cand) of the picked negatives, per source pair in rank order."""
    idx = np.flatnonzero(qualified)
    hardest = idx[_top_per_group(cand.pair[idx], cand.hardness[idx], per_pair)]
    if params.selection == "hardest" or not len(idx):
        stats["mu2sigma_fallback"] = 0
        return hardest
    # mu - 2 sigma over every response scored for the prompt: candidates scored + chosen + rejected
    n_src = len(source_reward)
    pair, reward = cand.pair[scored], cand.reward[scored]
    total = np.bincount(pair, weights=reward, minlength=n_src) + source_reward.sum(axis=1)
    total_sq = np.bincount(pair, weights=reward ** 2, minlength=n_src) + (source_reward ** 2).sum(axis=1)
    count = np.bincount(pair, minlength=n_src) + 2
    mu = total / count
    sigma = np.sqrt(np.maximum(total_sq / count - mu ** 2, 0.0))
    target = mu - 2.0 * sigma
    enough = count >= params.min_scored
    closeness = -np.abs(cand.reward[idx] - target[cand.pair[idx]])
    sweet = idx[_top_per_group(cand.pair[idx], closeness, per_pair)]
    sweet = sweet[enough[cand.pair[sweet]]]
    fallback = hardest[~enough[cand.pair[hardest]]]
    stats["mu2sigma_fallback"] = int(len(np.unique(cand.pair[fallback])))
    picked = np.concatenate([sweet, fallback])
    return picked[np.lexsort((np.arange(len(picked)), cand.pair[picked]))]


# --------------------------------------------------------------------------- output

def _assemble(table: pa.Table, sources: np.ndarray, picked: _Candidates, responses: _ResponsePool,
              params: MineOptions, stats: dict) -> StageResult:
    rows = sources[picked.pair]
    prompts = table.column("prompt").to_pylist()
    meta = table.column("meta").to_pylist()
    src = table.take(pa.array(rows, pa.int64())) if len(rows) else table.slice(0, 0)
    new = build_pairs(prompt=[prompts[i] for i in rows], chosen=src.column("chosen").to_pylist(),
                      rejected=[responses.texts[i] for i in picked.resp], source=src.column("source").to_pylist(),
                      chosen_score=src.column("chosen_score").to_pylist(), label_source="rm",
                      meta=[meta[i] for i in rows])
    # the same mined pair can come from several sources (or duplicate source rows): keep the first
    ids = new.column("pair_id").to_pylist()
    first = np.asarray(sorted({pid: i for i, pid in reversed(list(enumerate(ids)))}.values()), np.int64)
    new, picked, rows, src = new.take(first), picked.take(first), rows[first], src.take(first)
    replacing = params.mode == "replace-easy"
    n_new = new.num_rows
    candidate_source = np.where(picked.origin == 0, SAME_PROMPT, NEIGHBOR_PROMPT)
    new = with_stage_columns(new, STAGE, {
        "neg_origin": pa.array(["replaced" if replacing else "mined"] * n_new, pa.large_string()),
        "neg_source_pair_id": src.column("pair_id"),
        "neg_candidate_source": pa.array(candidate_source.tolist(), pa.large_string()),
        "neg_sim_chosen": pa.array(picked.sim_chosen.astype(np.float64)),
        "neg_margin": pa.array(picked.margin.astype(np.float64), from_pandas=True),
        "neg_agree": pa.array(picked.agree.astype(np.float64), from_pandas=True),
        "neg_hardness": pa.array(picked.hardness.astype(np.float64)),
        "neg_strategy": pa.array([f"{params.strategy}/{params.selection}"] * n_new, pa.large_string()),
        "neg_replaced_rejected": (src.column("rejected") if replacing else pa.nulls(n_new, pa.large_string())),
    })
    # a second mine run keeps the provenance the first one wrote
    originals = table if "neg_origin" in table.column_names else with_stage_columns(
        table, STAGE, _original_columns(table.num_rows))
    if replacing:
        set_aside = mark_set_aside(table.take(pa.array(rows, pa.int64())), REPLACED_REASON, STAGE)
        # each replacement takes its original's place; other stages' columns are null there (they described the old pair)
        merged = pa.concat_tables([originals, new], promote_options="default")
        slot = np.arange(table.num_rows, dtype=np.int64)
        slot[rows] = table.num_rows + np.arange(n_new)
        out = merged.take(pa.array(slot))
        stats["replaced"] = n_new
        stats["mined"] = 0
    else:
        out = pa.concat_tables([originals, new], promote_options="default")
        set_aside = None
        stats["mined"] = n_new
        stats["replaced"] = 0
    stats["new_rows"] = n_new
    stats["sources_without_negative"] = int(len(sources) - len(np.unique(picked.pair)))
    stats["rows_out"] = out.num_rows
    stats["rows_set_aside"] = 0 if set_aside is None else set_aside.num_rows
    if n_new:
        stats["mean_sim_chosen"] = float(np.mean(picked.sim_chosen))
        stats["mean_margin"] = float(np.nanmean(picked.margin)) if np.isfinite(picked.margin).any() else None
    return StageResult(out=out, set_aside=set_aside, stats=stats)


def _original_columns(n: int) -> dict[str, pa.Array]:
    null_text, null_num = pa.nulls(n, pa.large_string()), pa.nulls(n, pa.float64())
    return {"neg_origin": pa.array(["original"] * n, pa.large_string()), "neg_source_pair_id": null_text,
            "neg_candidate_source": null_text, "neg_sim_chosen": null_num, "neg_margin": null_num,
            "neg_agree": null_num, "neg_hardness": null_num, "neg_strategy": null_text,
            "neg_replaced_rejected": null_text}



# --------------------------------------------------------------------------- the Stage

def _load_pool(path: str) -> pa.Table:
    from .. import io

    return io.read_pairs(path)


class MineParams(EmbedAndVoteParams):
    strategy: Literal["same-prompt", "neighbor-prompts", "both"] = option(
        "same-prompt", f"Candidate pool: {'|'.join(STRATEGIES)}. same-prompt: other responses to the prompt (or its "
                       "dedup cluster); neighbor-prompts: responses to the --neighbours nearest prompts.")
    per_pair: int = option(1, "Mined negatives per source pair (mode add).", low=1)
    mode: Literal["add", "replace-easy"] = option(
        "add", f"{'|'.join(MODES)}: append mined pairs, or swap the rejected of `strong` (easy) pairs for a harder "
               "one (needs `prefcli vote` columns).")
    rm: list[str] = option([], "Reward model spec, repeatable, as for `prefcli vote` (scores: specs cannot score new "
                               f"responses). Default: {' '.join(DEFAULT_RMS)}.", metavar="SPEC")
    min_margin: float = option(0.25, "Guard: consensus margin chosen - candidate, in pref_mean units, at least this.")
    min_agree: float = option(0.8, "Guard: weighted share of reward models that put the candidate below the chosen, "
                                   "at least this.", low=0.0, high=1.0)
    perc_pos: float = option(0.95, "Guard (TopK-PercPos): sim(candidate, prompt) < this x sim(chosen, prompt).",
                             low=0.0)
    dup_threshold: float = option(0.92, "Guard: cosine to the chosen at or above this = near-duplicate, never mined.",
                                  low=0.0, high=1.0)
    neighbours: int = option(5, "neighbor-prompts: nearest prompts searched.", low=1, aliases=("--neighbors",))
    selection: Literal["hardest", "mu-2sigma"] = option(
        "hardest", f"{'|'.join(SELECTIONS)}: highest hardness, or the reward closest to mu - 2 sigma of the prompt's "
                   "scored responses.")
    max_candidates: int = option(32, "Candidates per pair scored by the reward models (the most similar to the "
                                     "chosen).", low=1)
    margin_weight: float = option(0.1, "hardness = sim(candidate, chosen) - this x margin.", low=0.0)
    no_guard: bool = option(False, "Switch the perc-pos, near-duplicate, margin and agreement guards off (exact "
                                   "duplicates and existing pairs stay out).")


@register
class MineStage(Stage):
    """Mine hard negatives: near-correct but worse responses, with a false-negative guard."""

    name = "mine"
    Params = MineParams
    summary = ("Mine hard negatives (same prompt or nearest prompts) with a false-negative guard; add them as new "
               "pairs or replace the rejected of easy pairs.")
    resources = Resources(mode="table", uses_models=True,
                          on_ray="one Ray task on a worker (the response pool and kNN span the whole table)")
    engines = ("local", "ray")
    uses_seed = True
    empty_input = "no pairs to mine for"
    reads = (Read("pool", "--pool", "Extra unlabelled candidates: a pairs Parquet file whose chosen and rejected "
                  "responses join the pool.", _load_pool),)
    writes = (Write(SET_ASIDE, "--set-aside", "replace-easy: where the replaced original rows go (default "
                    "OUT.rejects.parquet).", default_suffix=".rejects.parquet"),)

    def options(self, ctx: Context) -> MineOptions:
        p = self.params
        return MineOptions(strategy=p.strategy, per_pair=p.per_pair, mode=p.mode, min_margin=p.min_margin,
                           min_agree=p.min_agree, perc_pos=p.perc_pos, dup_threshold=p.dup_threshold,
                           neighbours=p.neighbours, selection=p.selection, guard=not p.no_guard,
                           max_candidates=p.max_candidates, margin_weight=p.margin_weight, device=ctx.device,
                           seed=ctx.seed)

    def reward_models(self, ctx: Context) -> list:
        if getattr(self, "_models", None) is None:
            self._models = build_reward_models(self.params.rm or DEFAULT_RMS, ctx)
        return self._models

    def check(self, ctx: Context) -> None:
        self.options(ctx).check()
        self.reward_models(ctx)

    def run(self, table: pa.Table, ctx: Context) -> StageResult:
        from ..models.embed import build_embedder

        p = self.params
        embedder = build_embedder(p.model, device=ctx.device, cache_dir=str(ctx.cache_dir) if ctx.cache_dir else None,
                                  use_cache=ctx.use_cache, trust_remote_code=p.trust_remote_code)
        models, self._models = self.reward_models(ctx), None
        result = mine(table, embedder, models, self.options(ctx), pool=ctx.inputs.get("pool"))
        result.added = result.stats["new_rows"]
        result.stats["embedded"] = embedder.computed
        return result

    def final_stats(self, result: StageResult, rows_in: int, seconds: float) -> dict[str, Any]:
        stats = dict(result.stats)
        embedded = stats.pop("embedded", None)
        return {**stats, "seconds": round(seconds, 2), "embedded": embedded}

    def after_report(self, stats: dict[str, Any]) -> None:
        enforce_failure_rate(stats, self.params.max_failure_rate)

    @classmethod
    def report_tables(cls, stats: dict[str, Any]) -> list:
        from ..report import Table

        return [Table("guard", "candidates removed, by reason", ["reason", "candidates"],
                      [[key, stats[key]] for key in GUARD_COUNTS if key in stats])]
