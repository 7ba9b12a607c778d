"""Vote: several reward models score every pair; preference strength, buckets and actions.

Method ("Secrets of RLHF in Large Language Models Part II"): M reward models score each pair;
per model the margin r(chosen) - r(rejected) is divided by a robust per-model scale (NOT centred,
so the sign keeps its meaning: a negative margin votes against the label). Then
  pref_mean  μ̂ = weighted mean of the scaled margins (weights: each --rm spec weighs 1 in total,
             split evenly over an ensemble's members),
  pref_std   σ̂ = weighted standard deviation across voters,
  pref_agree = weighted share of voters whose margin is > 0 (agree with the label),
  pref_wco   = min over voters (worst-case optimisation, "Reward Model Ensembles Help Mitigate
             Overoptimization"), pref_uwo = μ̂ - λ·σ̂² (uncertainty-weighted, λ = uwo_lambda),
  margin     = μ̂ (the adaptive margin for TRL / OpenRLHF, in scaled units),
  label_prob = sigmoid(μ̂), P(chosen really is better), for soft labels,
  pref_bucket from BucketThresholds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..pairs import swap_sides
from ..report import StageResult, Table, mark_set_aside
from ..schema import with_stage_columns
# The maths lives in scoring; re-exported so `from prefcli.stages.vote import ...` keeps working.
from ..scoring import (AGGREGATES, BUCKETS, CALIBRATION_VERSION, BucketThresholds,  # noqa: F401
                       aggregate_margins, bucketize, calibration_document, prefixed_columns, robust_scale,
                       thresholds_from_calibration, voters_of)

STAGE = "vote"
ACTIONS = ("none", "flip", "drop", "soft")


# --------------------------------------------------------------------------- the stage

@dataclass
class VoteParams:
    action: str = "none"
    thresholds: BucketThresholds = field(default_factory=BucketThresholds)
    seed: int = 0
    uwo_lambda: float = 0.5

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise InputError(f"--action: expected one of {', '.join(ACTIONS)}, got '{self.action}'")


def vote(table: pa.Table, reward_models: Sequence, params: VoteParams | None = None) -> StageResult:
    """Score every pair with every reward model, aggregate, bucket, and apply the action.

    A remote voter (served:, judge:) that gave no usable answer for a pair leaves a NaN: that pair's
    pref_* use the other voters, and a pair no voter answered is set aside with the reason.
    """
    params = params or VoteParams()
    if not reward_models:
        raise InputError("vote: give at least one --rm")
    n_in = table.num_rows
    for rm in reward_models:
        rm.fit(table, seed=params.seed)
    voters = voters_of(reward_models)
    chosen = np.zeros((n_in, len(voters)))
    rejected = np.zeros((n_in, len(voters)))
    inconsistent = np.full(n_in, np.nan)
    for j, (voter, _) in enumerate(voters):
        c, r = voter.score_pairs(table)
        chosen[:, j], rejected[:, j] = c, r
        if not getattr(voter, "remote", False) and not np.isfinite(c - r).all():
            raise InputError("vote: a reward model returned a non-finite score (NaN or inf)")
        flags = getattr(voter, "inconsistent", None)
        if flags is not None and len(flags) == n_in:
            inconsistent = np.where(np.isnan(inconsistent), flags, np.fmax(inconsistent, flags))
    answered = np.isfinite(chosen - rejected)
    no_vote = ~answered.any(axis=1)
    no_vote_rows = None
    if no_vote.any():
        failed = [v.name for j, (v, _) in enumerate(voters) if not answered[no_vote, j].all()]
        no_vote_rows = mark_set_aside(table.filter(pa.array(no_vote)), "vote: no reward model gave a usable "
                                      f"answer (failed: {', '.join(failed)})", STAGE)
        keep = pa.array(~no_vote)
        table, chosen, rejected = table.filter(keep), chosen[~no_vote], rejected[~no_vote]
        inconsistent = inconsistent[~no_vote]
    n = table.num_rows
    weights = [w for _, w in voters]
    scale = robust_scale(chosen - rejected)
    agg = aggregate_margins(chosen - rejected, params.thresholds, weights=weights, uwo_lambda=params.uwo_lambda)
    before = agg
    flipped = np.zeros(n, dtype=bool)
    if params.action == "flip":
        flipped = agg["bucket"] == "incorrect"
        table = swap_sides(table, flipped)
        chosen[flipped], rejected[flipped] = rejected[flipped].copy(), chosen[flipped].copy()
        # Same per-voter scales as before the flip, so flipped pairs read in the units they were judged in.
        z = (chosen - rejected) / scale
        agg = aggregate_margins(z, params.thresholds, weights=weights, uwo_lambda=params.uwo_lambda,
                                normalise=False)
    columns: dict[str, pa.Array] = {}
    for j, (voter, _) in enumerate(voters):
        columns[f"rm_{voter.name}_chosen"] = pa.array(chosen[:, j], from_pandas=True)
        columns[f"rm_{voter.name}_rejected"] = pa.array(rejected[:, j], from_pandas=True)
        columns[f"rm_{voter.name}_margin"] = pa.array((chosen[:, j] - rejected[:, j]) / scale[j], from_pandas=True)
    columns.update(prefixed_columns(agg, "pref_"))
    if params.action == "flip":
        columns["pref_flipped"] = pa.array(flipped)
    judged = ~np.isnan(inconsistent)
    if judged.any():  # a judge asked in both orders: did its verdicts disagree (position bias)?
        columns["pref_judge_inconsistent"] = pa.array(np.where(judged, inconsistent > 0, False), mask=~judged)
    table = with_stage_columns(table, STAGE, columns)
    set_aside = None
    if params.action == "drop":
        drop = before["bucket"] == "incorrect"
        set_aside = mark_set_aside(table.filter(pa.array(drop)), "vote: incorrect label (pref_mean below "
                                   f"{params.thresholds.incorrect})", STAGE)
        table = table.filter(pa.array(~drop))
    stats = vote_stats(n, before, agg, chosen - rejected, voters, params, flipped, set_aside)
    stats["rows_in"] = n_in
    if no_vote_rows is not None:
        stats["rows_no_vote"] = no_vote_rows.num_rows
        set_aside = no_vote_rows if set_aside is None else _concat_set_aside(no_vote_rows, set_aside)
        stats["rows_set_aside"] = set_aside.num_rows
        stats["rows_out"] = table.num_rows
    stats.update(remote_stats(voters, ~np.isfinite(chosen - rejected), n_in, no_vote, judged, inconsistent))
    return StageResult(out=table, set_aside=set_aside, stats=stats)


def _concat_set_aside(a: pa.Table, b: pa.Table) -> pa.Table:
    """Rows set aside before scoring (no vote columns) and after (with them): one table, missing columns null."""
    return pa.concat_tables([a, b], promote_options="default")


def remote_stats(voters, missing: np.ndarray, n_in: int, no_vote: np.ndarray, judged: np.ndarray,
                 inconsistent: np.ndarray) -> dict[str, Any]:
    """Requests, retries, failures and tokens of served: / judge: voters; the worst voter's failure share."""
    out: dict[str, Any] = {}
    remote = [(j, v) for j, (v, _) in enumerate(voters) if getattr(v, "remote", False)]
    if not remote:
        return out
    per: dict[str, Any] = {}
    worst = 0.0
    for j, voter in remote:
        info = voter.remote_stats()
        unanswered = int(missing[:, j].sum()) + int(no_vote.sum())
        info["pairs_without_answer"] = unanswered
        per[voter.name] = info
        worst = max(worst, unanswered / max(n_in, 1))
    out["remote"] = per
    out["failure_rate"] = worst
    for key in ("requests", "retries", "prompt_tokens", "completion_tokens", "failed"):
        out[key] = int(sum(info[key] for info in per.values()))
    if judged.any():
        out["pref_judge_inconsistent"] = float((inconsistent[judged] > 0).mean())
    return out


# --------------------------------------------------------------------------- report

def vote_stats(n: int, before: dict, after: dict, raw_margins: np.ndarray, voters, params: VoteParams,
               flipped: np.ndarray, set_aside: pa.Table | None) -> dict[str, Any]:
    buckets = {b: int((before["bucket"] == b).sum()) for b in BUCKETS}
    stats: dict[str, Any] = {
        "rows_in": n,
        "rows_out": n - (0 if set_aside is None else set_aside.num_rows),
        "rows_set_aside": 0 if set_aside is None else set_aside.num_rows,
        "voters": len(voters),
        "action": params.action,
        "flipped": int(flipped.sum()),
        "share_mean_below_0": float((before["mean"] < 0).mean()) if n else 0.0,
        "buckets": buckets,
        "thresholds": asdict(params.thresholds),
        "agreement": pairwise_agreement(raw_margins, [v.name for v, _ in voters]),
        "strength_by_uncertainty": strength_table(before["mean"], before["std"]),
    }
    for voter, _ in voters:
        for key in ("computed", "truncated"):
            if hasattr(voter, key):
                stats[f"rm_{voter.name}_{key}"] = int(getattr(voter, key))
    return stats


def pairwise_agreement(margins: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """Share of pairs on which two voters' margins have the same sign, plus their Spearman ρ."""
    from scipy.stats import spearmanr

    rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = margins[:, i], margins[:, j]
            rho = float(spearmanr(a, b).statistic) if len(a) > 2 and a.std() > 0 and b.std() > 0 else float("nan")
            rows.append({"a": names[i], "b": names[j], "sign_agreement": float((np.sign(a) == np.sign(b)).mean()),
                         "spearman": rho})
    return rows


def strength_table(mean: np.ndarray, std: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """μ̂ deciles against the mean σ̂ in each: the U-shape of the paper (uncertain at both ends)."""
    if not len(mean):
        return []
    order = np.argsort(mean, kind="stable")
    rows = []
    for k, part in enumerate(np.array_split(order, min(bins, len(mean)))):
        rows.append({"decile": k + 1, "pairs": int(len(part)), "mean_lo": float(mean[part].min()),
                     "mean_hi": float(mean[part].max()), "std_mean": float(std[part].mean())})
    return rows


def report_tables(stats: dict[str, Any]) -> list[Table]:
    n = max(stats["rows_in"], 1)
    tables = [Table("buckets", "pref_bucket shares", ["bucket", "pairs", "share"],
                    [[b, c, c / n] for b, c in stats["buckets"].items()])]
    if stats["agreement"]:
        tables.append(Table("agreement", "agreement between reward models", ["a", "b", "sign_agreement", "spearman"],
                            [[r["a"], r["b"], r["sign_agreement"], r["spearman"]] for r in stats["agreement"]]))
    if stats.get("remote"):
        keys = ["requests", "retries", "cache_hits", "computed", "failed", "pairs_without_answer", "prompt_tokens",
                "completion_tokens"]
        tables.append(Table("remote", "served:/judge: requests, failures and tokens", ["voter", *keys, "failed_by"],
                            [[name, *[info.get(k) for k in keys],
                              ", ".join(f"{r} {c}" for r, c in info["failed_by_reason"].items()) or "-"]
                             for name, info in stats["remote"].items()]))
    tables.append(Table("strength", "pref_mean deciles vs pref_std", ["decile", "pairs", "mean_lo", "mean_hi",
                                                                       "std_mean"],
                        [list(r.values()) for r in stats["strength_by_uncertainty"]]))
    return tables
