"""`prefcli length-bias`: fit f(length) -> reward, apply the saved correction, report and plot, rebalance."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from .. import io
from ..errors import InputError
from ..models.length import LengthMeasure
from ..options import parse_key_values
from ..outputs import OutputPlan
from ..plots import length_bias_figure
from ..report import Table, check_accounting
from ..scoring import BucketThresholds
from ..stages import length_bias as lb
from .common import (OUTPUT_PATH, Input, Json, MaxRejectRate, Output, Quiet, Seed, enforce_reject_rate, handle_errors,
                     plan_stage, reporter, write_stage)

ORDER = 60

app = typer.Typer(help="Length bias: fit f(length) -> reward, debias scores (len_ columns), report, rebalance.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)

Length = Annotated[str, typer.Option("--length", help="Length measure: chars, words or tokens:<local tokenizer dir>.")]
RatioEdges = Annotated[Optional[str], typer.Option(
    "--ratio-edges", help="Length-ratio bucket edges (longer/shorter), e.g. 1.1,1.25,1.5,2,3.")]
GlmGroups = Annotated[Optional[str], typer.Option(
    "--glm-groups", help="KEY_CHOSEN,KEY_REJECTED: meta keys naming each side's group (e.g. generator) for the "
                         "length-controlled GLM's per-group win rates.")]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="length-bias")


def _glm(table, lengths, groups: str | None, where: str) -> dict[str, Any]:
    if not groups:
        return lb.length_glm(*lengths)
    keys = [k.strip() for k in groups.split(",")]
    if len(keys) != 2 or not all(keys):
        raise InputError(f"--glm-groups: expected KEY_CHOSEN,KEY_REJECTED, got '{groups}'")
    chosen, rejected = lb.meta_groups(table, *keys, where=where)
    return lb.length_glm(*lengths, groups_chosen=chosen, groups_rejected=rejected)


def _load_model(path: str) -> dict[str, Any]:
    return lb.check_model(io.read_json(path), path)


def _summary_tables(diag: dict[str, Any], glm: dict[str, Any] | None) -> list[Table]:
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
    if glm and glm.get("groups"):
        tables.append(Table("glm_groups", f"length-controlled win rate vs {glm['baseline']} (GLM at dlen=0)",
                            ["group", "pairs", "win_rate", "lc_win_rate"],
                            [[g["group"], g["pairs"], g["win_rate"], g["lc_win_rate"]] for g in glm["groups"]]))
    return tables


def _warn_rho(rep, diag: dict[str, Any]) -> None:
    """One warning per debiased score whose |rho(margin, dlen)| after debiasing is above the target."""
    for key, v in diag["scores"].items():
        after = v.get("rho_margin_dlen_debiased")
        if after is not None and abs(after) > lb.RHO_TARGET:
            rep.warn(f"{key}: rho(margin, dlen) {v['rho_margin_dlen']:+.3f} before, {after:+.3f} after debiasing "
                     f"(above the {lb.RHO_TARGET} target: refit on pairs like these"
                     f"{', with --score pref_mean to debias the mean itself' if key == 'pref_mean' else ''})")


def _rho_stats(diag: dict[str, Any]) -> dict[str, Any]:
    v = diag["scores"].get("pref_mean", {})
    if "rho_margin_dlen_debiased" not in v:
        return {}
    return {"rho_before": v["rho_margin_dlen"], "rho_after": v["rho_margin_dlen_debiased"]}


def _headline(diag: dict[str, Any], glm: dict[str, Any] | None) -> dict[str, Any]:
    stats = {"pairs": diag["overall"]["pairs"], "p_chosen_longer": diag["overall"]["p_chosen_longer"],
             "longer_wins_accuracy": diag["overall"]["longer_wins_accuracy"]}
    if glm:
        stats.update(glm_length_coef=glm["length_coef"], glm_p_longer_wins_at_1sigma=glm["p_longer_wins_at_1sigma"])
    return stats


@app.command("fit")
@handle_errors
def fit_cmd(
    input: Input,
    output: Annotated[str, typer.Option("--output", "-o", parser=OUTPUT_PATH,
                                        help="Model JSON to write (- for stdout).")],
    score: Annotated[str, typer.Option("--score", help="all, pref_mean or rm_<name>.")] = "all",
    length: Length = "chars",
    method: Annotated[str, typer.Option("--method", help="dlen (default: no curve, the residual step alone), "
                                        "paired (spline + ridge on pair margins), isotonic (monotone, pooled "
                                        "responses) or spline (pooled).")] = "dlen",
    residual: Annotated[str, typer.Option("--residual", help="Step after the curve: balanced (default: "
                                          "rho(margin, dlen) = 0 and equal accuracy on chosen-longer and "
                                          "chosen-shorter pairs, on the fitted pairs), rank (rho only) or "
                                          "none.")] = "balanced",
    thresholds: Annotated[Optional[str], typer.Option(
        "--thresholds", help="Vote bucket thresholds for len_pref_bucket, e.g. incorrect=-0.5,strong=1.5.")] = None,
    table_out: Annotated[Optional[str], typer.Option(
        "--table", parser=OUTPUT_PATH,
            help="Also write the input with the fit-time debiased len_ columns to this Parquet file.")] = None,
    glm_groups: GlmGroups = None,
    quiet: Quiet = False, json_mode: Json = False, seed: Seed = 0,
) -> None:
    """Fit f(length) -> reward per score (and the AlpacaEval-style GLM on the labels); save it as JSON."""
    rep = reporter(quiet, json_mode, output if output == io.STDIO else table_out)
    plan = OutputPlan(inputs=[input])
    plan.add("--output", output)
    plan.add("--table", table_out)
    if method not in lb.METHODS:
        raise InputError(f"--method: expected one of {', '.join(lb.METHODS)}, got '{method}'")
    bucket_thresholds = BucketThresholds().with_overrides(parse_key_values(thresholds or "", "--thresholds"))
    measure = LengthMeasure(length)
    table = io.read_pairs(input)
    keys = lb.select_scores(table, score, where=input)
    lengths = lb.response_lengths(table, measure)
    model = lb.fit(table, keys, lengths, length_spec=measure.spec, method=method, residual=residual,
                   thresholds=bucket_thresholds if thresholds else None, where=input)
    model["glm"] = glm = _glm(table, lengths, glm_groups, input)
    result = lb.apply(table, model, lengths, where=input)
    if table_out:  # model and table appear together or not at all
        plan.write(table_out, result.out)
    plan.write(output, model)
    plan.commit()
    diag = lb.diagnose(table, lengths, debiased=result.out)
    stats = {"model": output, "scores": keys, "length": measure.spec, "method": method, "residual": residual,
             **_headline(diag, glm), **_rho_stats(diag)}
    rep.summary("length-bias fit", stats, _summary_tables(diag, glm))
    _warn_rho(rep, diag)


@app.command("apply")
@handle_errors
def apply_cmd(
    input: Input,
    model_path: Annotated[str, typer.Option("--model", help="Model JSON written by `length-bias fit`.")],
    output: Output,
    quiet: Quiet = False, json_mode: Json = False, seed: Seed = 0,
) -> None:
    """Add the debiased len_ columns using a saved model (no refit: a cron refresh applies the same correction)."""
    rep = reporter(quiet, json_mode, output)
    plan = OutputPlan(inputs=[input, model_path])
    plan.add("--output", output)
    model = _load_model(model_path)
    measure = LengthMeasure(model["length"])
    table = io.read_pairs(input)
    lengths = lb.response_lengths(table, measure)
    result = lb.apply(table, model, lengths, where=input)
    check_accounting(table.num_rows, result)
    write_stage(plan, result, output, None)
    diag = lb.diagnose(table, lengths, debiased=result.out)
    rep.summary("length-bias apply", {"rows_in": table.num_rows, "rows_out": result.out.num_rows,
                                      "model": model_path, **_headline(diag, None), **_rho_stats(diag)},
                _summary_tables(diag, None)[-1:] if diag["scores"] else [])
    _warn_rho(rep, diag)


@app.command("report")
@handle_errors
def report_cmd(
    input: Input,
    png: Annotated[Optional[str], typer.Option("--png", parser=OUTPUT_PATH, help="Write a plot (PNG) here.")
                   ] = None,
    model_path: Annotated[Optional[str], typer.Option(
        "--model", help="Use this saved model; without it the scores (--score) are fitted on the fly.")] = None,
    score: Annotated[str, typer.Option("--score", help="all, pref_mean or rm_<name> (when fitting on the fly).")] = "all",
    length: Length = "chars",
    ratio_edges: RatioEdges = None,
    glm_groups: GlmGroups = None,
    quiet: Quiet = False, json_mode: Json = False, seed: Seed = 0,
) -> None:
    """Diagnose length bias (labels, each RM before/after debiasing, GLM) as a table; optionally plot it."""
    rep = reporter(quiet, json_mode, tables_to_stdout=True)
    plan = OutputPlan(inputs=[input, model_path])
    plan.add("--png", png)
    edges = lb.parse_ratio_edges(ratio_edges)
    model = _load_model(model_path) if model_path else None
    measure = LengthMeasure(model["length"] if model else length)
    table = io.read_pairs(input)
    if table.num_rows == 0:
        raise InputError(f"{input}: no rows to report on")
    lengths = lb.response_lengths(table, measure)
    has_scores = bool(lb.rm_names(table)) or "pref_mean" in table.column_names
    if model is None and has_scores and table.num_rows >= lb.MIN_PAIRS:
        model = lb.fit(table, lb.select_scores(table, score, where=input), lengths, length_spec=measure.spec,
                       where=input)
    debiased = lb.apply(table, model, lengths, where=input).out if model else None
    glm = _glm(table, lengths, glm_groups, input) if table.num_rows >= lb.MIN_PAIRS else None
    diag = lb.diagnose(table, lengths, edges=edges, debiased=debiased)
    if png:
        fig = length_bias_figure(lb.plot_data(table, model, debiased, lengths, edges=edges, seed=seed))
        plan.write_with(png, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plan.commit()
    stats = {**_headline(diag, glm), **_rho_stats(diag), "length": measure.spec, **({"png": png} if png else {})}
    if json_mode:
        stats.update(diagnosis=diag, glm=glm)
    rep.summary("length-bias report", stats, _summary_tables(diag, glm))
    _warn_rho(rep, diag)


@app.command("rebalance")
@handle_errors
def rebalance_cmd(
    input: Input,
    output: Output,
    mode: Annotated[str, typer.Option("--mode", help="subsample (set surplus pairs aside) or weight (add len_weight).")]
    = "subsample",
    rejects: Annotated[Optional[str], typer.Option("--rejects", parser=OUTPUT_PATH,
                                                   help="Side file for set-aside rows.")] = None,
    length: Length = "chars",
    ratio_edges: RatioEdges = None,
    max_reject_rate: MaxRejectRate = None,
    quiet: Quiet = False, json_mode: Json = False, seed: Seed = 0,
) -> None:
    """Make P(chosen longer) ~ 0.5 within each length-ratio bucket, by subsampling or weighting."""
    rep = reporter(quiet, json_mode, output)
    plan, side = plan_stage(input, output, "--rejects", rejects, "length_bias")
    edges = lb.parse_ratio_edges(ratio_edges)
    if mode not in ("subsample", "weight"):
        raise InputError(f"--mode: expected subsample or weight, got '{mode}'")
    measure = LengthMeasure(length)
    table = io.read_pairs(input)
    result = lb.rebalance(table, lb.response_lengths(table, measure), mode=mode, edges=edges, seed=seed)
    check_accounting(table.num_rows, result)
    write_stage(plan, result, output, side)
    stats = dict(result.stats)
    if result.rows_set_aside:
        stats["rejects"] = side
    rep.summary("length-bias rebalance", stats)
    enforce_reject_rate(table.num_rows, result.rows_set_aside, max_reject_rate)
