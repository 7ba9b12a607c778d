"""Text normalisation, prompt rendering and content hashes shared by every stage."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Iterable, Sequence

import pyarrow as pa

_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed and trimmed."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def digest(text: str) -> str:
    """128-bit blake2b hex digest: stable across runs, platforms and Python versions."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def render_messages(messages: Sequence[dict] | None) -> str:
    """Render a conversation as plain text, one `role: content` block per turn.

    A single user turn renders as its bare content, so single-turn prompts embed as written.
    """
    if not messages:
        return ""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def text_key(text: str) -> str:
    """Content key of a text: the digest of its normalised form, so equal keys mean the same text after
    normalisation. The embedding cache, dedup's exact groups and mine's duplicate check all use it."""
    return digest(normalize(text))


def text_keys(texts: Sequence[str]) -> list[str]:
    """text_key of each text; repeated texts (many pairs share a prompt) are normalised once."""
    keys: dict[str, str] = {}
    return [keys[t] if t in keys else keys.setdefault(t, text_key(t)) for t in texts]


def prompt_id(messages: Sequence[dict]) -> str:
    return digest(normalize(render_messages(messages)))


def pair_id(messages: Sequence[dict], chosen: str, rejected: str) -> str:
    payload = json.dumps([[[m["role"], m["content"]] for m in messages], chosen, rejected], ensure_ascii=False)
    return digest(payload)


TEXT_CHUNK = 65_536  # rows turned into Python texts at a time


def texts_for(table: pa.Table, on: str) -> list[str]:
    """The text a stage works on: `prompt` (rendered history), `chosen`, `rejected`, or `pair` (all three)."""
    if table.num_rows > TEXT_CHUNK:  # a chunk at a time: the message dicts of one chunk, not the whole table's
        return [text for start in range(0, table.num_rows, TEXT_CHUNK)
                for text in texts_for(table.slice(start, TEXT_CHUNK), on)]
    if on == "prompt":
        return [render_messages(m) for m in table.column("prompt").to_pylist()]
    if on in ("chosen", "rejected"):
        return table.column(on).to_pylist()
    if on == "pair":
        prompts = texts_for(table, "prompt")
        return [f"{p}\n\nchosen: {c}\n\nrejected: {r}"
                for p, c, r in zip(prompts, table.column("chosen").to_pylist(), table.column("rejected").to_pylist())]
    raise ValueError(f"unknown text view '{on}' (expected prompt, pair, chosen or rejected)")


def word_count(texts: Iterable[str]) -> list[int]:
    return [len(t.split()) for t in texts]
