"""`vote` on Ray: `hf:` reward models score the pairs batch by batch in an actor pool (each actor loads the model
once, one GPU per actor when the cluster has GPUs); what needs every row (the ensemble's cross-fitting, the
per-voter robust scale, the buckets) then runs as the stage's one task, on the scores.

The scores travel as columns of the rows (`_rm<j>_chosen`, `_rm<j>_rejected`, one pair per distributed `--rm`
spec j), read in the task by `PrecomputedScores` voters that stand in for the models, and dropped from the
output. Responses scored (cache misses) and truncated are counted per batch and summed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..stage import Context, Stage

PREFIX = "_rm"
COUNTERS = ("computed", "truncated")


def distributable(spec: str) -> bool:
    """`hf:` specs (optionally NAME=hf:...): pretrained pointwise models with nothing to fit."""
    from ..models.reward import _NAME

    named = _NAME.match(spec.strip())
    rest = spec.strip()[named.end():] if named else spec.strip()
    return rest.startswith("hf:")


def score_columns(j: int) -> tuple[str, str]:
    return f"{PREFIX}{j}_chosen", f"{PREFIX}{j}_rejected"


def counter_column(j: int, key: str) -> str:
    return f"{PREFIX}{j}_{key}"


def build_models(stage: Stage, ctx: Context, specs: list[str]) -> list:
    from ..stages.vote import build_reward_models

    p = stage.params
    return build_reward_models(specs, ctx, max_length=p.max_length, batch_size=p.batch_size,
                               trust_remote_code=p.trust_remote_code)


class ScoreBatch:
    """Actor-pool callable: the `hf:` models of a vote, loaded once per actor; each batch gets its scores as
    columns, and its counters (responses scored, truncated) on its first row."""

    def __init__(self, stage: Stage, ctx: Context, which: list[int]):
        specs = list(stage.params.rm)
        self.models = list(zip(which, build_models(stage, ctx, [specs[j] for j in which])))

    def __call__(self, batch: pa.Table) -> pa.Table:
        for j, model in self.models:
            before = {key: int(getattr(model, key, 0)) for key in COUNTERS}
            chosen, rejected = model.score_pairs(batch)
            for name, values in zip(score_columns(j), (chosen, rejected)):
                batch = batch.append_column(name, pa.array(np.asarray(values, dtype=np.float64)))
            for key in COUNTERS:
                counts = np.zeros(batch.num_rows, np.int64)
                if batch.num_rows:
                    counts[0] = int(getattr(model, key, 0)) - before[key]
                batch = batch.append_column(counter_column(j, key), pa.array(counts))
        return batch


class PrecomputedScores:
    """A voter whose scores an actor pool computed: the model's name and id, its scores read from columns."""

    def __init__(self, model: Any, j: int, counters: dict[str, int]):
        self.name, self.model_id = model.name, model.model_id
        self.columns = score_columns(j)
        for key, value in counters.items():
            setattr(self, key, value)

    def fit(self, pairs: pa.Table, *, seed: int) -> None:
        return None

    def score_pairs(self, pairs: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        chosen, rejected = (pairs.column(c).to_numpy() for c in self.columns)
        return chosen, rejected


class UseScores:
    """Run on the worker before the vote task's `run`: the distributed models become PrecomputedScores."""

    def __init__(self, which: list[int], counters: dict[int, dict[str, int]]):
        self.which, self.counters = which, counters

    def before(self, stage: Stage, ctx: Context) -> None:
        models = build_models(stage, ctx, list(stage.params.rm))
        stage._models = [PrecomputedScores(m, j, self.counters[j]) if j in self.which else m
                         for j, m in enumerate(models)]
        self.names = [m.name for m in stage._models if isinstance(m, PrecomputedScores)]

    def after(self, result) -> None:
        """The score and counter columns leave the rows."""
        added = {c for j in self.which for c in (*score_columns(j), *(counter_column(j, k) for k in COUNTERS))}
        for side in ("out", "set_aside"):
            rows = getattr(result, side)
            if rows is not None:
                setattr(result, side, rows.drop_columns([c for c in rows.column_names if c in added]))
        result.stats["scored_in_actor_pool"] = self.names


def counter_sums(batch: pa.Table, which: list[int]) -> pa.Table:
    """One row: each counter column's sum over the batch."""
    return pa.table({counter_column(j, key): [int(pc.sum(batch.column(counter_column(j, key))).as_py() or 0)]
                     for j in which for key in COUNTERS})
