"""Calibrate the vote's bucket thresholds on human-verified pairs.

The AI label of a pair is the vote's reading of it: pairs in the `incorrect` bucket are flipped
(`vote --action flip`), every other pair keeps its label. On the pairs humans reviewed
(`review_verdict` keep or flip) a logistic model learns P(humans keep the label | μ̂, σ̂) from
`pref_mean` and `pref_std`. Applied to every pair of the input, it gives coverage and agreement for
any cut on μ̂, and the thresholds are chosen on them:

- incorrect: the largest cut below which humans flip at least `target` of the pairs;
- ambiguous: the smallest cut at or above which the kept labels agree with humans at least `target`
  of the time (pairs between incorrect and ambiguous are the ones to drop or review);
- strong: the same with the stricter `strong_target` = 1 - (1 - target) / 2.

Why a model and not raw shares: `review select` picks pairs BY these vote columns (bucket, pref_std),
so raw agreement among reviewed pairs is biased; conditioning on the same columns removes that bias
("selection on observables"), and the random audit slice covers the regions the priority tiers skip.
A tail counts only with at least MIN_SUPPORT reviewed pairs in it. The empirical agreement per μ̂ bin
is reported beside the model's. μ̂ and σ̂ of a reviewed pair are the `review_` snapshots (the vote as
humans saw it) when present.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..report import Table
from ..result import StageResult
from ..stage import Context, Params, Stage, Write, option, register
from ..scoring import BucketThresholds, calibration_document

REQUIRES = {
    "pref_mean": "run `prefcli vote` first",
    "review_verdict": "import human verdicts with `prefcli review import` first",
}
MIN_SUPPORT = 5  # reviewed pairs a tail needs before its agreement counts


def strong_target(target: float) -> float:
    return 1.0 - (1.0 - target) / 2.0


def _column(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def calibrate(table: pa.Table, *, target: float = 0.9, bins: int | None = None, cuts: int = 40,
              min_reviewed: int = 20) -> dict[str, Any]:
    """The calib.json document (thresholds + bins, coverage/agreement table, pref_agree table)."""
    if not 0.5 < target < 1.0:
        raise InputError(f"--target: must be within (0.5, 1), got {target}")
    verdict = np.asarray(table.column("review_verdict").to_pylist(), dtype=object)
    mu = _as_reviewed(table, "pref_mean")
    std = _as_reviewed(table, "pref_std")
    reviewed = np.isin(verdict, ["keep", "flip"]) & np.isfinite(mu)
    n_reviewed = int(reviewed.sum())
    if n_reviewed < min_reviewed:
        raise InputError(f"calibrate: {n_reviewed} human-verified pairs with pref_mean (keep/flip verdicts), "
                         f"need at least {min_reviewed}; review more pairs first")
    population = np.isfinite(mu)
    keep = verdict[reviewed] == "keep"
    features = _features(mu, std, reviewed)
    model = AgreementModel(features[reviewed], keep)
    p_keep = model(features[population])  # P(humans keep the label) for every pair of the input

    mu_pop, mu_rev = mu[population], mu[reviewed]
    order = np.argsort(mu_pop, kind="stable")
    mu_sorted, keep_cum = mu_pop[order], np.concatenate([[0.0], np.cumsum(p_keep[order])])
    rev_sorted = np.sort(mu_rev)
    total = len(mu_sorted)
    lo, hi = float(mu_sorted[0]), float(mu_sorted[-1])
    # candidate cuts: population quantiles; the first means "nothing below", the last "nothing at or above"
    values = [lo, *np.unique(np.quantile(mu_sorted, np.linspace(0, 1, cuts + 1)[1:-1])).tolist(),
              float(np.nextafter(hi, np.inf))]
    rows = []
    for value in values:
        below = int(np.searchsorted(mu_sorted, value, side="left"))
        above = total - below
        rev_below = int(np.searchsorted(rev_sorted, value, side="left"))
        keep_above = keep_cum[-1] - keep_cum[below]
        rows.append({
            "threshold": float(value),
            "keep_coverage": above / total,
            "keep_agreement": float(keep_above / above) if above else None,
            "keep_reviewed": n_reviewed - rev_below,
            "flip_share": below / total,
            "flip_agreement": float(1 - keep_cum[below] / below) if below else None,
            "flip_reviewed": rev_below,
        })

    def meets(row, side: str, goal: float) -> bool:
        value = row[f"{side}_agreement"]
        return value is not None and row[f"{side}_reviewed"] >= MIN_SUPPORT and value >= goal

    last = len(rows) - 1
    k_incorrect = max([k for k in range(1, last + 1) if meets(rows[k], "flip", target)], default=0)
    k_ambiguous = min([k for k in range(k_incorrect, last) if meets(rows[k], "keep", target)], default=last)
    goal_strong = strong_target(target)
    k_strong = min([k for k in range(k_ambiguous, last) if meets(rows[k], "keep", goal_strong)], default=last)
    thresholds = BucketThresholds(incorrect=rows[k_incorrect]["threshold"],
                                  ambiguous=rows[k_ambiguous]["threshold"], strong=rows[k_strong]["threshold"])
    kept = rows[k_ambiguous]
    return calibration_document(
        thresholds,
        target=target,
        strong_target=goal_strong,
        met={"incorrect": k_incorrect > 0, "ambiguous": k_ambiguous < last, "strong": k_strong < last},
        reviewed=n_reviewed,
        population=total,
        kept_coverage=kept["keep_coverage"],
        kept_agreement=kept["keep_agreement"],
        flipped_share=rows[k_incorrect]["flip_share"],
        model=model.describe,
        bins=_bins(mu_rev, keep, mu_pop, p_keep, bins or int(np.clip(n_reviewed // 25, 4, 20))),
        coverage=rows,
        by_pref_agree=_by_pref_agree(table, reviewed, keep),
    )


def _as_reviewed(table: pa.Table, name: str) -> np.ndarray:
    """A vote column as humans saw it: the `review_` snapshot where present, else the current value."""
    snapshot, current = _column(table, f"review_{name}"), _column(table, name)
    return np.where(np.isfinite(snapshot), snapshot, current)


def _features(mu: np.ndarray, std: np.ndarray, reviewed: np.ndarray) -> np.ndarray:
    """[μ̂, σ̂] when every reviewed pair has σ̂ (missing σ̂ elsewhere -> the reviewed median), else [μ̂]."""
    if not np.isfinite(std[reviewed]).all():
        return mu[:, None]
    return np.column_stack([mu, np.where(np.isfinite(std), std, np.median(std[reviewed]))])


class AgreementModel:
    """P(humans keep the label | μ̂, σ̂): logistic regression on the reviewed pairs.

    The review queue is picked on these same vote columns (bucket, pref_std), so conditioning on them
    keeps the estimate unbiased for the whole input ("selection on observables"); the audit slice
    anchors the regions the priority tiers skip.
    """

    def __init__(self, x: np.ndarray, keep: np.ndarray):
        self.constant = None
        if keep.all() or not keep.any():  # one class only: a smoothed share
            self.constant = (keep.sum() + 1.0) / (len(keep) + 2.0)
            self.describe = {"kind": "constant", "p_keep": self.constant}
            return
        from sklearn.linear_model import LogisticRegression

        self.fit = LogisticRegression(C=10.0).fit(x, keep)
        self.describe = {"kind": "logistic", "features": ["pref_mean", "pref_std"][: x.shape[1]],
                         "coef": self.fit.coef_[0].tolist(), "intercept": float(self.fit.intercept_[0])}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.constant is not None:
            return np.full(len(x), self.constant)
        return self.fit.predict_proba(x)[:, 1]


def _bins(mu_rev, keep, mu_pop, p_keep, n_bins: int) -> list[dict[str, Any]]:
    """Per pref_mean bin (quantiles of the reviewed pairs): the humans' observed and the model's agreement."""
    edges = np.unique(np.quantile(mu_rev, np.linspace(0, 1, n_bins + 1)[1:-1]))
    b_rev = np.searchsorted(edges, mu_rev, side="right")
    b_pop = np.searchsorted(edges, mu_pop, side="right")
    out = []
    for b in range(len(edges) + 1):
        in_rev, in_pop = b_rev == b, b_pop == b
        out.append({"lo": None if b == 0 else float(edges[b - 1]), "hi": None if b == len(edges) else float(edges[b]),
                    "reviewed": int(in_rev.sum()), "population": int(in_pop.sum()),
                    "agreement": float(keep[in_rev].mean()) if in_rev.any() else None,
                    "model_agreement": float(p_keep[in_pop].mean()) if in_pop.any() else None})
    return out


def _by_pref_agree(table: pa.Table, reviewed: np.ndarray, keep: np.ndarray) -> list[dict[str, Any]]:
    share = _column(table, "pref_agree")
    if not np.isfinite(share).any():
        return []
    rounded = np.round(share, 2)
    population = Counter(rounded[np.isfinite(rounded)].tolist())
    rev = rounded[reviewed]
    out = []
    for value in sorted(population):
        mask = rev == value
        out.append({"pref_agree": value, "population": population[value], "reviewed": int(mask.sum()),
                    "agreement": float(keep[mask].mean()) if mask.any() else None})
    return out


def coverage_summary(doc: dict[str, Any]) -> dict[str, Any]:
    t = doc["thresholds"]
    return {"reviewed": doc["reviewed"], "target": doc["target"], "incorrect": t["incorrect"],
            "ambiguous": t["ambiguous"], "strong": t["strong"], "kept_coverage": doc["kept_coverage"],
            "kept_agreement": doc["kept_agreement"], "flipped_share": doc["flipped_share"],
            "target_met": doc["met"]["ambiguous"]}



# --------------------------------------------------------------------------- the Stage

def png_path(output: str) -> str:
    """Where --png writes the figure: beside the JSON (calib.json -> calib.png), calib.png for stdout."""
    if output == "-":
        return "calib.png"
    path = Path(output)
    return str(path.with_suffix(".png") if path.suffix else path.with_name(path.name + ".png"))


def coverage_table(stats: dict[str, Any]) -> Table:
    rows = [[r["threshold"], r["keep_coverage"], r["keep_agreement"], r["keep_reviewed"]] for r in stats["coverage"]]
    return Table("coverage", "Coverage vs agreement (pairs with pref_mean >= threshold kept)",
                 ["threshold", "coverage", "agreement", "reviewed"], rows)


class CalibrateParams(Params):
    target: float = option(0.9, "Agreement with humans the kept (and flipped) AI labels must reach.", low=0.0,
                           high=1.0)
    bins: int | None = option(None, "pref_mean bins of the agreement report (default: reviewed/25, within 4..20).",
                              low=2)
    min_reviewed: int = option(20, "Fewest human-verified pairs to calibrate on.", low=1)
    png: bool = option(False, "Also write the coverage/agreement plot beside the JSON (calib.png).")


PNG = Write("png", "--png", "The coverage/agreement plot (calib.png beside the JSON).")


@register
class CalibrateStage(Stage):
    """Choose incorrect/ambiguous/strong thresholds on pref_mean that meet --target agreement with humans."""

    name = "calibrate"
    Params = CalibrateParams
    summary = "Bucket thresholds for `prefcli vote --calibration` from human-verified pairs (review import output)."
    output = "file"
    output_help = "calib.json to write, or - for stdout."

    def validate(self, call) -> None:
        super().validate(call)
        if self.params.png:  # --png is a switch: the figure goes beside the JSON
            call.writes[PNG.name] = png_path(call.output)

    def planned_writes(self):
        return (PNG,) if self.params.png else ()

    def required_columns(self) -> dict[str, str]:
        return REQUIRES

    def run(self, table: pa.Table, ctx: Context) -> StageResult:
        p = self.params
        doc = calibrate(table, target=p.target, bins=p.bins, min_reviewed=p.min_reviewed)
        stats = {**coverage_summary(doc), "coverage": doc["coverage"]}
        artifacts: dict[str, Any] = {"calibration": doc}
        if p.png:
            artifacts[PNG.name] = doc
        self._ctx = ctx
        return StageResult(out=None, stats=stats, artifacts=artifacts)

    def write(self, plan, paths: dict[str, str], result: StageResult) -> None:
        plan.write(paths["output"], json.dumps(result.artifacts["calibration"], indent=2, ensure_ascii=False) + "\n")
        if PNG.name in paths:
            from ..plots import coverage_plot

            plan.write(paths[PNG.name], coverage_plot(result.artifacts[PNG.name]))

    def after_write(self, stats: dict[str, Any]) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is not None and not stats["target_met"]:
            ctx.warn(f"no pref_mean cut reaches agreement {stats['target']}: every pair lands in ambiguous; review "
                     "more pairs or lower --target")

    @classmethod
    def report_tables(cls, stats: dict[str, Any]) -> list:
        return [coverage_table(stats)]
