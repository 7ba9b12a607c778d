"""`prefcli vote`: reward models score every pair; preference strength, buckets, actions."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import io
from ..errors import InputError, ProblemsReported
from ..models.reward import parse_rm_spec
from ..options import parse_key_values
from ..report import Timer, check_accounting
from ..stages.vote import ACTIONS, BucketThresholds, VoteParams, report_tables, thresholds_from_calibration, vote
from .common import (OUTPUT_PATH, CacheDir, Device, Input, Json, Output, Quiet, Seed, handle_errors, number,
                     plan_stage, reporter, write_stage)

ORDER = 40

RM_HELP = ("Reward model spec, repeatable: hf:<path-or-hub-id> | ensemble[:k=6,folds=5,views=emb+lex,drop=0.15] | "
           "scores:<col_chosen>,<col_rejected> | served:<model>,base_url=URL[,api=vllm|sglang|tei,tokenizer=PATH,"
           "concurrency=8,...] | judge:<model>,base_url=URL[,mode=pairwise|pointwise,template=FILE,"
           "both_orders=true,...]; prefix NAME= to name its columns (rm_NAME_*). ${VAR} in options reads the "
           "environment.")
MaxFailureRate = Annotated[float, typer.Option(
    "--max-failure-rate", parser=number(float, 0.0, 1.0),
    help="served:/judge: exit 1 (after writing) when a voter gave no usable answer for more than this share "
         "of the pairs (failed requests, unparseable answers, max_requests spent).")]


def enforce_failure_rate(stats: dict, limit: float) -> None:
    """Remote voters' failures are counted, never silent: past the limit the command exits 1."""
    rate = stats.get("failure_rate")
    if rate is not None and rate > limit:
        worst = max(stats["remote"].items(), key=lambda kv: kv[1].get("pairs_without_answer", kv[1]["failed"]))
        reasons = ", ".join(f"{k} {v}" for k, v in worst[1]["failed_by_reason"].items()) or "none"
        raise ProblemsReported(f"--rm {worst[0]}: no usable answer for {rate:.1%} of what it was asked, above "
                               f"--max-failure-rate {limit:.1%} (failed: {reasons})")


def build_thresholds(thresholds: str | None, calibration: str | None) -> BucketThresholds:
    """Defaults, then calib.json, then --thresholds overrides."""
    base = BucketThresholds()
    if calibration:
        base = thresholds_from_calibration(io.read_json(calibration), where=calibration)
    return base.with_overrides(parse_key_values(thresholds or "", "--thresholds"))


@handle_errors
def vote_command(
    input: Input,
    output: Output,
    rm: Annotated[list[str], typer.Option("--rm", help=RM_HELP)],
    action: Annotated[str, typer.Option("--action", help=f"What to do with `incorrect` pairs: {'|'.join(ACTIONS)}. "
                                        "flip swaps chosen/rejected (pref_flipped), drop sets them aside, "
                                        "soft keeps them with label_prob.")] = "none",
    thresholds: Annotated[Optional[str], typer.Option(
        "--thresholds", help="Bucket thresholds on pref_mean: incorrect=-0.5,ambiguous=0.25,strong=1.5"
                             "[,ambiguous_std=X]; overrides --calibration.")] = None,
    calibration: Annotated[Optional[str], typer.Option(
        "--calibration", help="calib.json written by `prefcli calibrate` (thresholds from human review).")] = None,
    max_length: Annotated[int, typer.Option("--max-length", parser=number(int, 1),
                                            help="hf: token limit per (prompt, response); "
                                            "longer inputs keep their last tokens and are counted.")] = 4096,
    batch_size: Annotated[int, typer.Option("--batch-size", parser=number(int, 1),
                                            help="hf: sequences per forward pass.")] = 8,
    device: Device = "auto",
    cache_dir: CacheDir = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the score cache.")] = False,
    set_aside: Annotated[Optional[str], typer.Option(
        "--set-aside", parser=OUTPUT_PATH,
            help="Where --action drop writes its rows (default OUT.rejects.parquet).")] = None,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="hf: allow the model repository's own Python code (off by default).")] = False,
    max_failure_rate: MaxFailureRate = 0.05,
    quiet: Quiet = False,
    json_mode: Json = False,
    seed: Seed = 0,
) -> None:
    """Score every pair with one or more reward models and flag incorrect / ambiguous labels."""
    rep = reporter(quiet, json_mode, output)
    plan, side = plan_stage(input, output, "--set-aside", set_aside, "vote", reads=(calibration,))
    params = VoteParams(action=action, thresholds=build_thresholds(thresholds, calibration), seed=seed)
    models = [parse_rm_spec(spec, device=device, max_length=max_length, batch_size=batch_size,
                            trust_remote_code=trust_remote_code, cache_dir=cache_dir, use_cache=not no_cache)
              for spec in rm]
    table = io.read_pairs(input)
    if not table.num_rows:
        raise InputError(f"{input}: no pairs to vote on")
    with Timer() as timer:
        result = vote(table, models, params)
    check_accounting(table.num_rows, result)
    write_stage(plan, result, output, side)
    stats = dict(result.stats, seconds=round(timer.seconds, 2),
                 pairs_per_s=round(table.num_rows / max(timer.seconds, 1e-9), 1))
    rep.summary("vote", stats, report_tables(stats))
    enforce_failure_rate(stats, max_failure_rate)


def register(app: typer.Typer) -> None:
    app.command("vote", help="Score pairs with reward models; flag incorrect/ambiguous labels; flip, drop "
                             "or soft-label them.")(vote_command)
