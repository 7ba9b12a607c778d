"""oasst: Open Assistant message trees; ranked assistant siblings become pairs by rank (0 = best),
with the conversation from the root to their parent as the prompt.

Shapes: the tree export (`{message_tree_id, prompt: {..., replies: [...]}}`), a root message with
nested `replies`, or flat messages (`message_id`, `parent_id`, `rank`) grouped into trees per source.
Deleted messages and unranked replies are left out of the ranking.
"""

from __future__ import annotations

from typing import Any

from .base import Adapter, Collector, Reject, as_messages
from .expand import Scored, emit_expanded

_CHILDREN = ("replies", "children")
_MESSAGE_IDS = ("message_id", "parent_id", "message_tree_id", "lang", "rank", "role")


def tree_root(record: dict) -> dict | None:
    """The root message of a tree-shaped record, or None when the record is a flat message."""
    prompt = record.get("prompt")
    if isinstance(prompt, dict) and "text" in prompt:
        return prompt
    if "text" in record and any(isinstance(record.get(k), list) for k in _CHILDREN):
        return record
    return None


def looks_like_oasst(record: dict) -> bool:
    return tree_root(record) is not None or {"message_id", "parent_id", "text", "rank"} <= set(record)


def _children(node: dict) -> list[dict]:
    for key in _CHILDREN:
        if isinstance(node.get(key), list):
            return [c for c in node[key] if isinstance(c, dict)]
    return []


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() == "true")


def _rank(v: Any) -> int | None:
    if v is None or isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() in ("", "none", "null")):
        return None
    try:
        return int(float(v))
    except (TypeError, ValueError):
        raise Reject(f"bad rank: {str(v)[:20]!r}") from None


class Oasst(Adapter):
    name = "oasst"
    expands = True

    def setup(self) -> None:
        self.flat: list[tuple[dict, int]] = []

    def record(self, record: dict, line: int, out: Collector) -> None:
        root = tree_root(record)
        if root is None:  # flat message export: build trees once the source is read
            self.flat.append((record, line))
            return
        tree_id = record.get("message_tree_id") or root.get("message_tree_id") or root.get("message_id")
        self.emit_tree(root, record, line, out, tree_id)

    def emit_tree(self, root: dict, record: dict, line: int, out: Collector, tree_id: Any) -> None:
        """Walk one tree; every group of 2+ ranked assistant siblings becomes candidate pairs."""
        groups = []
        stack: list[tuple[dict, list[dict]]] = [(root, [])]
        while stack:
            node, history = stack.pop()
            if _truthy(node.get("deleted")):
                continue
            text = node.get("text")
            if not isinstance(text, str):
                raise Reject(f"missing field 'text' in message {node.get('message_id')}")
            history = history + as_messages({"role": node.get("role") or "user", "content": text})
            kids = [c for c in _children(node) if not _truthy(c.get("deleted"))]
            ranked = [(rank, c) for c in kids for rank in [_rank(c.get("rank"))]
                      if rank is not None and isinstance(c.get("text"), str) and c.get("role") in ("assistant", None)]
            if len(ranked) >= 2:
                responses = [Scored(c["text"], float(-rank), {k: c[k] for k in _MESSAGE_IDS if k in c})
                             for rank, c in ranked]
                groups.append((history, responses, node.get("message_id")))
            stack.extend((c, history) for c in reversed(kids))
        if not groups:
            out.reject(record, line, "no ranked assistant replies")
        for history, responses, parent_id in groups:
            meta = {"message_tree_id": tree_id, "parent_id": parent_id, "_ingest": {"line": line}}
            emit_expanded(out, prompt=history, responses=responses, line=line, meta=meta, fmt=self.name)

    def finish(self, out: Collector) -> None:
        if not self.flat:
            return
        nodes = {}
        for record, line in self.flat:
            nodes[str(record.get("message_id"))] = {**record, "replies": [], "_line": line}
        roots = []
        for node in nodes.values():
            parent = nodes.get(str(node.get("parent_id")))
            (parent["replies"] if parent is not None else roots).append(node)
        for root in roots:
            try:
                self.emit_tree(root, {k: v for k, v in root.items() if k != "replies"}, root["_line"], out,
                               root.get("message_tree_id") or root.get("message_id"))
            except Reject as problem:
                out.reject({k: v for k, v in root.items() if k != "replies"}, root["_line"], str(problem))
        self.flat = []
