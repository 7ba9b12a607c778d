"""The reward-model interface every backend implements, and the score cache they share.

A reward model maps (prompt messages, response) to one float. The vote stage only calls
`fit(pairs, seed=...)` then `score_pairs(pairs)`; in-process pointwise backends (hf:) subclass
`PointwiseRewardModel` and implement `_score_uncached` only. A pairwise backend (judge:) maps a pair
to a margin (`PairwiseRewardModel`); served: and judge: keep their own cache (models/reward/remote.py).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import pyarrow as pa

from ...cache.memo import memoised
from ...cache.vectors import VectorStore
from ...text import digest, render_messages


@runtime_checkable
class RewardModel(Protocol):
    name: str  # short column-safe name: columns are rm_<name>_chosen / _rejected / _margin
    model_id: str  # identity of the scorer (weights + settings), the score-cache namespace

    def score(self, prompts: Sequence[list[dict]], responses: Sequence[str]) -> np.ndarray:
        """float64 array, one reward per (prompt messages, response)."""

    def fit(self, pairs: pa.Table, *, seed: int) -> None:
        """Prepare on the pairs to be scored (trained ensembles); a no-op for pretrained models."""

    def score_pairs(self, pairs: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(chosen scores, rejected scores) for every row of a canonical pairs table."""


@runtime_checkable
class PairwiseRewardModel(Protocol):
    """The pairwise form (an LLM judge comparing two responses): pair -> margin, no score per response.

    Voters that talk to a server set `remote = True`: a NaN then means "no answer" (counted in
    `failures`), and the stage leaves that voter out for that pair instead of failing.
    """
    name: str
    model_id: str
    pairwise: bool  # True

    def margin_pairs(self, prompts: Sequence[list[dict]], first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """Margin of `first` over `second` per pair (> 0: first is better); NaN where there is no verdict."""

    def fit(self, pairs: pa.Table, *, seed: int) -> None: ...

    def score_pairs(self, pairs: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(+margin/2, -margin/2): the vote stage reads chosen - rejected = margin like any voter."""


def score_keys(prompts: Sequence[list[dict]], responses: Sequence[str]) -> list[str]:
    """Cache key per item: hash of (prompt hash, response hash). Exact text: a score may depend on every byte."""
    return [digest(digest(render_messages(p)) + digest(r)) for p, r in zip(prompts, responses)]


class ScoreCache:
    """Scores of one model id in the shared VectorStore (dim 1); counts what it actually had to compute."""

    def __init__(self, model_id: str, cache_dir: str | None, enabled: bool = True):
        self.store = VectorStore(cache_dir, f"rm/{model_id}", 1) if enabled else None
        self.computed = 0

    def lookup(self, prompts, responses, compute) -> np.ndarray:
        """Scores from the cache; `compute(prompts, responses)` runs only on misses (deduplicated)."""
        values, computed = memoised(score_keys(prompts, responses), self.store,
                                    lambda rows: compute([prompts[i] for i in rows], [responses[i] for i in rows]),
                                    width=lambda: 1, dtype=np.float64)
        self.computed += computed
        return values[:, 0]


class PointwiseRewardModel:
    """Base for models that score each response on its own; adds caching and pair scoring.

    Subclasses set `name`, `model_id` and implement `_score_uncached(prompts, responses)`.
    Cached scores are stored as float32, so a cached run returns the float32-rounded value.
    """

    name: str = "rm"
    model_id: str = "rm"

    def __init__(self, *, cache_dir: str | None = None, use_cache: bool = True):
        self._cache_dir = cache_dir
        self._use_cache = use_cache
        self._cache: ScoreCache | None = None

    @property
    def cache(self) -> ScoreCache:
        if self._cache is None:
            self._cache = ScoreCache(self.model_id, self._cache_dir, self._use_cache)
        return self._cache

    @property
    def computed(self) -> int:
        """Responses actually scored by the model (cache misses)."""
        return self._cache.computed if self._cache is not None else 0

    def _score_uncached(self, prompts: Sequence[list[dict]], responses: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def score(self, prompts: Sequence[list[dict]], responses: Sequence[str]) -> np.ndarray:
        return self.cache.lookup(list(prompts), list(responses), self._score_uncached)

    def fit(self, pairs: pa.Table, *, seed: int) -> None:
        return None

    def score_pairs(self, pairs: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        prompts = pairs.column("prompt").to_pylist()
        chosen = pairs.column("chosen").to_pylist()
        rejected = pairs.column("rejected").to_pylist()
        scores = self.score(prompts + prompts, chosen + rejected)
        return scores[: len(chosen)], scores[len(chosen):]


def column_safe(name: str) -> str:
    """A reward-model name usable inside column names: lowercase [a-z0-9_]."""
    import re

    safe = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return safe or "rm"
