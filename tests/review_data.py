"""PandaLM pairs with three human annotators each, for the review/calibrate/export tests.

The stored label of each pair follows annotator 1, with a share of labels flipped (planted errors),
and vote columns come from `aggregate_margins` over planted reward-model margins whose sign agrees
with the annotators' majority more often than not. `truth` keeps, per pair_id, both responses and
the three annotators' raw choices (1 = response1, 2 = response2, 0 = tie).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from prefcli.pairs import build_pairs, user_prompt
from prefcli.schema import with_stage_columns
from prefcli.stages.vote import aggregate_margins, prefixed_columns


def pandalm_records(shared_data: Path) -> list[dict]:
    raw = json.loads((shared_data / "pandalm" / "testset-v1.json").read_text())
    # A few PandaLM responses are JSON booleans or blank (the pair schema needs non-empty text), and a
    # few comparisons repeat: keep the first of each.
    seen, out = set(), []
    for r in raw:
        first, second = str(r["response1"]), str(r["response2"])
        key = (r["instruction"], r["input"], *sorted((first, second)))
        if first.strip() and second.strip() and first != second and key not in seen:
            seen.add(key)
            out.append(r)
    return out


def pandalm_pairs(records: list[dict], *, n: int | None = None, flip_share: float = 0.3, seed: int = 0,
                  voters: int = 5, signal: float = 0.8):
    """(table with vote columns, truth by pair_id)."""
    rng = np.random.default_rng(seed)
    records = records[:n] if n else records
    prompts, chosen, rejected, truth_rows = [], [], [], []
    flips = rng.random(len(records)) < flip_share
    for record, flip in zip(records, flips):
        first, second = str(record["response1"]), str(record["response2"])
        label_first = record["annotator1"] != 2  # ties follow response1
        if flip:
            label_first = not label_first
        c, r = (first, second) if label_first else (second, first)
        text = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
        prompts.append(user_prompt(text))
        chosen.append(c)
        rejected.append(r)
        truth_rows.append({"r1": first, "r2": second,
                           "votes": (record["annotator1"], record["annotator2"], record["annotator3"])})
    table = build_pairs(prompts, chosen, rejected, source="pandalm", label_source="ai")
    truth = dict(zip(table.column("pair_id").to_pylist(), truth_rows))
    right = np.array([majority_prefers_chosen(truth[p], c) for p, c in zip(truth, chosen)], dtype=float)
    direction = np.where(np.isnan(right), 0.0, 2 * right - 1)  # +1 label right, -1 wrong, 0 tie
    margins = signal * direction[:, None] + rng.normal(0, 1, (len(chosen), voters))
    columns = prefixed_columns(aggregate_margins(margins), "pref_")
    return with_stage_columns(table, "vote", columns), truth


def choice_text(truth_row: dict, annotator: int) -> str | None:
    """The response text annotator k (0-based) preferred, or None for a tie."""
    vote = truth_row["votes"][annotator]
    return None if vote == 0 else truth_row["r1"] if vote == 1 else truth_row["r2"]


def majority_prefers_chosen(truth_row: dict, chosen: str) -> float:
    """1.0 if most annotators preferred `chosen`, 0.0 if the other response, nan for a tie or split."""
    counts = {"chosen": 0, "other": 0, "tie": 0}
    for k in range(3):
        text = choice_text(truth_row, k)
        counts["tie" if text is None else "chosen" if text == chosen else "other"] += 1
    best = max(counts.values())
    winners = [k for k, v in counts.items() if v == best]
    if len(winners) > 1 or winners[0] == "tie":
        return float("nan")
    return 1.0 if winners[0] == "chosen" else 0.0


def simulated_choice(truth_row: dict, annotator: int, left: str) -> str:
    """What annotator k clicks for a task that shows `left` on the left: left, right or tie."""
    text = choice_text(truth_row, annotator)
    if text is None:
        return "tie"
    return "left" if text == left else "right"


def pair_table(table: pa.Table) -> dict[str, int]:
    return {p: i for i, p in enumerate(table.column("pair_id").to_pylist())}
