"""`prefcli export`: curated pairs as TRL / OpenRLHF / JSONL / HF datasets / Parquet training files."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import io
from ..errors import InputError
from ..outputs import OutputPlan
from ..stages.export import (FORMATS, JSONL_FORMATS, check_where, export_pairs, iter_rows, save_dataset_to,
                              to_hf_dataset)
from .common import OUTPUT_PATH, Input, Json, Overwrite, Quiet, Seed, handle_errors, number, reporter

ORDER = 90


@handle_errors
def export_command(
    input: Input,
    to: Annotated[str, typer.Option("--to", help=f"{'|'.join(FORMATS)}.")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", parser=OUTPUT_PATH,
                                                  help="File (directory for hf-dataset), or - "
                                                  "for stdout (JSONL formats and parquet).")] = None,
    where: Annotated[Optional[str], typer.Option("--where", help="Keep rows where this polars SQL expression is "
                                                 "true, e.g. \"pref_bucket != 'incorrect' AND dedup_is_rep\".")] = None,
    keep: Annotated[Optional[str], typer.Option("--keep", help="Extra columns to carry, comma-separated "
                                                "(e.g. pair_id,source).")] = None,
    shuffle: Annotated[bool, typer.Option("--shuffle", help="Shuffle rows (with --seed).")] = False,
    margin_floor: Annotated[float, typer.Option("--margin-floor", parser=number(float),
                                                help="The written `margin` is at least this "
                                                "(a reward loss never asks for a negative gap); `margin_signed` "
                                                "keeps the vote's signed value.")] = 0.0,
    keep_repeats: Annotated[bool, typer.Option("--keep-repeats", help="Keep exact repeats of (prompt, chosen, "
                                               "rejected) in the training shapes (left out by default).")] = False,
    push_to_hub: Annotated[Optional[str], typer.Option("--push-to-hub", help="Also push the rows as a Hugging Face "
                                                       "dataset to this repo id (needs a login).")] = None,
    private: Annotated[bool, typer.Option("--private", help="With --push-to-hub: create a private repo.")] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_mode: Json = False,
    seed: Seed = 0,
) -> None:
    """Write the pairs in the shape a trainer reads; --where filters first."""
    rep = reporter(quiet, json_mode, output)
    if to not in FORMATS:
        raise InputError(f"--to: expected one of {', '.join(FORMATS)}, got '{to}'")
    if output is None and not push_to_hub:
        raise InputError("--output: give -o PATH (or - for stdout), or --push-to-hub REPO")
    if output == io.STDIO and to == "hf-dataset":
        raise InputError("-o -: hf-dataset is a directory; use --to jsonl or parquet for stdout")
    plan = OutputPlan(inputs=[input], overwrite=overwrite)
    plan.add("--output", output, kind="dir" if to == "hf-dataset" else "file")
    check_where(where)
    table = io.read_pairs(input)
    columns = [c.strip() for c in (keep or "").split(",") if c.strip()]
    result = export_pairs(table, to, where=where, keep=columns, shuffle=shuffle, seed=seed,
                          margin_floor=margin_floor, keep_repeats=keep_repeats)
    if output is not None:
        with plan:
            if to in JSONL_FORMATS and output == io.STDIO:
                plan.write(output, "".join(io.jsonl_lines(iter_rows(result.out))))
            elif to in JSONL_FORMATS:
                plan.write_with(output, lambda tmp: tmp.write_text("".join(io.jsonl_lines(iter_rows(result.out))),
                                                                   encoding="utf-8"))
            elif to == "parquet":
                plan.write(output, result.out)
            else:
                plan.write_with(output, lambda tmp: save_dataset_to(to_hf_dataset(result.out), tmp))
            plan.commit()
    if push_to_hub:
        push(result.out, push_to_hub, private)
    rep.summary("export", dict(result.stats, output=output or "", pushed_to=push_to_hub or ""))


def push(table, repo: str, private: bool) -> None:
    """Push to the Hugging Face Hub; only ever called when the user asked with --push-to-hub."""
    try:
        to_hf_dataset(table).push_to_hub(repo, private=private)
    except Exception as exc:  # auth, network, offline mode, bad repo id: all "could not push"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--push-to-hub {repo}: could not push ({text[:200]})") from None


def register(app: typer.Typer) -> None:
    app.command("export", help="Write curated pairs for training: TRL (conversational or standard text), OpenRLHF"
                               " JSONL, plain JSONL, HF datasets directory, or Parquet; --where filters.")(export_command)
