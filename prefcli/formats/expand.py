"""Turning N rated responses to one prompt into candidate pairs (`--pairing`, `--min-margin`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Collector


@dataclass
class Scored:
    text: str
    score: float
    info: dict  # what the response brings to meta (model name, message id, ...)


def candidate_indices(scores: list[float], pairing: str) -> list[tuple[int, int]]:
    """(better, worse) index pairs; equal scores keep input order, so the choice is deterministic."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if len(order) < 2:
        return []
    if pairing == "best-worst":
        return [(order[0], order[-1])]
    if pairing == "best-all":
        return [(order[0], j) for j in order[1:]]
    return [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))]


def emit_expanded(out: Collector, *, prompt: list[dict], responses: list[Scored], line: int, meta: dict,
                  fmt: str) -> None:
    """Hand every candidate pair of one prompt to the Collector (at least one when 2+ responses)."""
    options = out.options
    candidates = candidate_indices([r.score for r in responses], options.pairing)
    for better, worse in candidates:
        chosen, rejected = responses[better], responses[worse]
        margin = chosen.score - rejected.score
        row = {"prompt": prompt, "chosen": chosen.text, "rejected": rejected.text,
               "chosen_score": chosen.score, "rejected_score": rejected.score}
        pair_meta = {**meta, "chosen_info": chosen.info, "rejected_info": rejected.info}
        pair_meta["_ingest"] = {**meta.get("_ingest", {}), "format": fmt, "pairing": options.pairing}
        if margin > 0 and margin < options.min_margin:
            out.reject(row, line, f"below min-margin: {margin:g} < {options.min_margin:g}")
            continue
        out.pair(row=row, line=line, prompt=prompt, chosen=chosen.text, rejected=rejected.text,
                 chosen_score=chosen.score, rejected_score=rejected.score, tie=margin == 0, meta=pair_meta)


def scalar_info(item: Any, skip: set[str]) -> dict:
    """The small scalar fields of a response item (model, id, rank...), for meta."""
    if not isinstance(item, dict):
        return {}
    return {k: v for k, v in item.items() if k not in skip and isinstance(v, (str, int, float, bool))
            and not (isinstance(v, str) and len(v) > 200)}
