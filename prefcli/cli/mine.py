"""`prefcli mine`: hard-negative mining with a false-negative guard."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import io
from ..errors import InputError
from ..models.embed import build_embedder
from ..models.reward import parse_rm_spec
from ..report import Table, Timer, check_accounting
from ..stages.mine import MODES, SELECTIONS, STRATEGIES, MineParams, mine
from .common import (OUTPUT_PATH, TrustRemoteCode, CacheDir, Device, EmbedModel, Input, Json, Output, Quiet, Seed,
                     handle_errors, number, plan_stage, reporter, write_stage)
from .vote import MaxFailureRate, enforce_failure_rate

ORDER = 45

# Two single-view offline ensembles, so that "the ensemble agrees" (--min-agree) has two voters to count.
DEFAULT_RMS = ("emb=ensemble:views=emb", "lex=ensemble:views=lex")
GUARD_COUNTS = ("excluded_same_as_chosen", "excluded_existing_pair", "excluded_labelled_better", "blocked_perc_pos",
                "blocked_near_duplicate", "blocked_margin", "blocked_agree")


@handle_errors
def mine_command(
    input: Input,
    output: Output,
    strategy: Annotated[str, typer.Option("--strategy", help=f"Candidate pool: {'|'.join(STRATEGIES)}. same-prompt: "
                                          "other responses to the prompt (or its dedup cluster); neighbor-prompts: "
                                          "responses to the --neighbors nearest prompts.")] = "same-prompt",
    per_pair: Annotated[int, typer.Option("--per-pair", parser=number(int, 1),
                                          help="Mined negatives per source pair (mode add).")] = 1,
    mode: Annotated[str, typer.Option("--mode", help=f"{'|'.join(MODES)}: append mined pairs, or swap the rejected "
                                      "of `strong` (easy) pairs for a harder one (needs `prefcli vote` columns).")
                    ] = "add",
    rm: Annotated[Optional[list[str]], typer.Option(
        "--rm", help="Reward model spec, repeatable, as for `prefcli vote` (scores: specs cannot score new "
                     f"responses). Default: {' '.join(DEFAULT_RMS)}.")] = None,
    min_margin: Annotated[float, typer.Option("--min-margin", parser=number(float),
                                              help="Guard: consensus margin chosen - candidate, in "
                                              "pref_mean units, at least this.")] = 0.25,
    min_agree: Annotated[float, typer.Option("--min-agree", parser=number(float, 0.0, 1.0),
                                             help="Guard: weighted share of reward models that put "
                                             "the candidate below the chosen, at least this.")] = 0.8,
    perc_pos: Annotated[float, typer.Option("--perc-pos", parser=number(float, 0.0),
                                            help="Guard (TopK-PercPos): sim(candidate, prompt) < "
                                            "this x sim(chosen, prompt).")] = 0.95,
    dup_threshold: Annotated[float, typer.Option("--dup-threshold", parser=number(float, 0.0, 1.0),
                                                 help="Guard: cosine to the chosen at or above "
                                                 "this = near-duplicate, never mined.")] = 0.92,
    neighbors: Annotated[int, typer.Option("--neighbors", parser=number(int, 1),
                                           help="neighbor-prompts: nearest prompts searched.")] = 5,
    selection: Annotated[str, typer.Option("--selection", help=f"{'|'.join(SELECTIONS)}: highest hardness, or the "
                                           "reward closest to mu - 2 sigma of the prompt's scored responses.")
                         ] = "hardest",
    max_candidates: Annotated[int, typer.Option("--max-candidates", parser=number(int, 1),
                                                help="Candidates per pair scored by the reward "
                                                "models (the most similar to the chosen).")] = 32,
    margin_weight: Annotated[float, typer.Option("--margin-weight", parser=number(float, 0.0),
                                                 help="hardness = sim(candidate, chosen) - this x "
                                                 "margin.")] = 0.1,
    no_guard: Annotated[bool, typer.Option("--no-guard", help="Switch the perc-pos, near-duplicate, margin and "
                                           "agreement guards off (exact duplicates and existing pairs stay out).")
                        ] = False,
    pool: Annotated[Optional[str], typer.Option("--pool", help="Extra unlabelled candidates: a pairs Parquet file "
                                                "whose chosen and rejected responses join the pool.")] = None,
    set_aside: Annotated[Optional[str], typer.Option(
        "--set-aside", parser=OUTPUT_PATH,
            help="replace-easy: where the replaced original rows go (default OUT.rejects.parquet).")
                         ] = None,
    max_failure_rate: MaxFailureRate = 0.05,
    model: EmbedModel = None,
    trust_remote_code: TrustRemoteCode = False,
    device: Device = "auto",
    cache_dir: CacheDir = None,
    quiet: Quiet = False,
    json_mode: Json = False,
    seed: Seed = 0,
) -> None:
    """Mine hard negatives: near-correct but worse responses, with a false-negative guard."""
    rep = reporter(quiet, json_mode, output)
    plan, side = plan_stage(input, output, "--set-aside", set_aside, "mine", reads=(pool,))
    params = MineParams(strategy=strategy, per_pair=per_pair, mode=mode, min_margin=min_margin, min_agree=min_agree,
                        perc_pos=perc_pos, dup_threshold=dup_threshold, neighbors=neighbors, selection=selection,
                        guard=not no_guard, max_candidates=max_candidates, margin_weight=margin_weight,
                        device=device, seed=seed)
    params.check()
    models = [parse_rm_spec(spec, device=device, cache_dir=cache_dir) for spec in (rm or DEFAULT_RMS)]
    table = io.read_pairs(input)
    if not table.num_rows:
        raise InputError(f"{input}: no pairs to mine for")
    extra = io.read_pairs(pool) if pool else None
    embedder = build_embedder(model, device=device, cache_dir=cache_dir, trust_remote_code=trust_remote_code)
    with Timer() as timer:
        result = mine(table, embedder, models, params, pool=extra)
    check_accounting(table.num_rows, result, added=result.stats["new_rows"])
    write_stage(plan, result, output, side)
    stats = dict(result.stats, seconds=round(timer.seconds, 2), embedded=embedder.computed)
    guard = Table("guard", "candidates removed, by reason", ["reason", "candidates"],
                  [[key, stats[key]] for key in GUARD_COUNTS if key in stats])
    rep.summary("mine", stats, [guard])
    enforce_failure_rate(stats, max_failure_rate)


def register(app: typer.Typer) -> None:
    app.command("mine", help="Mine hard negatives (same prompt or nearest prompts) with a false-negative guard; "
                             "add them as new pairs or replace the rejected of easy pairs.")(mine_command)
