"""The `length-bias` stages (fit, apply, report, rebalance) on the Stage contract.

The pure functions live in `prefcli.stages.length_bias`; this module holds their options (`Params`), what each
stage reads and writes, and the glue the CLI used to hold (fit-on-the-fly for `report`, the GLM groups, the
summary tables and the rho warnings).
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import field_validator

from .. import io
from ..errors import InputError
from ..options import parse_key_values
from ..result import StageResult
from ..stage import SET_ASIDE, Context, Params, Read, Resources, Stage, Write, option, register
from . import length_bias as lb

LENGTH_HELP = "Length measure: chars, words or tokens:<local tokenizer dir>."
RATIO_EDGES_HELP = "Length-ratio bucket edges (longer/shorter), e.g. 1.1,1.25,1.5,2,3."
GLM_GROUPS_HELP = ("KEY_CHOSEN,KEY_REJECTED: meta keys naming each side's group (e.g. generator) for the "
                   "length-controlled GLM's per-group win rates.")
# Where set-aside rows go when the kept rows go to stdout (the name the command has always used).
STDOUT_REJECTS = "length_bias.rejects.parquet"


def load_model(path: str) -> dict[str, Any]:
    """A model JSON written by `length-bias fit`, checked (the `--model` side read)."""
    return lb.check_model(io.read_json(path), path)


def glm(table: pa.Table, lengths, groups: str | None, where: str) -> dict[str, Any]:
    """The length GLM on the labels, per group of `--glm-groups KEY_CHOSEN,KEY_REJECTED` when given."""
    if not groups:
        return lb.length_glm(*lengths)
    keys = [k.strip() for k in groups.split(",")]
    if len(keys) != 2 or not all(keys):
        raise InputError(f"--glm-groups: expected KEY_CHOSEN,KEY_REJECTED, got '{groups}'")
    chosen, rejected = lb.meta_groups(table, *keys, where=where)
    return lb.length_glm(*lengths, groups_chosen=chosen, groups_rejected=rejected)


def summary_tables(diag: dict[str, Any], glm_result: dict[str, Any] | None) -> list:
    from ..report import Table

    tables = [Table("by_bucket", "label length bias by length-ratio bucket", ["bucket", "pairs", "p_chosen_longer"],
                    [[b, v["pairs"], v["p_chosen_longer"]] for b, v in diag["by_bucket"].items()])]
    if len(diag["by_source"]) > 1:
        tables.append(Table("by_source", "label length bias by source",
                            ["source", "pairs", "p_chosen_longer", "longer_wins_accuracy"],
                            [[s, v["pairs"], v["p_chosen_longer"], v["longer_wins_accuracy"]]
                             for s, v in diag["by_source"].items()]))
    if diag["scores"]:
        cols = ["rho_score_length", "rho_margin_dlen", "accuracy", "accuracy_chosen_longer", "accuracy_chosen_shorter"]
        rows = []
        for key, v in diag["scores"].items():
            rows.append([key, "before", *[v.get(c) for c in cols]])
            if any(k.endswith("_debiased") for k in v):
                rows.append([key, "debiased", *[v.get(f"{c}_debiased") for c in cols]])
        tables.append(Table("scores", "reward-model length bias", ["score", "when", *cols], rows))
    if glm_result and glm_result.get("groups"):
        tables.append(Table("glm_groups", f"length-controlled win rate vs {glm_result['baseline']} (GLM at dlen=0)",
                            ["group", "pairs", "win_rate", "lc_win_rate"],
                            [[g["group"], g["pairs"], g["win_rate"], g["lc_win_rate"]]
                             for g in glm_result["groups"]]))
    return tables


def warn_rho(ctx: Context, diag: dict[str, Any]) -> None:
    """One warning per debiased score whose |rho(margin, dlen)| after debiasing is above the target."""
    for key, v in diag["scores"].items():
        after = v.get("rho_margin_dlen_debiased")
        if after is not None and abs(after) > lb.RHO_TARGET:
            ctx.warn(f"{key}: rho(margin, dlen) {v['rho_margin_dlen']:+.3f} before, {after:+.3f} after debiasing "
                     f"(above the {lb.RHO_TARGET} target: refit on pairs like these"
                     f"{', with --score pref_mean to debias the mean itself' if key == 'pref_mean' else ''})")


def rho_stats(diag: dict[str, Any]) -> dict[str, Any]:
    v = diag["scores"].get("pref_mean", {})
    if "rho_margin_dlen_debiased" not in v:
        return {}
    return {"rho_before": v["rho_margin_dlen"], "rho_after": v["rho_margin_dlen_debiased"]}


def headline(diag: dict[str, Any], glm_result: dict[str, Any] | None) -> dict[str, Any]:
    stats = {"pairs": diag["overall"]["pairs"], "p_chosen_longer": diag["overall"]["p_chosen_longer"],
             "longer_wins_accuracy": diag["overall"]["longer_wins_accuracy"]}
    if glm_result:
        stats.update(glm_length_coef=glm_result["length_coef"],
                     glm_p_longer_wins_at_1sigma=glm_result["p_longer_wins_at_1sigma"])
    return stats


class _LengthStage(Stage):
    """What the length-bias stages share: the input's name in messages and the length measure, built once."""

    def validate(self, call) -> None:
        super().validate(call)
        self._where = call.inputs[0] if call.inputs else "input"

    @property
    def where(self) -> str:
        return getattr(self, "_where", "input")

    def measure(self, spec: str):
        from ..models.length import LengthMeasure

        cached = getattr(self, "_measure", None)
        if cached is None or cached.spec != spec:
            cached = self._measure = LengthMeasure(spec)
        return cached


def _stdout_rejects(call) -> None:
    """Kept rows on stdout: set-aside rows go to length_bias.rejects.parquet unless named."""
    if call.output == io.STDIO and not call.writes.get(SET_ASIDE):
        call.writes[SET_ASIDE] = STDOUT_REJECTS


# --------------------------------------------------------------------------- fit

SAMPLE_STREAM = 29  # the --sample draw's random stream

class FitParams(Params):
    score: str = option("all", "all, pref_mean or rm_<name>.")
    length: str = option("chars", LENGTH_HELP)
    method: Literal["dlen", "paired", "isotonic", "spline"] = option(
        "dlen", "dlen (default: no curve, the residual step alone), paired (spline + ridge on pair margins), "
                "isotonic (monotone, pooled responses) or spline (pooled).")
    residual: Literal["balanced", "rank", "none"] = option(
        "balanced", "Step after the curve: balanced (default: rho(margin, dlen) = 0 and equal accuracy on "
                    "chosen-longer and chosen-shorter pairs, on the fitted pairs), rank (rho only) or none.")
    thresholds: dict[str, str] | None = option(
        None, "Vote bucket thresholds for len_pref_bucket, e.g. incorrect=-0.5,strong=1.5.")
    glm_groups: str | None = option(None, GLM_GROUPS_HELP)
    sample: int | None = option(None, "Fit (and diagnose) on a seeded sample of at most this many pairs (default: "
                                      "every pair); `length-bias apply` then corrects every pair. Not with --table.",
                                low=2)

    @field_validator("thresholds", mode="before")
    @classmethod
    def _kv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_key_values(value, "--thresholds")
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value


@register
class FitStage(_LengthStage):
    """Fit f(length) -> reward per score (and the AlpacaEval-style GLM on the labels); save it as JSON."""

    name = "length-bias fit"
    Params = FitParams
    output = "file"
    output_help = "Model JSON to write (- for stdout)."
    writes = (Write("table", "--table", "Also write the input with the fit-time debiased len_ columns to this "
                                        "Parquet file."),)

    uses_seed = True

    def validate(self, call) -> None:
        super().validate(call)
        self._model_path = call.output
        if self.params.sample is not None and call.writes.get("table"):
            raise InputError("--table: not with --sample (the table would hold only the sample; run "
                             "`length-bias apply` on every pair instead)")
        if call.writes.get("table") == io.STDIO and call.ctx.report is not None:
            call.ctx.report.data_on_stdout = True  # the summary must not mix with the table

    def thresholds(self):
        from .vote import BucketThresholds

        return BucketThresholds().with_overrides(self.params.thresholds or {})

    def check(self, ctx: Context) -> None:
        self.thresholds()
        self.measure(self.params.length)

    def rows_used(self, n: int, ctx: Context):
        """--sample: a seeded sample of the pairs (sorted row indices), the same on every engine."""
        import numpy as np

        self._rows_total = n
        if self.params.sample is None or n <= self.params.sample:
            return None
        return np.sort(np.random.default_rng([ctx.seed, SAMPLE_STREAM]).choice(n, self.params.sample, replace=False))

    def run(self, table: pa.Table, ctx: Context) -> StageResult:
        p, where = self.params, self.where
        measure = self.measure(p.length)
        keys = lb.select_scores(table, p.score, where=where)
        lengths = lb.response_lengths(table, measure)
        model = lb.fit(table, keys, lengths, length_spec=measure.spec, method=p.method, residual=p.residual,
                       thresholds=self.thresholds() if p.thresholds else None, where=where)
        model["glm"] = glm_result = glm(table, lengths, p.glm_groups, where)
        debiased = lb.apply(table, model, lengths, where=where).out
        diag = lb.diagnose(table, lengths, debiased=debiased)
        warn_rho(ctx, diag)
        model["fitted_pairs"] = table.num_rows
        stats = {"model": getattr(self, "_model_path", None), "fitted_pairs": table.num_rows,
                 "rows_in": getattr(self, "_rows_total", table.num_rows), "scores": keys, "length": measure.spec,
                 "method": p.method, "residual": p.residual, **headline(diag, glm_result), **rho_stats(diag),
                 "diagnosis": diag, "glm": glm_result}
        return StageResult(out=None, stats=stats, artifacts={"model": model, "table": debiased})

    def write(self, plan, paths, result) -> None:
        if "table" in paths:  # model and table appear together or not at all
            plan.write(paths["table"], result.artifacts["table"])
        plan.write(paths["output"], result.artifacts["model"])

    @classmethod
    def report_tables(cls, stats):
        return summary_tables(stats["diagnosis"], stats.get("glm")) if "diagnosis" in stats else []


# --------------------------------------------------------------------------- apply

class ApplyParams(Params):
    pass


@register
class ApplyStage(_LengthStage):
    """Add the debiased len_ columns using a saved model (no refit: a cron refresh applies the same correction).

    Batch-wise: a first pass reads each batch's scores and lengths (`first_pass`), from which `prepare` takes the
    whole input's per-RM scale and the diagnosis; every batch is then debiased with that scale, so the output
    is the same as a whole-table run."""

    name = "length-bias apply"
    Params = ApplyParams
    resources = Resources(mode="batch", on_ray="batch tasks (map_batches), after a first pass over the scores "
                                                "for the whole input's scale and diagnosis")
    reads = (Read("model", "--model", "Model JSON written by `length-bias fit`.", load_model, required=True),)

    def validate(self, call) -> None:
        super().validate(call)
        model = call.reads.get("model")
        self._model_path = model if isinstance(model, str) else None

    def _model(self, ctx: Context) -> dict:
        model = ctx.inputs.get("model")
        if model is None:
            raise InputError("missing option '--model'")
        return model

    def _lengths(self, table: pa.Table, ctx: Context):
        return lb.response_lengths(table, self.measure(self._model(ctx)["length"]))

    def first_pass(self, table: pa.Table, ctx: Context) -> pa.Table:
        return lb.apply_inputs(table, self._lengths(table, ctx))

    def prepare(self, columns: pa.Table, ctx: Context) -> None:
        self._prepared = self._whole_input(columns, ctx)

    def start_stream(self) -> None:
        self._prepared = None

    def _whole_input(self, columns: pa.Table, ctx: Context) -> tuple[Any, dict[str, Any]]:
        """The per-RM scale and the stats (diagnosis) of the whole input, from its scores and lengths."""
        lengths = (columns.column("len_chosen").to_numpy(), columns.column("len_rejected").to_numpy())
        result = lb.apply(columns, self._model(ctx), lengths, where=self.where)
        diag = lb.diagnose(columns, lengths, debiased=result.out)
        warn_rho(ctx, diag)
        stats = {"model": getattr(self, "_model_path", None), **headline(diag, None), **rho_stats(diag),
                 "diagnosis": diag}
        return result.artifacts["scale"], stats

    def run(self, table: pa.Table, ctx: Context) -> StageResult:
        lengths = self._lengths(table, ctx)
        prepared = getattr(self, "_prepared", None)
        if prepared is None:  # the whole table at once
            prepared = self._whole_input(lb.apply_inputs(table, lengths), ctx)
        scale, stats = prepared
        result = lb.apply(table, self._model(ctx), lengths, where=self.where, scale=scale)
        result.stats = {"rows_in": table.num_rows, "rows_out": result.out.num_rows, **stats}
        result.artifacts = {}
        return result

    def merge_batches(self, table: pa.Table, results: list[StageResult], ctx: Context) -> StageResult:
        merged = super().merge_batches(table, results, ctx)
        merged.stats.update(self._prepared[1])  # the whole input's (per-batch ints such as "pairs" were summed)
        merged.artifacts = {}
        return merged

    @classmethod
    def report_tables(cls, stats):
        diag = stats.get("diagnosis")
        return summary_tables(diag, None)[-1:] if diag and diag["scores"] else []


# --------------------------------------------------------------------------- report

class ReportParams(Params):
    score: str = option("all", "all, pref_mean or rm_<name> (when fitting on the fly).")
    length: str = option("chars", LENGTH_HELP)
    ratio_edges: str | None = option(None, RATIO_EDGES_HELP)
    glm_groups: str | None = option(None, GLM_GROUPS_HELP)


@register
class ReportStage(_LengthStage):
    """Diagnose length bias (labels, each RM before/after debiasing, GLM) as a table; optionally plot it."""

    name = "length-bias report"
    Params = ReportParams
    output = "none"
    uses_seed = True  # the plot's subsample of points
    reads = (Read("model", "--model", "Use this saved model; without it the scores (--score) are fitted on the "
                                      "fly.", load_model),)
    writes = (Write("png", "--png", "Write a plot (PNG) here."),)

    def validate(self, call) -> None:
        super().validate(call)
        self._png = call.writes.get("png")

    def tables_to_stdout(self, output):
        return True

    def check(self, ctx: Context) -> None:
        lb.parse_ratio_edges(self.params.ratio_edges)
        model = ctx.inputs.get("model")
        self.measure(model["length"] if model else self.params.length)

    def run(self, table: pa.Table, ctx: Context) -> StageResult:
        p, where = self.params, self.where
        edges = lb.parse_ratio_edges(p.ratio_edges)
        model = ctx.inputs.get("model")
        measure = self.measure(model["length"] if model else p.length)
        if table.num_rows == 0:
            raise InputError(f"{where}: no rows to report on")
        lengths = lb.response_lengths(table, measure)
        has_scores = bool(lb.rm_names(table)) or "pref_mean" in table.column_names
        if model is None and has_scores and table.num_rows >= lb.MIN_PAIRS:  # fit on the fly
            model = lb.fit(table, lb.select_scores(table, p.score, where=where), lengths, length_spec=measure.spec,
                           where=where)
        debiased = lb.apply(table, model, lengths, where=where).out if model else None
        glm_result = glm(table, lengths, p.glm_groups, where) if table.num_rows >= lb.MIN_PAIRS else None
        diag = lb.diagnose(table, lengths, edges=edges, debiased=debiased)
        warn_rho(ctx, diag)
        png = getattr(self, "_png", None)
        stats = {**headline(diag, glm_result), **rho_stats(diag), "length": measure.spec,
                 **({"png": png} if png else {}), "diagnosis": diag, "glm": glm_result}

        def plot(tmp) -> None:
            from ..plots import length_bias_figure

            data = lb.plot_data(table, model, debiased, lengths, edges=edges, seed=ctx.seed)
            length_bias_figure(data).savefig(tmp, format="png", dpi=110)

        return StageResult(out=None, stats=stats, artifacts={"png": plot})

    @classmethod
    def report_tables(cls, stats):
        return summary_tables(stats["diagnosis"], stats.get("glm")) if "diagnosis" in stats else []


# --------------------------------------------------------------------------- rebalance

class RebalanceParams(Params):
    mode: Literal["subsample", "weight"] = option("subsample",
                                                  "subsample (set surplus pairs aside) or weight (add len_weight).")
    length: str = option("chars", LENGTH_HELP)
    ratio_edges: str | None = option(None, RATIO_EDGES_HELP)


@register
class RebalanceStage(_LengthStage):
    """Make P(chosen longer) ~ 0.5 within each length-ratio bucket, by subsampling or weighting."""

    name = "length-bias rebalance"
    Params = RebalanceParams
    uses_seed = True
    sets_aside = True
    writes = (Write(SET_ASIDE, "--rejects", "Side file for set-aside rows (default OUT.rejects.parquet).",
                    default_suffix=".rejects.parquet"),)

    def validate(self, call) -> None:
        super().validate(call)
        _stdout_rejects(call)

    def check(self, ctx: Context) -> None:
        lb.parse_ratio_edges(self.params.ratio_edges)
        self.measure(self.params.length)

    def run(self, table: pa.Table, ctx: Context) -> StageResult:
        p = self.params
        return lb.rebalance(table, lb.response_lengths(table, self.measure(p.length)), mode=p.mode,
                            edges=lb.parse_ratio_edges(p.ratio_edges), seed=ctx.seed)

    def write(self, plan, paths, result) -> None:
        super().write(plan, paths, result)
        if result.rows_set_aside and SET_ASIDE in paths:
            result.stats["rejects"] = paths[SET_ASIDE]
