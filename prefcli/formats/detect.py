"""Format auto-detection from the first records of a source (and any `--map` roles given)."""

from __future__ import annotations

from typing import Mapping

from ..errors import InputError
from .base import find_alias, sample_columns
from .hh_rlhf import looks_like_transcript
from .oasst import looks_like_oasst
from .pairs_passthrough import looks_like_pairs
from .paths import get_path
from .votes import vote_columns

CANDIDATES = {
    "hh-rlhf": "chosen/rejected transcripts with Human:/Assistant: turns",
    "trl": "prompt + chosen + rejected (text or messages), or chosen/rejected conversations",
    "pairwise": "prompt + two responses (output_1/output_2, response_a/b, ...) + label",
    "votes": "prompt + two responses + annotator1..N columns",
    "multi-response": "prompt + list of rated responses, or one row per (prompt, response, score)",
    "oasst": "message trees with ranked replies",
    "pairs": "a canonical pairs file (all pairs v1 columns)",
}


def detect_format(records: list[dict], file: str, mapping: Mapping[str, str] | None = None) -> str:
    """Name of the adapter for these records; an InputError naming candidates and columns otherwise."""
    mapping = dict(mapping or {})
    columns = sample_columns(records)

    def has(role: str) -> bool:
        return role in mapping or find_alias(columns, role) is not None

    def first_value(role: str):
        path = mapping.get(role) or find_alias(columns, role)
        for record in records[:64]:
            found = get_path(record, path)
            if found is not None:
                return found
        return None

    if not mapping and looks_like_pairs(columns):
        return "pairs"
    if records and not mapping and looks_like_oasst(records[0]):
        return "oasst"
    if "responses" in mapping or ("response" in mapping and "score" in mapping):
        return "multi-response"
    if has("chosen") and has("rejected"):
        if not has("prompt") and looks_like_transcript(first_value("chosen")):
            return "hh-rlhf"
        return "trl"
    if has("first") and has("second"):
        if "votes" in mapping or vote_columns(columns) or (has("votes") and not has("label")):
            return "votes"
        if has("label"):
            return "pairwise"
    if has("responses") and isinstance(first_value("responses"), list):
        return "multi-response"
    if has("prompt") and has("response") and has("score"):
        return "multi-response"
    choices = "; ".join(f"{name} ({what})" for name, what in CANDIDATES.items())
    raise InputError(f"{file}: cannot detect the format; columns seen: {', '.join(columns[:20]) or 'none'}; "
                     f"candidates: {choices}; name one with --format or map fields with --map")
