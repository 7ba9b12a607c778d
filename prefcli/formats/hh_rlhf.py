"""hh-rlhf: `chosen`/`rejected` are whole `\\n\\nHuman: ...\\n\\nAssistant: ...` transcripts that share the
history and differ in the last assistant turn."""

from __future__ import annotations

import re

from .base import Reject

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant|H|A|User|System):[ \t]?")
_ROLES = {"Human": "user", "H": "user", "User": "user", "Assistant": "assistant", "A": "assistant",
          "System": "system"}


def looks_like_transcript(text: object) -> bool:
    return isinstance(text, str) and "Human:" in text and "Assistant:" in text


def parse_transcript(text: str) -> tuple[list[dict], str]:
    """(history messages, last assistant response) of one transcript; Reject when it is not one."""
    if not looks_like_transcript(text):
        raise Reject("unparseable transcript: no Human:/Assistant: turns")
    marks = list(_TURN.finditer(text))
    if not marks or text[:marks[0].start()].strip():
        raise Reject("unparseable transcript: text before the first turn")
    turns = []
    for mark, nxt in zip(marks, marks[1:] + [None]):
        end = nxt.start() if nxt else len(text)
        turns.append({"role": _ROLES[mark.group(1)], "content": text[mark.end():end].strip()})
    if turns[-1]["role"] != "assistant":
        raise Reject("unparseable transcript: does not end with an Assistant turn")
    return turns[:-1], turns[-1]["content"]
