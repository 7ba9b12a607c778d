"""What every ingest adapter shares: options, field roles resolved from aliases or `--map`, value coercion
(messages, response text, labels, scores) and the Collector that turns candidate pairs into canonical
pairs plus a rejects table (source row JSON, file, line, reason)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pyarrow as pa

from ..errors import InputError
from ..io import RawBatch
from ..pairs import build_pairs
from ..report import SET_ASIDE_REASON, SET_ASIDE_STAGE
from .paths import MISSING, decode_text, get_path

PAIRINGS = ("best-worst", "best-all", "all")
LABEL_SCHEMES = ("auto", "index", "signed")
LABEL_SOURCES = ("human", "ai", "rm")
TIE = "tie"

REJECTS_SCHEMA = pa.schema([
    ("source", pa.large_string()),
    ("file", pa.large_string()),
    ("line", pa.int64()),
    (SET_ASIDE_REASON, pa.large_string()),
    (SET_ASIDE_STAGE, pa.large_string()),
    ("row", pa.large_string()),
])


@dataclass(frozen=True)
class IngestOptions:
    """Options shared by every adapter; CLI flags map one to one."""

    pairing: str = "all"
    min_margin: float = 0.0
    keep_ties: bool = False
    label_source: str = "human"
    label_scheme: str = "auto"
    mapping: Mapping[str, str] = field(default_factory=dict)
    columnar: bool = True  # the fast path for common layouts (same output); False: every record one by one

    def __post_init__(self):
        if self.pairing not in PAIRINGS:
            raise InputError(f"--pairing: '{self.pairing}' is not one of {', '.join(PAIRINGS)}")
        if self.label_scheme not in LABEL_SCHEMES:
            raise InputError(f"--label-scheme: '{self.label_scheme}' is not one of {', '.join(LABEL_SCHEMES)}")
        if self.label_source not in LABEL_SOURCES:
            raise InputError(f"--label-source: '{self.label_source}' is not one of {', '.join(LABEL_SOURCES)}")
        if not (isinstance(self.min_margin, (int, float)) and math.isfinite(self.min_margin) and self.min_margin >= 0):
            raise InputError(f"--min-margin: expected a number >= 0, got {self.min_margin!r}")


class Reject(Exception):
    """Raised inside an adapter for one unusable record; the Collector files it with the reason."""


# --------------------------------------------------------------------------- field roles

# Aliases per role, most specific first; the first one present in a source's columns wins.
PROMPT_ALIASES = ("prompt", "instruction", "question", "query", "input", "conversation", "conversations",
                  "messages", "history", "dialogue", "dialog", "source", "context")
ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": PROMPT_ALIASES,
    "input": ("input",),
    "system": ("system", "system_prompt"),
    "chosen": ("chosen", "chosen_response", "response_chosen", "preferred_response", "better_response"),
    "rejected": ("rejected", "rejected_response", "response_rejected", "dispreferred_response", "worse_response"),
    "first": ("output_1", "response1", "response_1", "response_a", "responseA", "completion_a", "completion_1",
              "answer_a", "answer_1", "answer1", "output_a", "output1", "text_a", "a"),
    "second": ("output_2", "response2", "response_2", "response_b", "responseB", "completion_b", "completion_2",
               "answer_b", "answer_2", "answer2", "output_b", "output2", "text_b", "b"),
    "label": ("label", "preference", "winner", "overall_preference", "choice", "better", "preferred", "pref"),
    "chosen_score": ("chosen_score", "score_chosen", "chosen_rating"),
    "rejected_score": ("rejected_score", "score_rejected", "rejected_rating"),
    "first_score": ("score_1", "score_a", "output_1_score", "rating_1", "rating_a"),
    "second_score": ("score_2", "score_b", "output_2_score", "rating_2", "rating_b"),
    "agreement": ("annotator_agreement", "agreement"),
    "responses": ("completions", "responses", "outputs", "candidates", "generations", "answers"),
    "response": ("response", "output", "completion", "system_output", "generation", "answer", "text", "content"),
    "score": ("overall_score", "score", "scores", "rating", "ratings", "reward", "overall", "helpfulness",
              "quality"),
    "group": (),
    "votes": ("votes",),
}
MAP_ROLES = tuple(ROLE_ALIASES)


def find_alias(columns: Iterable[str], role: str, skip: Iterable[str] = ()) -> str | None:
    """The first alias of `role` among `columns` (case-insensitive), or None."""
    by_lower = {}
    for col in columns:
        by_lower.setdefault(col.lower(), col)
    taken = set(skip)
    for alias in ROLE_ALIASES[role]:
        col = by_lower.get(alias.lower())
        if col is not None and col not in taken:
            return col
    return None


def sample_columns(records: list[dict], limit: int = 64) -> list[str]:
    """Column names seen in the first records, in first-seen order."""
    seen: dict[str, None] = {}
    for rec in records[:limit]:
        for key in rec:
            seen.setdefault(str(key), None)
    return list(seen)


class Fields:
    """Role -> path for one source: explicit `--map` paths first, then the aliases found in its columns."""

    def __init__(self, mapping: Mapping[str, str], columns: list[str]):
        self.mapping = dict(mapping)
        self.columns = columns
        self.paths: dict[str, str] = {}

    def resolve(self, role: str, *, skip: Iterable[str] = ()) -> str | None:
        if role in self.mapping:
            path = self.mapping[role]
        else:
            path = find_alias(self.columns, role, skip=list(skip) + list(self.paths.values()))
        if path is not None:
            self.paths[role] = path
        return path

    def require(self, role: str, fmt: str, file: str, *, skip: Iterable[str] = ()) -> str:
        path = self.resolve(role, skip=skip)
        if path is None:
            names = ", ".join(ROLE_ALIASES[role][:6]) or role
            raise InputError(f"{file}: format '{fmt}' needs a '{role}' column (one of {names}, or --map {role}=PATH); "
                             f"columns seen: {', '.join(self.columns[:20]) or 'none'}")
        return path

    def consumed(self) -> set[str]:
        """Top-level columns whose values became pair fields (the rest goes to meta)."""
        return {str(p).split(".")[0].split("[")[0] for p in self.paths.values()}


def value(record: dict, path: str | None, *, required: bool = True) -> Any:
    """The value at `path`; a Reject naming the field when required and missing/null."""
    found = MISSING if path is None else get_path(record, path)
    if found is MISSING or found is None:
        if required:
            raise Reject(f"missing field '{path}'")
        return None
    return found


def meta_of(record: dict, consumed: set[str], **ingest: Any) -> dict:
    meta = {k: v for k, v in record.items() if k not in consumed}
    meta["_ingest"] = {k: v for k, v in ingest.items() if v is not None}
    return meta


# --------------------------------------------------------------------------- value coercion

_ROLE_NAMES = {
    "user": "user", "human": "user", "prompter": "user", "usr": "user", "question": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatbot": "assistant",
    "ai": "assistant", "answer": "assistant", "system": "system",
}
_ROLE_KEYS = ("role", "from", "speaker", "author")
_CONTENT_KEYS = ("content", "value", "text", "message", "response", "answer", "output")


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style parts: [{"type": "text", "text": ...}]
        parts = [p.get("text") if isinstance(p, dict) else p for p in content]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    return None


def _message(item: Any, default_role: str) -> dict:
    if isinstance(item, str):
        return {"role": default_role, "content": item}
    if not isinstance(item, dict):
        raise Reject(f"wrong type: expected a message, got {type(item).__name__}")
    role_raw = next((item[k] for k in _ROLE_KEYS if isinstance(item.get(k), str)), default_role)
    role = _ROLE_NAMES.get(role_raw.strip().lower())
    if role is None:
        raise Reject(f"unknown role: '{role_raw}'")
    content = next((item[k] for k in _CONTENT_KEYS if k in item), None)
    text = _content_text(content)
    if text is None:
        raise Reject("wrong type: message without text content")
    return {"role": role, "content": text}


def is_message(value: Any) -> bool:
    return isinstance(value, dict) and any(k in value for k in _ROLE_KEYS) and any(k in value for k in _CONTENT_KEYS)


def is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(is_message(m) for m in value)


def _decoded_messages(text: str) -> Any:
    """JSON text of a message or a message list, decoded; any other text (even valid JSON) stays text."""
    decoded = decode_text(text)
    return decoded if decoded is not text and (is_message(decoded) or is_messages(decoded)) else text


def as_messages(value: Any, default_role: str = "user") -> list[dict]:
    """A prompt as messages: text, a message, a list of messages (or JSON text of one), or a list of turns."""
    if isinstance(value, str):
        value = _decoded_messages(value)
        if isinstance(value, str):
            return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        return [_message(value, default_role)]
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):  # bare turns alternate, starting with the user
            return [{"role": ("user", "assistant")[i % 2], "content": v} for i, v in enumerate(value)]
        return [_message(v, default_role) for v in value]
    raise Reject(f"wrong type: expected text or messages, got {type(value).__name__}")


def as_response(value: Any) -> tuple[list[dict] | None, str]:
    """A response as (history before it or None, text): text, a message, or a conversation ending with it."""
    if isinstance(value, str):
        value = _decoded_messages(value)
        if isinstance(value, str):
            return None, value
    if isinstance(value, (bool, int, float)):  # a bare JSON scalar answer, e.g. true or 42
        return None, json.dumps(value)
    if isinstance(value, dict):
        return None, _message(value, "assistant")["content"]
    if isinstance(value, (list, tuple)) and value:
        messages = as_messages(list(value), "assistant")
        if messages[-1]["role"] != "assistant":
            raise Reject("unparseable conversation: does not end with an assistant turn")
        return messages[:-1], messages[-1]["content"]
    raise Reject(f"wrong type: expected response text, got {type(value).__name__}")


def as_score(value: Any, path: str | None = None) -> float:
    """A rating as float: numbers, numeric text, or an object with an `overall`/`score` entry."""
    value = decode_text(value)
    if isinstance(value, dict):
        for key in ("overall", "overall_score", "score", "rating"):
            if key in value:
                return as_score(value[key], path)
        raise Reject(f"bad score: '{path}' is an object; pick an entry with --map score={path}.<key>")
    if isinstance(value, bool):
        raise Reject(f"bad score: {value!r}")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise Reject(f"bad score: {str(value)[:40]!r}") from None
    if not math.isfinite(score):
        raise Reject(f"bad score: {value!r}")
    return score


def optional_score(record: dict, path: str | None) -> float | None:
    found = value(record, path, required=False)
    return None if found is None else as_score(found, path)


# --------------------------------------------------------------------------- labels

FIRST, SECOND = 1, -1
_LABEL_WORDS = {
    "1": FIRST, "a": FIRST, "left": FIRST, "first": FIRST, "model_a": FIRST, "response_a": FIRST,
    "output_1": FIRST, "response1": FIRST, "response_1": FIRST,
    "2": SECOND, "b": SECOND, "right": SECOND, "second": SECOND, "model_b": SECOND, "response_b": SECOND,
    "output_2": SECOND, "response2": SECOND, "response_2": SECOND,
    "0": 0, "tie": 0, "tie (bothbad)": 0, "both": 0, "equal": 0, "same": 0, "draw": 0, "none": 0,
    "both good": 0, "both bad": 0,
}


def label_scheme_for(values: Iterable[Any]) -> str:
    """'signed' (negative = first better, as HelpSteer2-preference) when any numeric label is < 0 or > 2."""
    for v in values:
        number = _number(v)
        if number is not None and (number < 0 or number > 2):
            return "signed"
    return "index"


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def parse_label(v: Any, scheme: str) -> int:
    """FIRST (+1), SECOND (-1) or 0 (tie) for one label.

    index: 1/2 name the better response, 0 is a tie, and a float in 1..2 is the probability-weighted
    preference of AlpacaEval (1.5 tie); signed: negative = first better, positive = second, 0 tie.
    Words: A/B, a/b, left/right, first/second, model_a/model_b, tie...
    """
    number = _number(v)
    if number is not None and math.isfinite(number):
        if scheme == "signed":
            return FIRST if number < 0 else SECOND if number > 0 else 0
        if number == 0 or number == 1.5:
            return 0
        if 1 <= number <= 2:
            return FIRST if number < 1.5 else SECOND
        raise Reject(f"bad label: {v!r}")
    if isinstance(v, str) and v.strip().lower() in _LABEL_WORDS:
        return _LABEL_WORDS[v.strip().lower()]
    raise Reject(f"bad label: {str(v)[:40]!r}")


# --------------------------------------------------------------------------- collecting pairs

def row_json(row: Any) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=True, default=str)


class Collector:
    """Gathers candidate pairs and rejects for one source; `drain()` returns (pairs, rejects) tables.

    Every candidate ends up in exactly one of the two, so per source: read = written + set aside.
    """

    def __init__(self, source: str, file: str, options: IngestOptions):
        self.source, self.file, self.options = source, file, options
        self.read = self.written = self.set_aside = self.ties_kept = 0
        self.reasons: dict[str, int] = {}
        self._reset()

    def _reset(self) -> None:
        self._cols: dict[str, list] = {k: [] for k in ("prompt", "chosen", "rejected", "chosen_score",
                                                        "rejected_score", "annotator_agreement", "tie", "meta",
                                                        "label_source", "source")}
        self._rejects: dict[str, list] = {k: [] for k in ("line", "reason", "row")}

    def reject(self, row: Any, line: int, reason: str) -> None:
        self.read += 1
        self.set_aside += 1
        key = reason.split(":")[0] if not reason.startswith("missing field") else reason
        self.reasons[key] = self.reasons.get(key, 0) + 1
        self._rejects["line"].append(line)
        self._rejects["reason"].append(reason)
        self._rejects["row"].append(row if isinstance(row, str) else row_json(row))

    def pair(self, *, row: Any, line: int, prompt: list[dict], chosen: str, rejected: str,
             chosen_score: float | None = None, rejected_score: float | None = None,
             agreement: float | None = None, tie: bool = False, meta: dict | str | None = None,
             label_source: str | None = None, source: str | None = None) -> None:
        """Check one candidate and keep it, or file it as a reject with the reason."""
        reason = self._problem(prompt, chosen, rejected)
        if reason is None and tie and not self.options.keep_ties:
            reason = TIE
        if reason is not None:
            self.reject(row, line, reason)
            return
        self.read += 1
        self.written += 1
        self.ties_kept += bool(tie)
        cols = self._cols
        cols["prompt"].append(prompt)
        cols["chosen"].append(chosen)
        cols["rejected"].append(rejected)
        cols["chosen_score"].append(chosen_score)
        cols["rejected_score"].append(rejected_score)
        cols["annotator_agreement"].append(agreement)
        cols["tie"].append(bool(tie))
        cols["meta"].append(meta)
        cols["label_source"].append(label_source or self.options.label_source)
        cols["source"].append(source or self.source)

    @staticmethod
    def _problem(prompt: list[dict], chosen: Any, rejected: Any) -> str | None:
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(text, str):
                return f"wrong type: {name} is {type(text).__name__}, expected text"
            if not text.strip():
                return f"empty text: {name}"
        if not prompt or not any(m["content"].strip() for m in prompt):
            return "empty text: prompt"
        if chosen == rejected:
            return "identical chosen and rejected"
        return None

    def drain(self) -> tuple[pa.Table, pa.Table]:
        cols = self._cols
        pairs = build_pairs(cols["prompt"], cols["chosen"], cols["rejected"], source=cols["source"],
                            chosen_score=cols["chosen_score"], rejected_score=cols["rejected_score"],
                            label_source=cols["label_source"], annotator_agreement=cols["annotator_agreement"],
                            tie=cols["tie"], meta=cols["meta"])
        n = len(self._rejects["line"])
        rejects = pa.Table.from_pydict({
            "source": [self.source] * n, "file": [self.file] * n, "line": self._rejects["line"],
            SET_ASIDE_REASON: self._rejects["reason"], SET_ASIDE_STAGE: ["ingest"] * n, "row": self._rejects["row"],
        }, schema=REJECTS_SCHEMA)
        self._reset()
        return pairs, rejects


class Adapter:
    """One raw layout. `convert` turns a batch into candidates on the Collector; `finish` flushes
    formats that group rows across batches (long multi-response, flat OASST messages)."""

    name = "?"
    expands = False  # one record may give several candidate pairs

    def __init__(self, options: IngestOptions, records: list[dict], file: str):
        self.options = options
        self.file = file
        self.sample = records[:64]
        self.fields = Fields(options.mapping, sample_columns(records))
        self.setup()

    def setup(self) -> None:
        pass

    def convert(self, batch: RawBatch, out: Collector) -> None:
        for record, line in zip(batch.records, batch.lines):
            try:
                self.record(record, line, out)
            except Reject as problem:
                out.reject(record, line, str(problem))

    def record(self, record: dict, line: int, out: Collector) -> None:
        raise NotImplementedError

    def finish(self, out: Collector) -> None:
        pass

    # helpers shared by adapters
    def prompt(self, record: dict) -> list[dict]:
        """Prompt messages: system + prompt (+ Alpaca-style `input` appended to `instruction`)."""
        fields = self.fields
        if "prompt" not in fields.paths:  # the prompt comes with the responses (conversations)
            return []
        messages = as_messages(value(record, fields.paths["prompt"]))
        extra = fields.paths.get("input")
        if extra:
            more = value(record, extra, required=False)
            if isinstance(more, str) and more.strip() and messages:
                messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{more}"}
        system = fields.paths.get("system")
        if system:
            text = value(record, system, required=False)
            if isinstance(text, str) and text.strip() and not (messages and messages[0]["role"] == "system"):
                messages = [{"role": "system", "content": text}] + messages
        return messages

    def with_responses(self, prompt: list[dict], raw_a: Any, raw_b: Any) -> tuple[list[dict], str, str]:
        """Two responses (text, messages, or conversations continuing `prompt`) against one prompt."""
        hist_a, a = as_response(raw_a)
        hist_b, b = as_response(raw_b)
        if (hist_a or []) != (hist_b or []):
            raise Reject("history mismatch: the two responses continue different conversations")
        if hist_a:  # the response lists repeat the prompt, or continue it
            prompt = hist_a if hist_a[:len(prompt)] == prompt else prompt + hist_a
        return prompt, a, b

    def resolve_prompt(self, *, required: bool = True) -> str | None:
        fields = self.fields
        path = fields.require("prompt", self.name, self.file) if required else fields.resolve("prompt")
        if path is not None and path.split(".")[0].lower() == "instruction":
            fields.resolve("input")
        fields.resolve("system")
        return path

    def meta(self, record: dict, line: int, **extra: Any) -> dict:
        return meta_of(record, self.fields.consumed(), format=self.name, line=line, **extra)
