"""Text normalisation, prompt rendering and content hashes shared by every stage."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from .io.parquet import take_rows
from .memory import release_memory

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
    """text_key of each text; a text repeated within TEXT_CHUNK texts (many pairs share a prompt) is normalised
    once, and only a chunk's texts are remembered (`texts` may be a TableTexts that is never held whole)."""
    out: list[str] = []
    keys: dict[str, str] = {}
    for text in texts:
        if len(keys) >= TEXT_CHUNK:
            keys.clear()
            release_memory(collect=False)  # the chunk's texts and their normalised copies
        out.append(keys[text] if text in keys else keys.setdefault(text, text_key(text)))
    return out


def prompt_id(messages: Sequence[dict]) -> str:
    return digest(normalize(render_messages(messages)))


def pair_id(messages: Sequence[dict], chosen: str, rejected: str) -> str:
    payload = json.dumps([[[m["role"], m["content"]] for m in messages], chosen, rejected], ensure_ascii=False)
    return digest(payload)


TEXT_CHUNK = 65_536  # rows turned into Python texts at a time
BUILD_CHUNK = 8_192  # rows whose columns are Python objects at once while their texts are built


def texts_for(table: pa.Table, on: str) -> list[str]:
    """The text a stage works on: `prompt` (rendered history), `chosen`, `rejected`, or `pair` (all three)."""
    if table.num_rows > BUILD_CHUNK:  # a slice at a time: the message dicts of one slice, not the whole table's
        return [text for start in range(0, table.num_rows, BUILD_CHUNK)
                for text in texts_for(table.slice(start, BUILD_CHUNK), on)]
    if on == "prompt":
        return [render_messages(m) for m in table.column("prompt").to_pylist()]
    if on in ("chosen", "rejected"):
        return table.column(on).to_pylist()
    if on == "pair":
        prompts = texts_for(table, "prompt")
        return [f"{p}\n\nchosen: {c}\n\nrejected: {r}"
                for p, c, r in zip(prompts, table.column("chosen").to_pylist(), table.column("rejected").to_pylist())]
    raise ValueError(f"unknown text view '{on}' (expected prompt, pair, chosen or rejected)")


class TableTexts(Sequence[str]):
    """The texts_for view of a table's rows, built TEXT_CHUNK rows at a time when read and never held whole:
    a million whole-pair texts are gigabytes as Python strings, already held once by the table.
    `rows` picks the rows, in order (default: every row)."""

    def __init__(self, table: pa.Table, on: str, rows: np.ndarray | None = None):
        self.table, self.on = table, on
        self.rows = None if rows is None else np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return self.table.num_rows if self.rows is None else len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.take(np.array([i % len(self)]))[0]

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), TEXT_CHUNK):
            yield from self.take(np.arange(start, min(start + TEXT_CHUNK, len(self))))

    def take(self, positions: np.ndarray) -> list[str]:
        """The texts at these positions (a list)."""
        rows = np.asarray(positions, np.int64) if self.rows is None else self.rows[positions]
        out: list[str] = []
        view = self.table.select(list(VIEW_COLUMNS[self.on]))
        for start in range(0, len(rows), TEXT_CHUNK):
            chunk = rows[start:start + TEXT_CHUNK]
            contiguous = len(chunk) and chunk[-1] - chunk[0] == len(chunk) - 1 and bool(np.all(np.diff(chunk) == 1))
            part = view.slice(int(chunk[0]), len(chunk)) if contiguous else take_rows(view, chunk)
            out.extend(texts_for(part, self.on))
        return out

    def subset(self, positions: np.ndarray) -> "TableTexts":
        rows = np.asarray(positions, np.int64) if self.rows is None else self.rows[positions]
        return TableTexts(self.table, self.on, rows)


VIEW_COLUMNS = {"prompt": ("prompt",), "chosen": ("chosen",), "rejected": ("rejected",),
                "pair": ("prompt", "chosen", "rejected")}


def pick(texts: Sequence[str], positions: np.ndarray) -> Sequence[str]:
    """The texts at these positions: a TableTexts stays lazy, a list gives a list."""
    if isinstance(texts, TableTexts):
        return texts.subset(positions)
    return [texts[i] for i in np.asarray(positions).tolist()]


def take_texts(texts: Sequence[str], positions: np.ndarray) -> list[str]:
    """The texts at these positions, as a list."""
    if isinstance(texts, TableTexts):
        return texts.take(positions)
    return [texts[i] for i in np.asarray(positions).tolist()]


def word_count(texts: Iterable[str]) -> list[int]:
    return [len(t.split()) for t in texts]
