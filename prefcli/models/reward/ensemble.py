"""`ensemble[:k=5,...]`: the built-in offline ensemble, trained on the pairs it votes on.

Every member is a linear Bradley-Terry reward model r(x, y) = w·φ(x, y): logistic regression
without intercept on the feature differences φ(x, chosen) − φ(x, rejected), trained on both
orientations (±Δ), so P(a ≻ b) = σ(r(a) − r(b)) and swapping a pair exactly negates its margin.

Cross-fitting: for each of `repeats` seeded splits into `folds` folds, a member trains on the
other folds and scores the held-out fold, so every pair is scored only by models that never saw
its label. Members differ by split/seed and by feature view:
  - `emb`: all-MiniLM-L6-v2 sentence embeddings (shared cache) of the response, the
    prompt⊙response product (prompt×response interaction) and a few style/length scalars;
  - `lex`: TF-IDF word 1–2-grams and char 3–5-grams of the response (refusals, hedges, style),
    and nothing else. Given the length/format scalars too, it leans on them instead of content:
    after `length-bias` removes length, such a member kept 0.80 accuracy on AlpacaEval against 0.88
    without them, while the scalars added nothing to its raw accuracy (0.950 both) and the
    ensemble's flip AUROC did not drop (BENCHMARKS.md, length-bias).
At scale (`max_train`, default 50,000): cross-fitting runs on a seeded sample of at most
`max_train` pairs (the unsupervised feature fits too); every other pair is scored by each member's
fold-averaged model, which never saw its label either. Inputs of up to `max_train` pairs are
fitted exactly as without the option.
Folds run on a thread per usable core (`jobs`, default 0 = auto) while every pair is fitted; above
`max_train` one at a time, since two folds' fits at once (about 1.1 GB each for the lex view of a
50k sample) come on top of a large input's own memory. Either way the weights are bit-identical.
The lex view's TF-IDF transforms (a Python analyser that holds the GIL) run in `jobs` worker processes
(auto: one per usable core) from 10,000 pairs on, where they pay for starting: the same rows.
Robust second round (small-loss selection, as in co-teaching): within each training split the
round-one models of all views score their own training pairs; the `drop` share with the lowest
margins (suspected flips) is left out and the members are refitted. Labels of the held-out fold
never touch the models that score it.

The stage sees each member as one voter (columns rm_<name>_<view><repeat>_*), so pref_std is
the disagreement between members. `score()` on new responses (e.g. mined negatives) uses each
member's fold models averaged.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Sequence

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from ...errors import InputError
from ...io import take_rows
from ...options import coerce, parse_key_values
from .base import column_safe
from .lex_worker import LexWorkers, WorkerGone

VIEWS = ("emb", "lex")
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s", re.M)
_WORD = re.compile(r"\w+")
_SAMPLE_STREAM = 17  # the max_train sample's random stream, apart from the fold splits' [seed, repeat]


@dataclass(frozen=True)
class EnsembleConfig:
    repeats: int = 3  # seeded fold splits; members = repeats × views
    folds: int = 5
    views: tuple[str, ...] = VIEWS
    drop: float = 0.15  # share of training pairs left out in round two (0 = one round only)
    c_emb: float = 1.0  # inverse L2 strength per view
    c_lex: float = 4.0
    embed_model: str | None = None
    max_train: int = 50_000  # cross-fit on a seeded sample of at most this many pairs, score the rest
    jobs: int = 0  # folds fitted at once here; 0: one per usable core up to max_train pairs, one above it

    @property
    def k(self) -> int:
        return self.repeats * len(self.views)


def parse_options(arg: str) -> EnsembleConfig:
    """`k=6,folds=5,views=emb+lex,drop=0.15,model=<embedder>,max_train=50000,jobs=0`; k sets
    repeats = k / len(views)."""
    config = EnsembleConfig()
    if not arg:
        return config
    values: dict[str, object] = {}
    k = None
    for key, raw in parse_key_values(arg, f"--rm ensemble:{arg}", empty_values=False).items():
        if key == "k":
            k = coerce(raw, 0, "--rm ensemble", key)
        elif key in ("folds", "repeats", "max_train", "drop", "c_emb", "c_lex", "jobs"):
            values[key] = coerce(raw, getattr(config, key), "--rm ensemble", key)
        elif key == "views":
            views = tuple(v for v in raw.split("+") if v)
            bad = [v for v in views if v not in VIEWS]
            if bad or not views:
                raise InputError(f"--rm ensemble: unknown view '{bad[0] if bad else raw}' "
                                 f"(expected {'+'.join(VIEWS)})")
            values["views"] = views
        elif key == "model":
            values["embed_model"] = raw
        else:
            raise InputError(f"--rm ensemble: unknown option '{key}' "
                             f"(expected k, folds, repeats, views, drop, c_emb, c_lex, model, max_train, jobs)")
    config = replace(config, **values)
    if k is not None:
        if k < 1:
            raise InputError(f"--rm ensemble: k must be >= 1, got {k}")
        config = replace(config, repeats=max(1, -(-k // len(config.views))))
    if config.folds < 2 or config.repeats < 1:
        raise InputError("--rm ensemble: need folds >= 2 and repeats >= 1")
    if config.max_train < 2 * config.folds:
        raise InputError(f"--rm ensemble: max_train must be >= 2 × folds = {2 * config.folds}, "
                         f"got {config.max_train}")
    if config.jobs < 0:
        raise InputError(f"--rm ensemble: jobs must be >= 0 (0: auto), got {config.jobs}")
    if not 0 <= config.drop < 0.5:
        raise InputError(f"--rm ensemble: drop must be in [0, 0.5), got {config.drop}")
    return config


# --------------------------------------------------------------------------- features

def last_user_turn(messages: Sequence[dict]) -> str:
    for m in reversed(messages or []):
        if m["role"] == "user":
            return m["content"]
    return messages[-1]["content"] if messages else ""


def style_scalars(queries: Sequence[str], responses: Sequence[str], query_vec: np.ndarray | None,
                  response_vec: np.ndarray | None) -> np.ndarray:
    """Length/format features and prompt–response relatedness, one row per response."""
    rows = []
    for q, r in zip(queries, responses):
        words = _WORD.findall(r.lower())
        qwords = set(_WORD.findall(q.lower()))
        overlap = len(qwords & set(words)) / max(len(qwords), 1)
        rows.append([np.log1p(len(r)), np.log1p(len(words)), np.log1p(r.count("\n")),
                     np.log1p(len(_LIST_LINE.findall(r))), np.log1p(r.count("?")),
                     len(set(words)) / max(len(words), 1), overlap])
    out = np.asarray(rows, dtype=np.float64).reshape(len(responses), 7)
    if query_vec is not None and response_vec is not None:
        out = np.hstack([out, np.sum(query_vec * response_vec, axis=1, keepdims=True)])
    return out


class _Features:
    """φ(prompt, response) for one view; fitted (unsupervised) on all texts of the table."""

    def __init__(self, view: str):
        self.view = view
        self._tfidf = None
        self._mu = self._sd = None
        self.pool: LexWorkers | None = None  # lex: worker processes that transform shares of the responses

    def fit(self, responses: list[str], scalars: np.ndarray | None) -> "_Features":
        if self.view == "emb":
            self._mu, self._sd = scalars.mean(axis=0), scalars.std(axis=0) + 1e-9
            return self
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import FeatureUnion

        self._tfidf = FeatureUnion([
            ("word", TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=30000, sublinear_tf=True,
                                     dtype=np.float32)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=3, max_features=30000,
                                     sublinear_tf=True, dtype=np.float32)),
        ])
        self._tfidf.fit(sorted(set(responses)))
        for _, vectorizer in self._tfidf.transformer_list:
            vectorizer.stop_words_ = None  # every pruned n-gram, for introspection only: large, and never used
        return self

    def transform(self, responses: list[str], scalars: np.ndarray | None, query_vec: np.ndarray | None,
                  response_vec: np.ndarray | None):
        if self.view == "emb":
            scalars = (scalars - self._mu) / self._sd
            return np.hstack([response_vec, query_vec * response_vec * np.sqrt(response_vec.shape[1]), scalars])
        if self.pool is not None and len(responses) >= TRANSFORM_SHARE_MIN * self.pool.workers:
            try:
                return self.pool.transform(responses)
            except WorkerGone:  # the same rows from here on, in this process
                self.close_pool()
        return self._tfidf.transform(responses).tocsr()

    def start_pool(self, workers: int) -> None:
        try:
            self.pool = LexWorkers(self._tfidf, workers)
        except OSError:  # cannot start processes: transform here
            self.pool = None

    def close_pool(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


TRANSFORM_SHARE_MIN = 2_048  # responses per worker below which the caller transforms them itself
TRANSFORM_POOL_MIN_PAIRS = 10_000  # inputs smaller than this start no worker processes (~1 s each)


def _fit_bt(deltas, rows: np.ndarray, weights: np.ndarray, c: float) -> np.ndarray:
    """Bradley-Terry weights w on the pairs `rows` of `deltas`: minimise C·Σ weight·log(1 + exp(−w·Δ)) + ½‖w‖².

    That is logistic regression without intercept on s·Δ with label s > 0, s alternating +1, −1 row by row
    (the loss of −Δ labelled 0 is the loss of Δ labelled 1): one row per pair, where stacking ±Δ needs two
    (and twice liblinear's memory). The rows are copied once, as the float64 liblinear reads, and signed in
    place. liblinear's dual solver is fast on the wide sparse TF-IDF view and on the dense one alike.
    """
    from sklearn.linear_model import LogisticRegression

    sign = np.where(np.arange(len(rows)) % 2 == 0, 1.0, -1.0)
    signed = deltas[rows].astype(np.float64)
    if sp.issparse(signed):
        signed = signed.tocsr()
        signed.data *= np.repeat(sign, np.diff(signed.indptr))
    else:
        signed *= sign[:, None]
    model = LogisticRegression(C=c, fit_intercept=False, solver="liblinear", tol=1e-4, max_iter=200,
                               random_state=0)
    model.fit(signed, (sign > 0).astype(np.float64), sample_weight=weights)
    return model.coef_[0]


def _c(config: "EnsembleConfig", view: str) -> float:
    return config.c_emb if view == "emb" else config.c_lex


def train_fold(shared: tuple[dict, "EnsembleConfig"], train: np.ndarray) -> dict[str, np.ndarray]:
    """One cross-fitting fold, on the pairs `train` of the Δφ of every view: round one on all of them, round two
    without the `drop` share they fit worst. A pure function of its inputs (folds run anywhere, in any order)."""
    deltas, c = shared
    weights = np.ones(len(train))
    coef = {v: _fit_bt(deltas[v], train, weights, _c(c, v)) for v in c.views}
    if c.drop <= 0:
        return coef
    margin = np.mean([_zscale(_dot(deltas[v][train], coef[v])) for v in c.views], axis=0)
    weights = (margin > np.quantile(margin, c.drop)).astype(np.float64)
    return {v: _fit_bt(deltas[v], train, weights, _c(c, v)) for v in c.views}


def local_tasks(fn, shared, items: Sequence, workers: int) -> list:
    """`Context.tasks` when the caller gives none: fn(shared, item) for every item, in order, on up to `workers`
    threads (liblinear's fit and numpy's products release the GIL; fn must not depend on the others)."""
    workers = min(len(items), workers)
    if workers <= 1:
        return [fn(shared, item) for item in items]
    with ThreadPoolExecutor(workers, thread_name_prefix="prefcli-fold") as pool:
        return list(pool.map(partial(fn, shared), items))


def usable_cores() -> int:
    """Cores this process may run on (taskset and cgroup cpusets limit it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _zscale(m: np.ndarray) -> np.ndarray:
    from ...scoring import robust_scale

    return m / robust_scale(m)


# --------------------------------------------------------------------------- the ensemble

@dataclass
class _Member:
    """One cross-fitted member: its out-of-fold scores on the fitted table, and averaged weights."""

    name: str
    view: str
    chosen: np.ndarray
    rejected: np.ndarray
    weights: np.ndarray
    fitted_ids: list[str]
    fold: np.ndarray  # the fold each pair was held out in; -1: outside the training sample (fold-averaged model)

    def fit(self, pairs: pa.Table, *, seed: int) -> None:
        return None

    def score_pairs(self, pairs: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        if pairs.column("pair_id").to_pylist() != self.fitted_ids:
            raise InputError(f"ensemble member {self.name}: can only score the pairs it was cross-fitted on")
        return self.chosen, self.rejected


class OfflineEnsemble:
    """K cross-fitted Bradley-Terry members trained on the input pairs (see module docstring)."""

    score_chunk = 20_000  # pairs whose features are computed at a time when scoring

    def __init__(self, config: EnsembleConfig | None = None, *, name: str | None = None, device: str = "auto",
                 cache_dir: str | None = None, use_cache: bool = True, tasks=None):
        self.config = config or EnsembleConfig()
        self.name = column_safe(name or "ens")
        self.device = device
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        c = self.config
        self.model_id = (f"ensemble:repeats={c.repeats},folds={c.folds},views={'+'.join(c.views)},drop={c.drop},"
                         f"c_emb={c.c_emb},c_lex={c.c_lex},model={c.embed_model or 'default'},max_train={c.max_train}")
        self.members: list[_Member] = []
        self._features: dict[str, _Features] = {}
        self._embedder = None
        self.computed = 0  # texts embedded (cache misses)
        self.tasks = tasks  # runs the cross-fitting folds (Context.tasks: Ray tasks on the ray engine; None: here,
        #                     on `jobs` threads)

    @classmethod
    def from_spec(cls, arg: str, **kwargs) -> "OfflineEnsemble":
        return cls(parse_options(arg), **kwargs)

    @property
    def embedder(self):
        if self._embedder is None:
            from ..embed import build_embedder

            self._embedder = build_embedder(self.config.embed_model, device=self.device, cache_dir=self.cache_dir,
                                            use_cache=self.use_cache)
        return self._embedder

    def _inputs(self, prompts: Sequence[list[dict]], responses: list[str]):
        """Inputs of the `emb` view: embeddings of last user turn and response, style scalars (None without it)."""
        if "emb" not in self.config.views:
            return None, None, None
        queries = [last_user_turn(m) for m in prompts]
        before = self.embedder.computed
        rv = self.embedder.encode(responses).astype(np.float64)
        qv = self.embedder.encode(queries).astype(np.float64)
        self.computed += self.embedder.computed - before
        return style_scalars(queries, responses, qv, rv), qv, rv

    def fit(self, pairs: pa.Table, *, seed: int) -> None:
        n = pairs.num_rows
        c = self.config
        if n < 2 * c.folds:
            raise InputError(f"--rm ensemble: needs at least {2 * c.folds} pairs to cross-fit "
                             f"{c.folds} folds, got {n}")
        sample = self.train_sample(n, seed)
        train = pairs if sample is None else take_rows(pairs, sample)
        try:
            self._fit(pairs, seed, sample, train)
        finally:
            for features in self._features.values():
                features.close_pool()

    def _fit(self, pairs: pa.Table, seed: int, sample: np.ndarray | None, train: pa.Table) -> None:
        c, n, m = self.config, pairs.num_rows, train.num_rows
        prompts, responses = _both_sides(train)
        scalars, qv, rv = self._inputs(prompts, responses)
        deltas = {}
        workers = self.transform_workers(n)
        for view in c.views:
            features = self._features[view] = _Features(view).fit(responses, scalars)
            if view == "lex" and workers > 1:
                features.start_pool(workers)
            chunks = []
            for start in range(0, m, self.score_chunk):  # Δφ a chunk of pairs at a time: φ is row by row
                rows = np.r_[start:min(start + self.score_chunk, m)]
                side = np.concatenate([rows, m + rows])
                phi = features.transform([responses[i] for i in side], *(None if x is None else x[side]
                                                                         for x in (scalars, qv, rv)))
                chunks.append(phi[:len(rows)] - phi[len(rows):])
            deltas[view] = chunks[0] if len(chunks) == 1 else (
                sp.vstack(chunks, format="csr") if sp.issparse(chunks[0]) else np.vstack(chunks))
            del chunks
        del scalars, qv, rv, responses, prompts
        folds_of = [np.random.default_rng([seed, rep]).permutation(m) % c.folds for rep in range(c.repeats)]
        jobs = [np.flatnonzero(fold_of != fold) for fold_of in folds_of for fold in range(c.folds)]
        shared = (deltas, c)
        tasks = self.tasks or partial(local_tasks, workers=self.fold_workers(whole=sample is None))
        fold_weights = list(tasks(train_fold, shared, jobs))  # independent: in parallel
        del deltas, shared  # the held-out scores below need each side's features, computed again a chunk at a time
        scores = self._held_out(train, folds_of, fold_weights)
        ids = pairs.column("pair_id").to_pylist()
        self.members = []
        for rep, fold_of in enumerate(folds_of):
            weight_sum = {v: 0.0 for v in c.views}
            for fold in range(c.folds):
                for v in c.views:
                    weight_sum[v] = weight_sum[v] + fold_weights[rep * c.folds + fold][v] / c.folds
            for v in c.views:
                self.members.append(_Member(f"{self.name}_{v}{rep}", v, scores[rep][v][0], scores[rep][v][1],
                                            weight_sum[v], ids, fold_of))
        if sample is not None:
            self._score_rest(pairs, sample)

    def _held_out(self, train: pa.Table, folds_of: list[np.ndarray], fold_weights: list[dict]
                  ) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Each repeat's out-of-fold (chosen, rejected) scores on the fitted pairs: a pair is scored by the fold
        that held it out. Features are computed a chunk of pairs at a time (row by row, so the same as the
        fit's), so the sample's features are never held during the folds' fits."""
        c, m, chunk = self.config, train.num_rows, self.score_chunk
        scores = [{v: (np.zeros(m), np.zeros(m)) for v in c.views} for _ in folds_of]
        for start in range(0, m, chunk):
            part = train.slice(start, chunk)
            k = part.num_rows
            feats = self._features_of(*_both_sides(part))
            for rep, fold_of in enumerate(folds_of):
                for fold in range(c.folds):
                    held = np.flatnonzero(fold_of[start:start + k] == fold)
                    w = fold_weights[rep * c.folds + fold]
                    for v in c.views:
                        scores[rep][v][0][start + held] = _dot(feats[v][held], w[v])
                        scores[rep][v][1][start + held] = _dot(feats[v][k + held], w[v])
        return scores

    def fold_workers(self, whole: bool) -> int:
        """Folds fitted at once here: `jobs`, or auto: a thread per usable core when every pair is fitted (`whole`),
        one at a time on a sample of a larger input (see the module docstring)."""
        if self.config.jobs:
            return self.config.jobs
        return usable_cores() if whole else 1

    def transform_workers(self, n: int) -> int:
        """Worker processes for the lex view's transforms of an n-pair input, from TRANSFORM_POOL_MIN_PAIRS pairs on:
        `jobs`, or auto: one per usable core; none when Context.tasks runs the work elsewhere (Ray)."""
        if self.tasks is not None or n < TRANSFORM_POOL_MIN_PAIRS:
            return 1
        return self.config.jobs or usable_cores()

    def train_sample(self, n: int, seed: int) -> np.ndarray | None:
        """Sorted indices of the pairs cross-fitted on (a seeded sample of max_train), None for all n."""
        if n <= self.config.max_train:
            return None
        return np.sort(np.random.default_rng([seed, _SAMPLE_STREAM]).choice(n, self.config.max_train, replace=False))

    def _score_rest(self, pairs: pa.Table, sample: np.ndarray) -> None:
        """Pairs outside the sample: each member's fold-averaged model, which never saw their labels."""
        n, chunk = pairs.num_rows, self.score_chunk
        rest = np.setdiff1d(np.arange(n), sample)
        full = [(np.zeros(n), np.zeros(n), np.full(n, -1)) for _ in self.members]
        for (chosen, rejected, fold), member in zip(full, self.members):
            chosen[sample], rejected[sample], fold[sample] = member.chosen, member.rejected, member.fold
        for start in range(0, len(rest), chunk):
            idx = rest[start:start + chunk]
            part = take_rows(pairs, idx)  # not Table.take: it copies each whole column per call
            r = self._rewards(*_both_sides(part))
            for j, (chosen, rejected, _) in enumerate(full):
                chosen[idx], rejected[idx] = r[:len(idx), j], r[len(idx):, j]
        for (chosen, rejected, fold), member in zip(full, self.members):
            member.chosen, member.rejected, member.fold = chosen, rejected, fold

    def _c(self, view: str) -> float:
        return _c(self.config, view)

    def voters(self) -> list[_Member]:
        if not self.members:
            raise InputError("--rm ensemble: fit() must run before scoring")
        return self.members

    def score_pairs(self, pairs: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Cross-fitted ensemble scores: each member's scores scaled by its margin scale, averaged."""
        members = self.voters()
        scales = [_member_scale(m) for m in members]
        chosen = np.mean([m.score_pairs(pairs)[0] / s for m, s in zip(members, scales)], axis=0)
        rejected = np.mean([m.score_pairs(pairs)[1] / s for m, s in zip(members, scales)], axis=0)
        return chosen, rejected

    def score(self, prompts: Sequence[list[dict]], responses: Sequence[str]) -> np.ndarray:
        """Reward of new (prompt, response) items: every member's fold-averaged model, scaled, averaged."""
        members = self.voters()
        rewards = self._rewards(prompts, list(responses))
        out = np.zeros(len(rewards))
        for j, m in enumerate(members):
            out += rewards[:, j] / _member_scale(m)
        return out / len(members)

    def _features_of(self, prompts: Sequence[list[dict]], responses: list[str]) -> dict:
        """φ of each (prompt, response) item under every view, one row per item."""
        scalars, qv, rv = self._inputs(prompts, responses)
        return {v: self._features[v].transform(responses, scalars, qv, rv) for v in self.config.views}

    def _rewards(self, prompts: Sequence[list[dict]], responses: list[str]) -> np.ndarray:
        """w·φ of every member's fold-averaged model, one column per member."""
        feats = self._features_of(prompts, responses)
        return np.column_stack([_dot(feats[m.view], m.weights) for m in self.members]).reshape(len(responses), -1)


def _both_sides(pairs: pa.Table) -> tuple[list, list[str]]:
    """(prompt of each item, response of each item): every pair's chosen item first, then every rejected one."""
    prompts = pairs.column("prompt").to_pylist()
    return prompts + prompts, pairs.column("chosen").to_pylist() + pairs.column("rejected").to_pylist()


def _member_scale(member: _Member) -> float:
    from ...scoring import robust_scale

    return float(robust_scale(member.chosen - member.rejected)[0])


def _dot(x, w: np.ndarray) -> np.ndarray:
    return np.asarray(x @ w).ravel()
