"""Scoring maths shared by the stages and the reward models: robust margin scales, the weighted
aggregation of several voters' margins (pref_mean, pref_std, agree, wco, uwo, label_prob), and the
pref_bucket thresholds with their calib.json document.

The method is described in `stages/vote.py`; `length-bias`, `mine`, `calibrate` and the offline
ensemble use the same functions, so their numbers read in the same units as the vote's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from .errors import InputError
from .options import coerce

BUCKETS = ("incorrect", "ambiguous", "normal", "strong")
CALIBRATION_VERSION = 1
AGGREGATES = ("mean", "std", "agree", "wco", "uwo", "bucket", "margin", "label_prob")


# --------------------------------------------------------------------------- thresholds

@dataclass(frozen=True)
class BucketThresholds:
    """Buckets on pref_mean μ̂ (scaled units), checked in this order:
    incorrect if μ̂ < incorrect; ambiguous if μ̂ < ambiguous or pref_std > ambiguous_std;
    strong if μ̂ >= strong; otherwise normal."""

    incorrect: float = -0.5
    ambiguous: float = 0.25
    strong: float = 1.5
    ambiguous_std: float | None = None

    def __post_init__(self):
        if not (self.incorrect <= self.ambiguous <= self.strong):
            raise InputError(f"thresholds: need incorrect <= ambiguous <= strong, got "
                             f"{self.incorrect}, {self.ambiguous}, {self.strong}")
        if self.ambiguous_std is not None and self.ambiguous_std < 0:
            raise InputError(f"thresholds: ambiguous_std must be >= 0, got {self.ambiguous_std}")

    def with_overrides(self, overrides: dict[str, str], where: str = "--thresholds") -> "BucketThresholds":
        values: dict[str, Any] = asdict(self)
        for key, raw in overrides.items():
            if key not in values:
                raise InputError(f"{where}: unknown threshold '{key}' (expected {', '.join(values)})")
            if key == "ambiguous_std" and raw.lower() in ("", "none", "null"):
                values[key] = None
                continue
            values[key] = coerce(raw, 0.0, where, key)
            if not math.isfinite(values[key]):
                raise InputError(f"{where}: {key}={raw!r} is not finite")
        return BucketThresholds(**values)


def thresholds_from_calibration(doc: Any, where: str = "calibration") -> BucketThresholds:
    """Thresholds from a calib.json document: {"version": 1, "thresholds": {...}, ...}."""
    if not isinstance(doc, dict) or not isinstance(doc.get("thresholds"), dict):
        raise InputError(f"{where}: expected an object with a 'thresholds' object (written by `prefcli calibrate`)")
    if doc.get("version") != CALIBRATION_VERSION:
        raise InputError(f"{where}: unsupported calibration version {doc.get('version')!r} "
                         f"(expected {CALIBRATION_VERSION})")
    values = {k: ("none" if v is None else str(v)) for k, v in doc["thresholds"].items()}
    missing = [k for k in ("incorrect", "ambiguous", "strong") if k not in values]
    if missing:
        raise InputError(f"{where}: thresholds lack '{missing[0]}'")
    return BucketThresholds().with_overrides(values, where=where)


def calibration_document(thresholds: BucketThresholds, **info: Any) -> dict:
    """The calib.json document for these thresholds (plus any extra info, e.g. agreement per bin)."""
    return {"version": CALIBRATION_VERSION, "thresholds": asdict(thresholds), **info}


# --------------------------------------------------------------------------- margins

def robust_scale(margins: np.ndarray) -> np.ndarray:
    """Per-column scale of margins around 0 (not the mean): median |m| / 0.6745 (= σ for N(0, σ²)),
    falling back to the RMS, then 1, when that is 0. Dividing by it is idempotent. NaN (a voter
    that gave no answer for that pair) is left out."""
    margins = np.asarray(margins, dtype=np.float64)
    if margins.ndim == 1:
        margins = margins[:, None]
    scale = np.ones(margins.shape[1])
    for j in range(margins.shape[1]):
        col = margins[:, j][~np.isnan(margins[:, j])]
        if not len(col):
            continue
        s = np.median(np.abs(col)) / 0.6744897501960817
        s = s if s > 1e-12 else np.sqrt(np.mean(col ** 2))
        scale[j] = s if s > 1e-12 else 1.0
    return scale


def bucketize(mean: np.ndarray, std: np.ndarray, thresholds: BucketThresholds) -> np.ndarray:
    bucket = np.full(len(mean), "normal", dtype=object)
    bucket[mean >= thresholds.strong] = "strong"
    ambiguous = mean < thresholds.ambiguous
    if thresholds.ambiguous_std is not None:
        ambiguous |= std > thresholds.ambiguous_std
    bucket[ambiguous] = "ambiguous"
    bucket[mean < thresholds.incorrect] = "incorrect"
    return bucket


def aggregate_margins(margins: np.ndarray, thresholds: BucketThresholds | None = None, *,
                      weights: Sequence[float] | None = None, uwo_lambda: float = 0.5,
                      normalise: bool = True) -> dict[str, np.ndarray]:
    """Aggregate raw per-voter margins (n, M) into the unprefixed vote columns.

    Returns {mean, std, agree, wco, uwo, bucket, margin, label_prob}; each column of `margins`
    is first divided by its robust_scale (sign kept). `weights` (M,) default to equal.
    """
    margins = np.asarray(margins, dtype=np.float64)
    if margins.ndim == 1:
        margins = margins[:, None]
    if np.isinf(margins).any():
        raise InputError("vote: a reward model returned a non-finite score (NaN or inf)")
    thresholds = thresholds or BucketThresholds()
    z = margins / robust_scale(margins) if normalise else margins
    valid = ~np.isnan(z)  # NaN: that voter gave no answer for the pair; the others vote
    w = np.ones(z.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    w = valid * (w / w.sum())[None, :]
    total = w.sum(axis=1, keepdims=True)
    w = w / np.where(total > 0, total, 1.0)
    z0 = np.where(valid, z, 0.0)
    mean = (z0 * w).sum(axis=1)
    std = np.sqrt(np.clip((((z0 - mean[:, None]) ** 2) * w).sum(axis=1), 0.0, None))
    wco = np.where(valid, z, np.inf).min(axis=1) if z.shape[1] else mean
    return {
        "mean": mean,
        "std": std,
        "agree": ((z0 > 0) * w).sum(axis=1),
        "wco": np.where(np.isfinite(wco), wco, mean),
        "uwo": mean - uwo_lambda * std ** 2,
        "bucket": bucketize(mean, std, thresholds),
        "margin": mean.copy(),
        "label_prob": 1.0 / (1.0 + np.exp(-mean)),
    }


def prefixed_columns(agg: dict[str, np.ndarray], prefix: str) -> dict[str, pa.Array]:
    """Vote aggregates as columns: `margin` and `label_prob` keep their bare names for `pref_`."""
    bare = prefix == "pref_"
    out = {}
    for key in AGGREGATES:
        name = key if bare and key in ("margin", "label_prob") else f"{prefix}{key}"
        values = agg[key]
        out[name] = pa.array(values.tolist(), pa.large_string()) if key == "bucket" else pa.array(values)
    return out


# --------------------------------------------------------------------------- voters

def voters_of(reward_models: Sequence) -> list[tuple[Any, float]]:
    """(voter, weight) pairs: an ensemble's members vote separately, each spec weighs 1 in total."""
    out = []
    for rm in reward_models:
        members = rm.voters() if hasattr(rm, "voters") else [rm]
        out.extend((m, 1.0 / len(members)) for m in members)
    names = [v.name for v, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"--rm: two reward models are both named '{dupes[0]}' (name one with NAME=SPEC)")
    return out
