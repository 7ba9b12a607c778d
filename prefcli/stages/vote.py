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
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa
from pydantic import field_validator

from ..errors import InputError, ProblemsReported
from ..options import parse_key_values
from ..pairs import swap_sides
from ..report import StageResult, Table, mark_set_aside
from ..schema import with_stage_columns
from ..stage import (EMBED_MODEL_HELP, SET_ASIDE, TRUST_REMOTE_CODE_HELP, Context, Params, Read, Resources, Stage,
                     Write, option, register)
# The maths lives in scoring; re-exported so `from prefcli.stages.vote import ...` keeps working.
from ..scoring import (AGGREGATES, BUCKETS, CALIBRATION_VERSION, BucketThresholds,  # noqa: F401
                       aggregate_margins, bucketize, calibration_document, prefixed_columns, robust_scale,
                       thresholds_from_calibration, voters_of)

STAGE = "vote"
ACTIONS = ("none", "flip", "drop", "soft")


# --------------------------------------------------------------------------- the stage

@dataclass
class VoteOptions:
    action: str = "none"
    thresholds: BucketThresholds = field(default_factory=BucketThresholds)
    seed: int = 0
    uwo_lambda: float = 0.5

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise InputError(f"--action: expected one of {', '.join(ACTIONS)}, got '{self.action}'")


def vote(table: pa.Table, reward_models: Sequence, params: VoteOptions | None = None) -> StageResult:
    """Score every pair with every reward model, aggregate, bucket, and apply the action.

    A remote voter (served:, judge:) that gave no usable answer for a pair leaves a NaN: that pair's
    pref_* use the other voters, and a pair no voter answered is set aside with the reason.
    """
    params = params or VoteOptions()
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

def vote_stats(n: int, before: dict, after: dict, raw_margins: np.ndarray, voters, params: VoteOptions,
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


# --------------------------------------------------------------------------- the Stage

def enforce_failure_rate(stats: dict, limit: float) -> None:
    """Remote voters' failures are counted, never silent: past the limit the command exits 1."""
    rate = stats.get("failure_rate")
    if rate is not None and rate > limit:
        worst = max(stats["remote"].items(), key=lambda kv: kv[1].get("pairs_without_answer", kv[1]["failed"]))
        reasons = ", ".join(f"{k} {v}" for k, v in worst[1]["failed_by_reason"].items()) or "none"
        raise ProblemsReported(f"--rm {worst[0]}: no usable answer for {rate:.1%} of what it was asked, above "
                               f"--max-failure-rate {limit:.1%} (failed: {reasons})")


def parse_thresholds(value: Any, where: str = "--thresholds") -> dict[str, str] | None:
    """`incorrect=-0.5,strong=1.5` (the CLI) or a mapping (TOML, Python) -> {name: text} for with_overrides."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(k): ("none" if v is None else str(v)) for k, v in value.items()}
    if not isinstance(value, str):
        raise InputError(f"{where}: expected key=value[,key=value], got {value!r}")
    return parse_key_values(value, where)


RM_HELP = ("Reward model spec, repeatable: hf:<path-or-hub-id> | ensemble[:k=6,folds=5,views=emb+lex,drop=0.15] | "
           "scores:<col_chosen>,<col_rejected> | served:<model>,base_url=URL[,api=vllm|sglang|tei,tokenizer=PATH,"
           "concurrency=8,...] | judge:<model>,base_url=URL[,mode=pairwise|pointwise,template=FILE,"
           "both_orders=true,...]; prefix NAME= to name its columns (rm_NAME_*). ${VAR} in options reads the "
           "environment.")
MAX_FAILURE_RATE_HELP = ("served:/judge: exit 1 (after writing) when a voter gave no usable answer for more than "
                         "this share of the pairs (failed requests, unparseable answers, max_requests spent).")


class EmbedAndVoteParams(Params):
    """Options of a stage that embeds texts and may ask served:/judge: voters (mine, review select)."""

    max_failure_rate: float = option(0.05, MAX_FAILURE_RATE_HELP, low=0.0, high=1.0)
    model: str | None = option(None, EMBED_MODEL_HELP)
    trust_remote_code: bool = option(False, TRUST_REMOTE_CODE_HELP)


def load_calibration(path: str) -> BucketThresholds:
    """--calibration: a calib.json written by `prefcli calibrate`, read as thresholds."""
    from .. import io

    return thresholds_from_calibration(io.read_json(path), where=path)


class VoteParams(Params):
    rm: list[str] = option([], RM_HELP, metavar="SPEC")
    action: Literal["none", "flip", "drop", "soft"] = option(
        "none", f"What to do with `incorrect` pairs: {'|'.join(ACTIONS)}. flip swaps chosen/rejected (pref_flipped), "
                "drop sets them aside, soft keeps them with label_prob.")
    thresholds: dict[str, str] | None = option(
        None, "Bucket thresholds on pref_mean: incorrect=-0.5,ambiguous=0.25,strong=1.5[,ambiguous_std=X]; "
              "overrides --calibration.")
    max_length: int = option(4096, "hf: token limit per (prompt, response); longer inputs keep their last tokens "
                                   "and are counted.", low=1)
    batch_size: int = option(8, "hf: sequences per forward pass.", low=1)
    trust_remote_code: bool = option(False, "hf: allow the model repository's own Python code (off by default).")
    max_failure_rate: float = option(0.05, MAX_FAILURE_RATE_HELP, low=0.0, high=1.0)

    @field_validator("thresholds", mode="before")
    @classmethod
    def _thresholds(cls, value: Any) -> dict[str, str] | None:
        return parse_thresholds(value)


def build_reward_models(specs: Sequence[str], ctx: Context, **opts: Any) -> list:
    """The reward models of `--rm` specs, on the context's device and cache."""
    from ..models.reward import parse_rm_spec

    cache_dir = str(ctx.cache_dir) if ctx.cache_dir else None
    return [parse_rm_spec(spec, device=ctx.device, cache_dir=cache_dir, use_cache=ctx.use_cache, tasks=ctx.tasks,
                          **opts) for spec in specs]


@register
class VoteStage(Stage):
    """Score every pair with one or more reward models and flag incorrect / ambiguous labels."""

    name = "vote"
    Params = VoteParams
    summary = "Score pairs with reward models; flag incorrect/ambiguous labels; flip, drop or soft-label them."
    resources = Resources(mode="table", uses_models=True,
                          on_ray="hf: models score in an actor pool (map_batches, one GPU per actor when there "
                                 "are GPUs); then one Ray task fits the ensemble (its folds as parallel Ray tasks) "
                                 "and aggregates (the per-RM robust scale needs every row)")
    engines = ("local", "ray")
    uses_seed = True
    empty_input = "no pairs to vote on"
    reads = (Read("calibration", "--calibration", "calib.json written by `prefcli calibrate` (thresholds from "
                  "human review).", load_calibration),)
    writes = (Write(SET_ASIDE, "--set-aside", "Where --action drop writes its rows (default OUT.rejects.parquet).",
                    default_suffix=".rejects.parquet"),)

    def validate(self, call) -> None:
        super().validate(call)
        if not self.params.rm:
            raise InputError("missing option '--rm'")

    def thresholds(self, ctx: Context) -> BucketThresholds:
        """Defaults, then the calibration (ctx.inputs), then --thresholds overrides."""
        base = ctx.inputs.get("calibration") or BucketThresholds()
        if isinstance(base, dict):
            base = thresholds_from_calibration(base)
        return base.with_overrides(self.params.thresholds or {})

    def reward_models(self, ctx: Context) -> list:
        if getattr(self, "_models", None) is None:
            p = self.params
            self._models = build_reward_models(p.rm, ctx, max_length=p.max_length, batch_size=p.batch_size,
                                               trust_remote_code=p.trust_remote_code)
        return self._models

    def check(self, ctx: Context) -> None:
        self.thresholds(ctx)
        self.reward_models(ctx)

    def columns_needed(self, ctx: Context) -> list[str]:
        """What the reward models read (prompt, responses, pair_id), the side scores a flip swaps, and the columns
        `scores:` voters read."""
        named = [c for m in self.reward_models(ctx) for c in (getattr(m, "chosen_column", None),
                                                               getattr(m, "rejected_column", None)) if c]
        return ["pair_id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score", *named]

    def run(self, table: pa.Table, ctx: Context) -> StageResult:
        options = VoteOptions(action=self.params.action, thresholds=self.thresholds(ctx), seed=ctx.seed)
        models, self._models = self.reward_models(ctx), None
        return vote(table, models, options)

    def final_stats(self, result: StageResult, rows_in: int, seconds: float) -> dict[str, Any]:
        return {**result.stats, "seconds": round(seconds, 2), "pairs_per_s": round(rows_in / max(seconds, 1e-9), 1)}

    def after_report(self, stats: dict[str, Any]) -> None:
        enforce_failure_rate(stats, self.params.max_failure_rate)

    @classmethod
    def report_tables(cls, stats: dict[str, Any]) -> list:
        return report_tables(stats)
