"""Real prompts from ../shared/data and constructed near-duplicate variants, for dedup tests and benchmarks.

Raw files are read directly (json/gzip) so these helpers do not depend on `prefcli ingest`.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

from prefcli.pairs import build_pairs, user_prompt

ALPACA = "alpaca-eval-annotations/annotations_compact.jsonl.gz"
HH = "hh-rlhf-harmless/test.jsonl.gz"
_TURN = re.compile(r"\n\n(Human|Assistant): ")


def alpaca_instructions(data: Path, limit: int | None = None) -> list[str]:
    """Distinct AlpacaEval instructions, in file order (the first ~805 lines hold all of them)."""
    seen: dict[str, None] = {}
    with gzip.open(data / ALPACA, "rt", encoding="utf-8") as fh:
        for line in fh:
            seen.setdefault(json.loads(line)["instruction"], None)
            if len(seen) >= (limit or 805):
                break
    return list(seen)


def alpaca_judgments(data: Path, limit: int) -> list[dict]:
    """The first `limit` AlpacaEval judgments with a decided preference (1 or 2)."""
    rows = []
    with gzip.open(data / ALPACA, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec.get("preference") in (1, 2, 1.0, 2.0) and rec["output_1"].strip() and rec["output_2"].strip():
                rows.append(rec)
                if len(rows) >= limit:
                    break
    return rows


def hh_transcripts(data: Path, limit: int | None = None) -> list[tuple[list[dict], str, str]]:
    """HH-RLHF harmless test as (prompt messages, chosen, rejected)."""
    out = []
    with gzip.open(data / HH, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            chosen, rejected = _split(rec["chosen"]), _split(rec["rejected"])
            if chosen[:-1] != rejected[:-1] or not chosen[-1]["content"].strip() or not rejected[-1]["content"].strip():
                continue
            out.append((chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]))
            if limit and len(out) >= limit:
                break
    return out


def _split(transcript: str) -> list[dict]:
    parts = _TURN.split(transcript)
    turns = []
    for role, content in zip(parts[1::2], parts[2::2]):
        turns.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return turns


def hh_first_prompts(data: Path, limit: int | None = None) -> list[str]:
    """Distinct first human turns of HH-RLHF conversations."""
    seen: dict[str, None] = {}
    for messages, _, _ in hh_transcripts(data):
        seen.setdefault(messages[0]["content"], None)
        if limit and len(seen) >= limit:
            break
    return list(seen)


def prompt_pairs(prompts: list[str], source: str = "test"):
    """A canonical pairs table with one single-turn pair per prompt (responses are placeholders)."""
    n = len(prompts)
    return build_pairs([user_prompt(p) for p in prompts], [f"answer {i}" for i in range(n)],
                       [f"other answer {i}" for i in range(n)], source=source)


# --------------------------------------------------------------------------- near-duplicate variants

def _words(text: str) -> list[str]:
    return text.split(" ")


def vary_case(text: str, rng: random.Random) -> str:
    return text.upper() if rng.random() < 0.5 else text.lower()


def vary_whitespace(text: str, rng: random.Random) -> str:
    return "  " + "  ".join(_words(text)) + "\n"


def vary_punctuation(text: str, rng: random.Random) -> str:
    stripped = re.sub(r"[,;:!?.]", "", text)
    return stripped if stripped != text else text + "?"


def drop_word(text: str, rng: random.Random) -> str:
    """Drop one short function word (a, the, of, ...), as careless rewording does."""
    words = _words(text)
    small = [i for i, w in enumerate(words) if i and w.lower() in _FUNCTION_WORDS]
    if len(words) < 6 or not small:
        return vary_punctuation(text, rng)
    del words[rng.choice(small)]
    return " ".join(words)


_FUNCTION_WORDS = {"a", "an", "the", "of", "to", "in", "for", "on", "some", "me", "that", "is", "and", "with", "my"}


def swap_words(text: str, rng: random.Random) -> str:
    words = _words(text)
    if len(words) < 4:
        return vary_punctuation(text, rng)
    i = rng.randrange(1, len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def add_prefix(text: str, rng: random.Random) -> str:
    return rng.choice(["Please answer: ", "Question: ", "Answer the following. "]) + text


def typo(text: str, rng: random.Random) -> str:
    """Swap two adjacent letters inside one longer word."""
    words = _words(text)
    long_words = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not long_words:
        return vary_punctuation(text, rng)
    i = rng.choice(long_words)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


VARIANTS = {"case": vary_case, "whitespace": vary_whitespace, "punctuation": vary_punctuation,
            "drop_word": drop_word, "swap_words": swap_words, "prefix": add_prefix, "typo": typo}


def variants_of(prompts: list[str], seed: int = 0) -> list[tuple[int, str, str]]:
    """One variant per prompt, kinds in rotation: (index of the original, kind, variant text)."""
    rng = random.Random(seed)
    kinds = list(VARIANTS)
    out = []
    for i, text in enumerate(prompts):
        kind = kinds[i % len(kinds)]
        out.append((i, kind, VARIANTS[kind](text, rng)))
    return out
