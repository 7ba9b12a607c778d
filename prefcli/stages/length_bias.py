"""Length bias: diagnose it, fit f(length) -> reward, debias scores, rebalance labels.

Pure functions over Arrow tables (no I/O, no printing). Lengths come from a `LengthMeasure`
(prefcli.models.length) passed in by the caller.

Columns written (prefix `len_`; vote's `rm_*`/`pref_*` columns are never touched):
- `len_chosen`, `len_rejected`: response lengths in the model's unit.
- `len_rm_<name>_chosen/_rejected`: debiased scores, score - f(length) + offset (the issue's
  `rm_<name>_debiased`; `rm_` belongs to vote, so the debiased copy lives under `len_`), each minus half of
  the residual step's pair correction g(dlen) (chosen -, rejected +; see `fit_residual`).
- `len_rm_<name>_margin`: debiased chosen - rejected over vote's robust per-RM scale (like `rm_<name>_margin`).
- `len_pref_mean/_std/_agree/_wco/_uwo/_bucket/_margin/_label_prob`: vote's `aggregate_margins` on the
  debiased margins (vote's `pref_mean`, ..., `margin`, `label_prob` stay as they were).
- `len_pref_mean` alone when only `pref_mean` was fitted (`--score pref_mean`).
- `len_bucket` (rebalance): the |length ratio| bucket; `len_weight` (rebalance --mode weight).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..report import StageResult, mark_set_aside
from ..schema import with_stage_columns
from ..scoring import BucketThresholds, aggregate_margins, prefixed_columns, robust_scale

STAGE = "length_bias"
MODEL_FORMAT = "prefcli.length_bias.v1"
METHODS = ("paired", "isotonic", "spline", "dlen")
RESIDUALS = ("balanced", "rank", "none")
RHO_TARGET = 0.05
N_QUANTILES = 101
N_KNOTS = 8
MIN_PAIRS = 10
RIDGE_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0)
DEFAULT_RATIO_EDGES = (1.1, 1.25, 1.5, 2.0, 3.0)
EQUAL = "equal"
_RM_CHOSEN = re.compile(r"^rm_(.+)_chosen$")



# --------------------------------------------------------------------------- lengths and buckets

def response_lengths(table: pa.Table, measure) -> tuple[np.ndarray, np.ndarray]:
    return measure(table.column("chosen")), measure(table.column("rejected"))


def log_ratio(len_chosen: np.ndarray, len_rejected: np.ndarray) -> np.ndarray:
    """Signed log length ratio of chosen over rejected (+1 smoothing so empty tokenisations are safe)."""
    return np.log1p(len_chosen) - np.log1p(len_rejected)


def bucket_labels(edges: Sequence[float] = DEFAULT_RATIO_EDGES) -> list[str]:
    bounds = [1.0, *edges]
    labels = [f"{_num(a)}-{_num(b)}x" for a, b in zip(bounds[:-1], bounds[1:])]
    return [EQUAL, *labels, f">{_num(bounds[-1])}x"]


def _num(x: float) -> str:
    return f"{x:g}"


def length_buckets(len_chosen: np.ndarray, len_rejected: np.ndarray,
                   edges: Sequence[float] = DEFAULT_RATIO_EDGES) -> np.ndarray:
    """Bucket index per pair by |length ratio| (0 = equal length); names from `bucket_labels`."""
    ratio = np.abs(log_ratio(len_chosen, len_rejected))
    idx = 1 + np.searchsorted(np.log(np.asarray(edges, dtype=np.float64)), ratio, side="left")
    idx[len_chosen == len_rejected] = 0
    return idx


def parse_ratio_edges(spec: str | None) -> tuple[float, ...]:
    if not spec:
        return DEFAULT_RATIO_EDGES
    try:
        edges = tuple(float(x) for x in spec.split(","))
    except ValueError:
        raise InputError(f"--ratio-edges: expected increasing numbers > 1 like 1.1,1.5,2, got '{spec}'") from None
    if not edges or edges[0] <= 1 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise InputError(f"--ratio-edges: expected increasing numbers > 1 like 1.1,1.5,2, got '{spec}'")
    return edges


# --------------------------------------------------------------------------- which scores

def rm_names(table: pa.Table) -> list[str]:
    """Reward models with both `rm_<name>_chosen` and `rm_<name>_rejected` columns (as vote writes them)."""
    names = []
    for col in table.column_names:
        match = _RM_CHOSEN.match(col)
        if match and f"rm_{match.group(1)}_rejected" in table.column_names:
            names.append(match.group(1))
    return names


def select_scores(table: pa.Table, spec: str, where: str = "input") -> list[str]:
    """`--score` to fitted score keys: `rm_<name>` per reward model, or `pref_mean`."""
    names = rm_names(table)
    if spec == "all":
        if names:
            return [f"rm_{n}" for n in names]
        spec = "pref_mean"
    if spec == "pref_mean":
        if "pref_mean" not in table.column_names:
            raise InputError(f"{where}: no rm_<name>_chosen/_rejected or pref_mean columns "
                             f"(run `prefcli vote` first)")
        return ["pref_mean"]
    if spec.startswith("rm_") and spec[3:] in names:
        return [spec]
    known = ", ".join([f"rm_{n}" for n in names] + (["pref_mean"] if "pref_mean" in table.column_names else []))
    raise InputError(f"--score: '{spec}' is not in {where} (expected all, pref_mean or rm_<name>; "
                     f"found: {known or 'no scores; run `prefcli vote` first'})")


def _scores(table: pa.Table, column: str, where: str = "input") -> np.ndarray:
    values = table.column(column)
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise InputError(f"{where}: column '{column}' has type {values.type}, expected a number")
    out = values.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        raise InputError(f"{where}: row {int(np.flatnonzero(bad)[0])}: column '{column}' is null or not finite")
    return out


# --------------------------------------------------------------------------- curves f(x) and their JSON form

def fit_curve(x: np.ndarray, y: np.ndarray, *, method: str = "isotonic", n_knots: int = N_KNOTS) -> dict[str, Any]:
    """Fit y ~ f(x) on pooled points with a library model; returns the JSON form `eval_curve` evaluates.

    isotonic: sklearn IsotonicRegression, direction from the data (monotone), clipped outside the data
    (flat for very long responses). spline: SplineTransformer + RidgeCV, constant outside the data.
    """
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(increasing="auto", out_of_bounds="clip").fit(x, y)
        return {"kind": "isotonic", "increasing": bool(iso.increasing_),
                "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    if method == "spline":
        spline = _spline(x, n_knots)
        return _spline_curve(spline, _ridge(spline.transform(x[:, None]), y), x)
    raise InputError(f"--method: expected one of {', '.join(METHODS)}, got '{method}'")


def fit_pair_curve(x_chosen: np.ndarray, x_rejected: np.ndarray, margin: np.ndarray,
                   n_knots: int = N_KNOTS) -> dict[str, Any]:
    """Fit margin ~ f(x_chosen) - f(x_rejected) + c: spline basis differences + RidgeCV with an intercept.

    Within a pair the prompt is shared, so prompt effects cancel; the intercept c takes the average
    quality gap of the labels, which therefore is not blamed on length (a pooled fit over chosen and
    rejected responses would attribute part of it to length whenever chosen responses are longer).
    """
    spline = _spline(np.concatenate([x_chosen, x_rejected]), n_knots)
    basis = spline.transform(x_chosen[:, None]) - spline.transform(x_rejected[:, None])
    ridge = _ridge(basis, margin)
    curve = _spline_curve(spline, ridge, np.concatenate([x_chosen, x_rejected]))
    curve.update(intercept=0.0, label_margin=float(ridge.intercept_))
    return curve


def _spline(x: np.ndarray, n_knots: int):
    from sklearn.preprocessing import SplineTransformer

    return SplineTransformer(n_knots=n_knots, degree=3, knots="quantile", extrapolation="constant").fit(x[:, None])


def _ridge(features: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=RIDGE_ALPHAS).fit(features, y)


def _spline_curve(spline, ridge, x: np.ndarray) -> dict[str, Any]:
    return {"kind": "spline", "degree": 3, "knots": spline.bsplines_[0].t.tolist(), "coefs": ridge.coef_.tolist(),
            "intercept": float(ridge.intercept_), "alpha": float(ridge.alpha_),
            "x_min": float(x.min()), "x_max": float(x.max())}


def eval_curve(curve: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """f(x) from the JSON form: the one evaluation used at fit time and by `apply`, so both agree exactly."""
    if curve["kind"] == "zero":
        return np.zeros(len(x))
    if curve["kind"] == "isotonic":
        xs, ys = np.asarray(curve["x"], np.float64), np.asarray(curve["y"], np.float64)
        return np.interp(np.clip(x, xs[0], xs[-1]), xs, ys)
    if curve["kind"] == "spline":
        from scipy.interpolate import BSpline

        spline = BSpline(np.asarray(curve["knots"], np.float64), np.asarray(curve["coefs"], np.float64),
                         int(curve["degree"]), extrapolate=False)
        return spline(np.clip(x, curve["x_min"], curve["x_max"])) + curve["intercept"]
    raise InputError(f"length model: unknown curve kind '{curve['kind']}'")


# --------------------------------------------------------------------------- residual step on dlen

def rank_dlen(residual: dict[str, Any], len_chosen: np.ndarray, len_rejected: np.ndarray) -> np.ndarray:
    """u(dlen) = sign(dlen) * F(|dlen|), F the fit-time CDF of |dlen| (stored quantiles): odd, bounded,
    0 at equal length, and monotone in dlen like the ranks that Spearman rho uses."""
    d = np.asarray(len_chosen, np.float64) - np.asarray(len_rejected, np.float64)
    q = np.asarray(residual["abs_dlen_quantiles"], np.float64)
    return np.sign(d) * np.interp(np.abs(d), q, np.linspace(0.0, 1.0, len(q)))


def _accuracy_gap(margin: np.ndarray, d: np.ndarray) -> float | None:
    """Accuracy on chosen-longer minus on chosen-shorter pairs (ties = a coin); None without both kinds."""
    longer, shorter = d > 0, d < 0
    if not longer.any() or not shorter.any():
        return None
    correct = (margin > 0) + 0.5 * (margin == 0)
    return float(correct[longer].mean() - correct[shorter].mean())


def average_ranks(x: np.ndarray) -> np.ndarray:
    """scipy's rankdata(x) (ties share their mean rank), from numpy's unstable argsort: ties get the same
    rank whatever their order, and the SIMD quicksort is about 6x faster than the stable sort scipy uses."""
    x = np.asarray(x, np.float64)
    if np.isnan(x).any():
        from scipy.stats import rankdata

        return rankdata(x)
    order = np.argsort(x)
    ordered = x[order]
    ranks = np.empty(len(x), np.float64)
    new_value = np.empty(len(x), bool)
    new_value[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new_value[1:])
    if new_value.all():
        ranks[order] = np.arange(1, len(x) + 1, dtype=np.float64)
        return ranks
    starts = np.flatnonzero(np.append(new_value, True))
    group = np.cumsum(new_value) - 1
    ranks[order] = 0.5 * (starts[group] + starts[group + 1] + 1)
    return ranks


def _centred_ranks(x: np.ndarray) -> np.ndarray:
    r = average_ranks(x)
    return r - r.mean()


def _root(side, start: float, steps: int = 40) -> float:
    """Smallest b >= 0 (to bisection precision) where side(b) turns False; side(0) is True."""
    lo, hi = 0.0, start or 1.0
    for _ in range(60):
        if not side(hi):
            break
        lo, hi = hi, 2 * hi
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if side(mid) else (lo, mid)
    return hi


def fit_residual(margin: np.ndarray, len_chosen: np.ndarray, len_rejected: np.ndarray, *,
                 balance: bool = False) -> dict[str, Any]:
    """The step after the fit. rank: beta with Spearman rho(margin - beta * u(dlen), dlen) = 0 on the fitted
    pairs (bisection; rho falls as beta grows), so whatever rank correlation the fit left (a curve that misses
    the shape, heteroscedastic margins, extreme pairs) goes along u. balance: also a shift s * sign(dlen),
    so that accuracy on chosen-longer and chosen-shorter pairs is equal, with beta re-solved for each s."""
    d = np.asarray(len_chosen, np.float64) - np.asarray(len_rejected, np.float64)
    residual: dict[str, Any] = {"kind": "rank_dlen",
                                "abs_dlen_quantiles": np.quantile(np.abs(d), np.linspace(0, 1, N_QUANTILES)).tolist(),
                                "beta": 0.0, "shift": 0.0, "rho_before": _rho(margin, d),
                                "gap_before": _accuracy_gap(margin, d)}
    u, sign_d = rank_dlen(residual, len_chosen, len_rejected), np.sign(d)
    rank_d = _centred_ranks(d)

    def rho(m: np.ndarray) -> float:  # Spearman rho with dlen, without scipy's per-call overhead
        r = _centred_ranks(m)
        norm = math.sqrt(float(r @ r) * float(rank_d @ rank_d))
        return float(r @ rank_d) / norm if norm else 0.0

    def beta_for(m: np.ndarray) -> float:
        if np.ptp(u) == 0 or not rho(m):
            return 0.0
        sign = math.copysign(1.0, rho(m))

        def same_side(beta: float) -> bool:
            return rho(m - sign * beta * u) * sign > 0

        return sign * _root(same_side, float(np.std(m) / np.std(u)))

    def debiased(shift: float) -> np.ndarray:
        m = margin - shift * sign_d
        return m - beta_for(m) * u

    shift = 0.0
    gap = _accuracy_gap(debiased(0.0), d) if balance else None
    if gap:
        direction = math.copysign(1.0, gap)

        def gap_same_side(s: float) -> bool:
            after = _accuracy_gap(debiased(direction * s), d)
            return after is not None and after * direction > 0

        shift = direction * _root(gap_same_side, 0.1 * float(np.std(margin)), steps=30)
    residual["shift"] = shift
    residual["beta"] = beta_for(margin - shift * sign_d)
    return residual


def residual_correction(curve: dict[str, Any], len_chosen: np.ndarray, len_rejected: np.ndarray) -> np.ndarray:
    """The residual step's share of a pair's margin correction (0 without one)."""
    residual = curve.get("residual")
    if not residual:
        return np.zeros(len(len_chosen))
    d = np.asarray(len_chosen, np.float64) - np.asarray(len_rejected, np.float64)
    return residual["beta"] * rank_dlen(residual, len_chosen, len_rejected) + residual["shift"] * np.sign(d)


# --------------------------------------------------------------------------- fit / apply

def fit(table: pa.Table, scores: Sequence[str], lengths: tuple[np.ndarray, np.ndarray], *,
        length_spec: str, method: str = "dlen", residual: str = "balanced",
        thresholds: BucketThresholds | None = None, glm: dict | None = None,
        where: str = "input") -> dict[str, Any]:
    """Fit f(length) -> reward for each score key; returns the JSON-ready model for `apply`.

    x = log(1 + length). `rm_<name>`: paired fits f on the pair margins (see `fit_pair_curve`); isotonic
    and spline fit the pooled (x, score) points of chosen and rejected responses. The offset is mean f
    over the fitted responses, so debiased scores keep the reward model's level. `pref_mean` is a margin:
    paired fits it like an RM margin; isotonic/spline fit it against the log length ratio and read
    the preference off at ratio 1 (offset = f(0)). dlen fits no curve (f = 0): the residual step alone.

    residual (see `fit_residual`), on each margin after the curve: `balanced` (default) makes rho(margin, dlen)
    0 and the chosen-longer/-shorter accuracy gap 0 on the fitted pairs; `rank` only the first; `none`
    stops after the curve.
    """
    if method not in METHODS:
        raise InputError(f"--method: expected one of {', '.join(METHODS)}, got '{method}'")
    if residual not in RESIDUALS:
        raise InputError(f"--residual: expected one of {', '.join(RESIDUALS)}, got '{residual}'")
    if table.num_rows < MIN_PAIRS:
        raise InputError(f"{where}: {table.num_rows} pairs; fitting needs at least {MIN_PAIRS}")
    len_c, len_r = lengths
    x_c, x_r = np.log1p(len_c), np.log1p(len_r)
    curves: dict[str, Any] = {}
    for key in scores:
        if key == "pref_mean":
            margin = _scores(table, "pref_mean", where)
        else:
            chosen, rejected = _scores(table, f"{key}_chosen", where), _scores(table, f"{key}_rejected", where)
            margin = chosen - rejected
        if method == "paired":
            curve = fit_pair_curve(x_c, x_r, margin)
            curve.update(x_is="log1p_length")
        elif method == "dlen":
            curve = {"kind": "zero", "x_is": "log1p_length"}
        elif key == "pref_mean":
            curve = fit_curve(log_ratio(len_c, len_r), margin, method=method)
            curve.update(x_is="log_length_ratio", offset=float(eval_curve(curve, np.zeros(1))[0]))
        else:
            curve = fit_curve(np.concatenate([x_c, x_r]), np.concatenate([chosen, rejected]), method=method)
            curve.update(x_is="log1p_length")
        if curve["x_is"] == "log1p_length":
            curve["offset"] = float(eval_curve(curve, np.concatenate([x_c, x_r])).mean())
        if residual != "none":
            curve["residual"] = fit_residual(margin - correction(curve, len_c, len_r, margin=True), len_c, len_r,
                                             balance=residual == "balanced")
        curves[key] = curve
    return {"format": MODEL_FORMAT, "length": length_spec, "method": method, "residual": residual,
            "rows": table.num_rows,
            "scores": curves, "pref_thresholds": asdict(thresholds) if thresholds else None, "glm": glm}


def correction(curve: dict[str, Any], len_chosen: np.ndarray, len_rejected: np.ndarray, *,
               margin: bool = False) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
    """What debiasing subtracts: per response f(x) - offset, or for a margin column the margin's share.
    The residual step's pair correction is split half to each response (chosen -, rejected +)."""
    extra = residual_correction(curve, len_chosen, len_rejected)
    if curve["x_is"] == "log_length_ratio":
        return eval_curve(curve, log_ratio(len_chosen, len_rejected)) - curve["offset"] + extra
    on_chosen = eval_curve(curve, np.log1p(len_chosen)) - curve["offset"]
    on_rejected = eval_curve(curve, np.log1p(len_rejected)) - curve["offset"]
    if margin:
        return on_chosen - on_rejected + extra
    return on_chosen + 0.5 * extra, on_rejected - 0.5 * extra


def check_model(model: Any, where: str) -> dict[str, Any]:
    """A loaded model file, checked enough that `apply` fails with one line rather than a traceback."""
    if not isinstance(model, dict) or model.get("format") != MODEL_FORMAT:
        raise InputError(f"{where}: not a prefcli length-bias model (expected \"format\": \"{MODEL_FORMAT}\")")
    curves = model.get("scores")
    if not isinstance(curves, dict) or not curves or not isinstance(model.get("length"), str):
        raise InputError(f"{where}: model has no fitted scores or no length measure")
    for key, curve in curves.items():
        need = {"zero": (), "isotonic": ("x", "y"), "spline": ("knots", "coefs", "degree", "intercept", "x_min", "x_max")}
        if not isinstance(curve, dict) or curve.get("kind") not in need or "offset" not in curve \
                or curve.get("x_is") not in ("log1p_length", "log_length_ratio") \
                or (key != "pref_mean" and curve["x_is"] != "log1p_length") \
                or any(k not in curve for k in need[curve["kind"]]) or not _residual_ok(curve.get("residual")):
            raise InputError(f"{where}: scores.{key}: malformed curve")
    thresholds = model.get("pref_thresholds")
    if thresholds is not None:
        if not isinstance(thresholds, dict) or set(thresholds) - set(asdict(BucketThresholds())):
            raise InputError(f"{where}: pref_thresholds: expected an object with keys "
                             f"{', '.join(asdict(BucketThresholds()))}")
        BucketThresholds(**thresholds)
    return model


def _residual_ok(residual: Any) -> bool:
    if residual is None:
        return True
    if not isinstance(residual, dict):
        return False
    q = residual.get("abs_dlen_quantiles")
    return residual.get("kind") == "rank_dlen" \
        and all(isinstance(residual.get(k), (int, float)) for k in ("beta", "shift")) \
        and isinstance(q, list) and len(q) >= 2 and all(isinstance(v, (int, float)) for v in q) \
        and all(b >= a for a, b in zip(q, q[1:]))


def apply_inputs(table: pa.Table, lengths: tuple[np.ndarray, np.ndarray]) -> pa.Table:
    """What `apply` and `diagnose` read of `table`, with its lengths: scores and the source, no texts. `apply`
    on these columns of the whole input gives the scale that batch-wise `apply(..., scale=)` runs need."""
    keep = ["source"] + [f"rm_{n}_{side}" for n in rm_names(table) for side in ("chosen", "rejected")]
    keep += ["pref_mean"] if "pref_mean" in table.column_names else []
    columns = {name: table.column(name) for name in keep if name in table.column_names}
    return pa.table({**columns, "len_chosen": pa.array(lengths[0]), "len_rejected": pa.array(lengths[1])})


def apply(table: pa.Table, model: dict[str, Any], lengths: tuple[np.ndarray, np.ndarray], *,
          where: str = "input", scale: np.ndarray | None = None) -> StageResult:
    """Add the debiased `len_` columns for every score in `model` (see the module docstring).

    `len_pref_*` are vote's aggregates (`aggregate_margins`) over every RM in the table, with the fitted
    RMs' debiased margins in place of their originals. Voters weigh equally here. The per-RM scale is the
    table's own, or `scale` (the whole input's, for one batch of it); it is returned as artefact "scale"."""
    len_c, len_r = lengths
    columns: dict[str, Any] = {"len_chosen": pa.array(len_c), "len_rejected": pa.array(len_r)}
    debiased_margins: dict[str, np.ndarray] = {}
    for key, curve in model["scores"].items():
        if key == "pref_mean":
            if "pref_mean" not in table.column_names:
                raise InputError(f"{where}: missing column 'pref_mean' (the model debiases it; run `prefcli vote`)")
            debiased = _scores(table, "pref_mean", where) - correction(curve, len_c, len_r, margin=True)
            columns["len_pref_mean"] = pa.array(debiased)
            continue
        for side in ("chosen", "rejected"):
            if f"{key}_{side}" not in table.column_names:
                raise InputError(f"{where}: missing column '{key}_{side}' (the model debiases {key}; "
                                 f"run `prefcli vote`)")
        on_chosen, on_rejected = correction(curve, len_c, len_r)
        chosen = _scores(table, f"{key}_chosen", where) - on_chosen
        rejected = _scores(table, f"{key}_rejected", where) - on_rejected
        debiased_margins[key[3:]] = chosen - rejected
        columns[f"len_{key}_chosen"] = pa.array(chosen)
        columns[f"len_{key}_rejected"] = pa.array(rejected)
    if debiased_margins:
        names = rm_names(table)
        raw = np.column_stack([debiased_margins[n] if n in debiased_margins
                               else _scores(table, f"rm_{n}_chosen", where) - _scores(table, f"rm_{n}_rejected", where)
                               for n in names])
        if scale is None:
            scale = robust_scale(raw)  # vote's per-RM scale, so len_rm_<name>_margin reads like rm_<name>_margin
        z = raw / scale
        for j, name in enumerate(names):
            if name in debiased_margins:
                columns[f"len_rm_{name}_margin"] = pa.array(z[:, j])
        thresholds = BucketThresholds(**model["pref_thresholds"]) if model.get("pref_thresholds") else None
        columns.update(prefixed_columns(aggregate_margins(z, thresholds, normalise=False), "len_pref_"))
    out = with_stage_columns(table, STAGE, columns)
    return StageResult(out=out, stats={"rows_in": table.num_rows, "rows_out": out.num_rows,
                                       "scores_debiased": list(model["scores"])}, artifacts={"scale": scale})


# --------------------------------------------------------------------------- diagnose

def _rho(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if len(mask) else None


def label_bias(len_c: np.ndarray, len_r: np.ndarray) -> dict[str, Any]:
    """P(chosen longer) over pairs of unequal length, and the 'longer wins' rule's accuracy (ties = a coin)."""
    longer, shorter = len_c > len_r, len_c < len_r
    unequal = longer | shorter
    n = len(len_c)
    return {"pairs": n, "equal_length": int((~unequal).sum()),
            "p_chosen_longer": _share(longer[unequal]),
            "longer_wins_accuracy": float((longer.sum() + 0.5 * (~unequal).sum()) / n) if n else None}


def score_bias(scores_c: np.ndarray, scores_r: np.ndarray, len_c: np.ndarray, len_r: np.ndarray) -> dict[str, Any]:
    """A reward model's length bias and accuracy against the labels, overall and on chosen-longer/-shorter pairs."""
    margin = scores_c - scores_r
    correct = (margin > 0) + 0.5 * (margin == 0)
    longer, shorter = len_c > len_r, len_c < len_r
    return {"rho_score_length": _rho(np.concatenate([scores_c, scores_r]), np.concatenate([len_c, len_r])),
            "rho_margin_dlen": _rho(margin, len_c - len_r),
            "accuracy": _share(correct),
            "accuracy_chosen_longer": _share(correct[longer]),
            "accuracy_chosen_shorter": _share(correct[shorter])}


def diagnose(table: pa.Table, lengths: tuple[np.ndarray, np.ndarray], *,
             edges: Sequence[float] = DEFAULT_RATIO_EDGES,
             debiased: pa.Table | None = None) -> dict[str, Any]:
    """Label bias overall, per source and per length-ratio bucket; each RM's bias before (and after) debiasing."""
    len_c, len_r = lengths
    out: dict[str, Any] = {"overall": label_bias(len_c, len_r)}
    sources = table.column("source").to_numpy(zero_copy_only=False)
    out["by_source"] = {s: label_bias(len_c[sources == s], len_r[sources == s]) for s in sorted(set(sources))}
    buckets = length_buckets(len_c, len_r, edges)
    out["by_bucket"] = {label: label_bias(len_c[buckets == i], len_r[buckets == i])
                        for i, label in enumerate(bucket_labels(edges)) if (buckets == i).any()}
    scores: dict[str, Any] = {}
    for name in rm_names(table):
        key = f"rm_{name}"
        scores[key] = score_bias(_scores(table, f"{key}_chosen"), _scores(table, f"{key}_rejected"), len_c, len_r)
        if debiased is not None and f"len_{key}_chosen" in debiased.column_names:
            after = score_bias(_scores(debiased, f"len_{key}_chosen"), _scores(debiased, f"len_{key}_rejected"),
                               len_c, len_r)
            scores[key].update({f"{k}_debiased": v for k, v in after.items()})
    if "pref_mean" in table.column_names:
        pref = _scores(table, "pref_mean")
        scores["pref_mean"] = {"rho_margin_dlen": _rho(pref, len_c - len_r),
                               "accuracy": _share((pref > 0) + 0.5 * (pref == 0))}
        if debiased is not None and "len_pref_mean" in debiased.column_names:
            after = _scores(debiased, "len_pref_mean")
            scores["pref_mean"].update(rho_margin_dlen_debiased=_rho(after, len_c - len_r),
                                       accuracy_debiased=_share((after > 0) + 0.5 * (after == 0)))
    out["scores"] = scores
    return out


# --------------------------------------------------------------------------- AlpacaEval-style GLM

def length_glm(len_c: np.ndarray, len_r: np.ndarray, *, groups_chosen: Sequence[str] | None = None,
               groups_rejected: Sequence[str] | None = None, baseline: str | None = None) -> dict[str, Any]:
    """Length-controlled GLM on the labels (AlpacaEval LC): logit P(a beats b) = theta_a - theta_b
    + phi * tanh(dlen / sigma), fitted on both orientations of every pair (so no intercept is needed).

    Returns phi, sigma and P(a response 1 sigma longer wins | equal quality); with groups (e.g. the
    generating model of each side), each group's raw win rate against `baseline` and the length-controlled
    one, read off at dlen = 0: sigmoid(theta_g - theta_baseline). Instruction difficulty terms are omitted.
    """
    from sklearn.linear_model import LogisticRegression

    if len(len_c) < MIN_PAIRS:
        raise InputError(f"length GLM: {len(len_c)} pairs; it needs at least {MIN_PAIRS}")
    dlen = len_c - len_r
    sigma = float(np.std(dlen)) or 1.0
    features = [np.tanh(dlen / sigma)[:, None]]
    levels: list[str] = []
    if groups_chosen is not None:
        gc, gr = np.asarray(groups_chosen, dtype=object), np.asarray(groups_rejected, dtype=object)
        levels = sorted(set(gc) | set(gr))
        index = {g: i for i, g in enumerate(levels)}
        design = np.zeros((len(dlen), len(levels)))
        rows = np.arange(len(dlen))
        design[rows, [index[g] for g in gc]] += 1.0
        design[rows, [index[g] for g in gr]] -= 1.0
        features.append(design)
    x = np.hstack(features)
    both = np.vstack([x, -x])
    y = np.concatenate([np.ones(len(x)), np.zeros(len(x))])
    glm = LogisticRegression(fit_intercept=False, C=1.0, max_iter=1000).fit(both, y)
    phi = float(glm.coef_[0, 0])
    result: dict[str, Any] = {"pairs": int(len(dlen)), "sigma": sigma, "length_coef": phi,
                              "p_longer_wins_at_1sigma": float(1 / (1 + math.exp(-phi * math.tanh(1.0))))}
    if levels:
        theta = dict(zip(levels, glm.coef_[0, 1:].tolist()))
        counts = {g: int((gc == g).sum() + (gr == g).sum()) for g in levels}
        base = baseline or max(levels, key=lambda g: (counts[g], g))
        rows_out = []
        for g in levels:
            if g == base:
                continue
            wins = int(((gc == g) & (gr == base)).sum())
            losses = int(((gr == g) & (gc == base)).sum())
            if wins + losses == 0:
                continue
            rows_out.append({"group": g, "pairs": wins + losses, "win_rate": wins / (wins + losses),
                             "lc_win_rate": float(1 / (1 + math.exp(-(theta[g] - theta[base]))))})
        result.update(baseline=base, groups=rows_out)
    return result


# --------------------------------------------------------------------------- rebalance

def rebalance(table: pa.Table, lengths: tuple[np.ndarray, np.ndarray], *, mode: str = "subsample",
              edges: Sequence[float] = DEFAULT_RATIO_EDGES, seed: int = 0) -> StageResult:
    """Make P(chosen longer) ~ 0.5 within each length-ratio bucket.

    subsample: in each bucket keep equally many chosen-longer and chosen-shorter pairs (a seeded random
    choice from the larger side); the surplus is set aside with a reason. weight: keep every row and add
    `len_weight` so that both sides weigh half the bucket (weights sum to the bucket's size).
    Equal-length pairs, and buckets with only one side, are kept unchanged (weight 1).
    """
    if mode not in ("subsample", "weight"):
        raise InputError(f"--mode: expected subsample or weight, got '{mode}'")
    len_c, len_r = lengths
    buckets = length_buckets(len_c, len_r, edges)
    labels = np.asarray(bucket_labels(edges), dtype=object)
    longer, shorter = len_c > len_r, len_c < len_r
    rng = np.random.default_rng(seed)
    keep = np.ones(len(len_c), dtype=bool)
    weight = np.ones(len(len_c), dtype=np.float64)
    reasons = np.empty(len(len_c), dtype=object)
    unbalanced = []
    for b in range(1, len(labels)):
        in_b = buckets == b
        rows_longer, rows_shorter = np.flatnonzero(in_b & longer), np.flatnonzero(in_b & shorter)
        if not len(rows_longer) or not len(rows_shorter):
            if len(rows_longer) or len(rows_shorter):
                unbalanced.append(str(labels[b]))
            continue
        total = len(rows_longer) + len(rows_shorter)
        weight[rows_longer] = total / (2 * len(rows_longer))
        weight[rows_shorter] = total / (2 * len(rows_shorter))
        big, side = (rows_longer, "longer") if len(rows_longer) > len(rows_shorter) else (rows_shorter, "shorter")
        surplus = rng.choice(big, size=abs(len(rows_longer) - len(rows_shorter)), replace=False)
        keep[surplus] = False
        reasons[surplus] = f"length rebalance: surplus chosen-{side} pair in length-ratio bucket {labels[b]}"
    columns = {"len_chosen": pa.array(len_c), "len_rejected": pa.array(len_r),
               "len_bucket": pa.array(labels[buckets].tolist(), pa.large_string())}
    if mode == "weight":
        columns["len_weight"] = pa.array(weight)
        keep[:] = True
    marked = with_stage_columns(table, STAGE, columns)
    kept_idx, aside_idx = np.flatnonzero(keep), np.flatnonzero(~keep)
    out = marked.take(pa.array(kept_idx))
    set_aside = mark_set_aside(marked.take(pa.array(aside_idx)), reasons[aside_idx].tolist(), STAGE) \
        if len(aside_idx) else None
    after = label_bias(len_c[keep], len_r[keep])
    stats = {"rows_in": table.num_rows, "rows_out": out.num_rows, "rows_set_aside": len(aside_idx), "mode": mode,
             "p_chosen_longer_before": label_bias(len_c, len_r)["p_chosen_longer"],
             "p_chosen_longer_after": after["p_chosen_longer"], "unbalanceable_buckets": unbalanced}
    if mode == "weight":
        unequal = longer | shorter
        stats["p_chosen_longer_after"] = float(weight[longer].sum() / weight[unequal].sum()) if unequal.any() else None
    return StageResult(out=out, set_aside=set_aside, stats=stats)


def meta_groups(table: pa.Table, key_chosen: str, key_rejected: str, where: str = "input") -> tuple[list, list]:
    """Group labels of each side (e.g. the generating model) from keys of the JSON `meta` column."""
    import json

    chosen, rejected = [], []
    for row, text in enumerate(table.column("meta").to_pylist()):
        try:
            meta = json.loads(text) if text else {}
        except json.JSONDecodeError:
            raise InputError(f"{where}: row {row}: column 'meta' is not JSON") from None
        if not isinstance(meta, dict) or key_chosen not in meta or key_rejected not in meta:
            raise InputError(f"{where}: row {row}: column 'meta' lacks '{key_chosen}' or '{key_rejected}' "
                             f"(--glm-groups)")
        chosen.append(str(meta[key_chosen]))
        rejected.append(str(meta[key_rejected]))
    return chosen, rejected


# --------------------------------------------------------------------------- what the plot shows

@dataclass
class ScorePanel:
    """One fitted score against length: a sample of its points (and their debiased values), the fit."""

    score: str
    xlabel: str
    x: np.ndarray
    y: np.ndarray
    debiased: np.ndarray | None
    fit: tuple[np.ndarray, np.ndarray, str] | None  # (grid, curve, label), None when nothing is drawn
    title: str


@dataclass
class PlotData:
    """What `prefcli length-bias report --png` draws (prefcli.plots.length_bias_figure)."""

    panels: list[ScorePanel]
    bucket_labels: list[str]
    p_chosen_longer: list[float]  # per length-ratio bucket; 0.0 where a bucket has no unequal pair


def plot_data(table: pa.Table, model: dict[str, Any] | None, debiased: pa.Table | None,
              lengths: tuple[np.ndarray, np.ndarray], *, edges: Sequence[float] = DEFAULT_RATIO_EDGES,
              seed: int = 0, max_points: int = 4000) -> PlotData:
    """Per fitted score, score vs length with the fit and the debiased cloud (a seeded sample of at most
    `max_points` points); then P(chosen longer) per length-ratio bucket."""
    len_c, len_r = lengths
    keys = list(model["scores"]) if model else []
    rng = np.random.default_rng(seed)
    panels = []
    for key in keys:
        curve = model["scores"][key]
        if key == "pref_mean":
            x, y = log_ratio(len_c, len_r), _scores(table, "pref_mean")
            after = _scores(debiased, "len_pref_mean") if debiased is not None else None
            xlabel = "log length ratio, chosen / rejected"
        else:
            x = np.log1p(np.concatenate([len_c, len_r]))
            y = np.concatenate([_scores(table, f"{key}_chosen"), _scores(table, f"{key}_rejected")])
            after = None if debiased is None else np.concatenate(
                [_scores(debiased, f"len_{key}_chosen"), _scores(debiased, f"len_{key}_rejected")])
            xlabel = f"log(1 + length) [{model['length']}]"
        pick = rng.choice(len(x), size=min(max_points, len(x)), replace=False)
        fit = None
        if curve["kind"] != "zero" and (key != "pref_mean" or curve["x_is"] == "log_length_ratio"):
            grid = np.linspace(x.min(), x.max(), 300)
            level = y.mean() - curve["offset"] if curve["x_is"] == "log1p_length" else 0.0  # overlay the cloud
            fit = (grid, eval_curve(curve, grid) + level, f"fit f ({curve['kind']})")
        rho_after = "" if after is None else f" -> {_signed(_rho(after, x))}"
        panels.append(ScorePanel(key, xlabel, x[pick], y[pick], None if after is None else after[pick], fit,
                                 f"{key}: Spearman rho(score, x) {_signed(_rho(y, x))}{rho_after}"))
    buckets = length_buckets(len_c, len_r, edges)
    labels = bucket_labels(edges)[1:]
    shares = [label_bias(len_c[buckets == i + 1], len_r[buckets == i + 1])["p_chosen_longer"]
              for i in range(len(labels))]
    return PlotData(panels, labels, [s if s is not None else 0.0 for s in shares])
