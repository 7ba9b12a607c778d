"""Ingest fast path: whole batches of the common layouts converted with pyarrow, not record by record.

Layouts: trl standard (`prompt`, `chosen`, `rejected` text) and pairwise (prompt, two texts and a label),
all in Arrow; trl conversational (role/content message lists) and hh-rlhf transcripts, split row by row
with the adapters' own functions, the rest in Arrow. Fields are plain top-level columns; other columns
(for `meta`) hold text, integers or booleans. A row is taken here only when the
per-record path would certainly write it as a pair; every other row (a null or missing field, a value
that is not text, empty or identical texts, text that may hold JSON messages, a label that is not a clear
verdict, ...) goes through the adapter as before, so reasons and lines stay exact. The pairs come out
with the same values, order and chunk sizes as on the per-record path.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..io import ColumnarBatch
from ..pairs import build_pairs
from ..schema import pair_schema
from ..text import normalize
from .base import SECOND, Adapter, Collector, Reject, parse_label

# Python's whitespace (str.isspace, the `\s` of str patterns, what str.strip removes), as an RE2 class.
PY_SPACE = (r"\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}"
            r"\x{205f}\x{3000}")
_HAS_TEXT = f"[^{PY_SPACE}]"
_MAY_BE_JSON = f"^[{PY_SPACE}]*[\\[{{]"  # decode_text would try it as JSON messages
_NOT_SIMPLE = r"[\t\n\x0b\x0c\r\x1c-\x1f]|  |^ | $"  # whitespace that normalize would change
_PLAIN_PATH = re.compile(r"[^.\[\]]+")
_INDEX = re.compile(r"-?\d+")


class Plan:
    """What the fast path needs to know about one source's adapter."""

    def __init__(self, adapter: Adapter, kind: str):
        paths = adapter.fields.paths
        self.adapter, self.kind, self.paths = adapter, kind, dict(paths)
        self.texts = ("first", "second") if kind == "pairwise" else ("chosen", "rejected")
        self.checked = self.texts if kind == "implicit" else ("prompt", *self.texts)
        self.consumed = adapter.fields.consumed()
        self.name = json.dumps(adapter.name, ensure_ascii=False)


def plan_for(adapter: Adapter) -> Plan | None:
    """A Plan when the adapter's layout has a fast path, else None."""
    from .pairwise import Pairwise
    from .trl import HhRlhf, Trl

    paths = adapter.fields.paths
    if type(adapter) is Trl and set(paths) == {"prompt", "chosen", "rejected"}:
        kind = "trl"
    elif type(adapter) in (Trl, HhRlhf) and set(paths) == {"chosen", "rejected"}:
        kind = "implicit"  # hh-rlhf transcripts (or conversations: those go per record)
    elif type(adapter) is Pairwise and set(paths) == {"prompt", "first", "second", "label"}:
        kind = "pairwise"
    else:
        return None
    if not all(_PLAIN_PATH.fullmatch(p) and not _INDEX.fullmatch(p) for p in paths.values()):
        return None
    return Plan(adapter, kind)


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_boolean(t):
        return "bool"
    if ((pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type)
            and sorted(f.name for f in t.value_type) == ["content", "role"]
            and all(_kind(f.type) == "text" for f in t.value_type)):
        return "messages"  # only as a prompt or response (not in meta)
    return None


_OTHER_CONTROL = r"[\x00-\x09\x0b-\x1f]"
_TO_ESCAPE = r'["\\\x00-\x1f]'
_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"))


def _escaped(texts: pa.Array, maybe: bool = True) -> pa.Array:
    """json.dumps(t, ensure_ascii=False) of each string without its quotes: texts with nothing to escape
    as they are, the rest in Arrow, and the few with control characters other than newlines in Python."""
    if not maybe or not pc.any(pc.match_substring_regex(texts, _TO_ESCAPE)).as_py():
        return texts
    out = texts
    for old, new in _ESCAPES:
        out = pc.replace_substring(out, old, new)
    other = pc.match_substring_regex(texts, _OTHER_CONTROL)
    if pc.any(other).as_py():
        rows = np.flatnonzero(other.to_numpy(zero_copy_only=False))
        exact = [json.dumps(t, ensure_ascii=False)[1:-1] for t in texts.take(pa.array(rows)).to_pylist()]
        out = pc.replace_with_mask(out, other, pa.array(exact, out.type))
    return out


def _json_pieces(prefix: str, values: pa.Array, kind: str, escapes: bool) -> list:
    """Arguments for binary_join_element_wise giving prefix + json.dumps(value) per row."""
    if kind == "text":
        return [prefix + '"', _escaped(values, escapes), '"']
    if kind == "bool":
        return [prefix, pc.if_else(values, "true", "false")]
    return [prefix, pc.cast(values, pa.string())]


def _digest(texts: pa.Array) -> list[str]:
    blake2b = hashlib.blake2b
    return [blake2b(t, digest_size=16).hexdigest() for t in pc.cast(texts, pa.large_binary()).to_pylist()]


def _normalized(prompts: pa.Array) -> pa.Array:
    """text.normalize of each prompt: plain lowercasing for ASCII text with single inner spaces (NFKC and
    casefold change nothing else there), Python's normalize for the rest."""
    simple = pc.and_(pc.string_is_ascii(prompts), pc.invert(pc.match_substring_regex(prompts, _NOT_SIMPLE)))
    out = pc.ascii_lower(prompts)
    if not pc.all(simple).as_py():
        other = pc.invert(simple)
        rows = np.flatnonzero(other.to_numpy(zero_copy_only=False))
        exact = [normalize(t) for t in prompts.take(pa.array(rows)).to_pylist()]
        out = pc.replace_with_mask(out, other, pa.array(exact, out.type))
    return out


def _plain(array: pa.Array) -> pa.Array:
    """A large_string array laid out as pa.array builds it (no validity buffer without nulls)."""
    array = pa.concat_arrays([array.cast(pa.large_string())])
    if array.null_count == 0 and array.buffers()[0] is not None:
        array = pa.Array.from_buffers(array.type, len(array), [None, *array.buffers()[1:]], offset=array.offset)
    return array


def _verdicts(plan: Plan, labels: pa.ChunkedArray) -> pa.Array:
    """parse_label of each label (1 first, -1 second, 0 tie), null where it would be set aside."""
    values = [v for v in pc.unique(labels).to_pylist() if v is not None]
    codes = []
    for v in values:
        try:
            codes.append(parse_label(v, plan.adapter.scheme))
        except Reject:
            codes.append(None)
    index = pc.index_in(labels, value_set=pa.array(values, labels.type))
    return pc.take(pa.array(codes, pa.int8()), index).combine_chunks() if values else pa.nulls(len(labels), pa.int8())


def convert(plan: Plan, batch: ColumnarBatch, out: Collector) -> tuple[pa.Table, pa.Table] | None:
    """(pairs, rejects) of one batch, as the per-record path gives them; None when the batch
    does not fit the fast path at all (the caller then reads it record by record)."""
    table = batch.table
    if table is None or table.num_rows == 0:
        return None
    columns = table.column_names
    kinds = {c: _kind(table.schema.field(c).type) for c in columns}
    paths = plan.paths
    if "_ingest" in kinds or len(kinds) != len(columns) or any(paths[role] not in kinds for role in paths):
        return None
    roles = {paths[role]: kinds[paths[role]] for role in plan.checked}
    if None in kinds.values() or any(k == "messages" for c, k in kinds.items() if c not in roles) \
            or any(k not in ("text", "messages") for k in roles.values()):
        return None
    rowwise = plan.kind == "implicit" or "messages" in roles.values()
    if rowwise and plan.kind == "pairwise":
        return None

    ok = None
    for c in columns:
        valid = pc.is_valid(table[c])
        ok = valid if ok is None else pc.and_(ok, valid)
    for role in plan.checked:
        col = table[paths[role]]
        if roles[paths[role]] == "messages":
            ok = pc.and_(ok, _clean_messages(col))
            continue
        ok = pc.and_(ok, pc.match_substring_regex(col, _HAS_TEXT))
        ok = pc.and_(ok, pc.invert(pc.match_substring_regex(col, _MAY_BE_JSON)))
    if all(roles[paths[role]] == "text" for role in plan.texts):
        first, second = (table[paths[role]] for role in plan.texts)
        ok = pc.and_(ok, pc.not_equal(first, second))
    verdicts = None
    if plan.kind == "pairwise":
        verdicts = _verdicts(plan, table[paths["label"]])
        ok = pc.and_(ok, pc.is_valid(verdicts))
        if not out.options.keep_ties:
            ok = pc.and_(ok, pc.not_equal(verdicts, 0))
    mask = pc.fill_null(ok, False).to_numpy(zero_copy_only=False)
    split = _rowwise(plan, table, mask) if rowwise else None
    fast_rows = np.flatnonzero(mask)
    slow_rows = np.flatnonzero(~mask)

    records, problems = batch.records(slow_rows.tolist())
    if problems:  # cannot happen when pyarrow read the batch; keep the per-record order of rejects
        return None
    adapter = plan.adapter
    slow_pair_rows = []
    for record, row in zip(records, slow_rows.tolist()):
        line, before = batch.lines[row], out.written
        try:
            adapter.record(record, line, out)
        except Reject as problem:
            out.reject(record, line, str(problem))
        if out.written > before:
            slow_pair_rows.append(row)
    slow_pairs, rejects = out.drain()

    if split is not None:
        pairs = _implicit_pairs(plan, batch, fast_rows, split, out)
    else:
        pairs = _fast_pairs(plan, batch, fast_rows, verdicts, out)
    if slow_pairs.num_rows:
        order = np.argsort(np.concatenate([fast_rows, np.array(slow_pair_rows, dtype=fast_rows.dtype)]),
                           kind="stable")
        merged = pa.concat_tables([pairs, slow_pairs]).take(pa.array(order))
        pairs = pa.Table.from_pydict({c: merged[c].combine_chunks() for c in merged.column_names},
                                     schema=pair_schema())
    return pairs, rejects


def _metas(plan: Plan, batch: ColumnarBatch, sub: pa.Table, line_texts: pa.Array, swap: pa.Array | None) -> pa.Array:
    """meta of each row: the unconsumed columns and `_ingest`, as json.dumps(sort_keys=True) writes them."""
    table, paths, escapes = batch.table, plan.paths, batch.escapes
    parts: dict[str, list] = {}
    for c in table.column_names:
        if c not in plan.consumed:
            parts[c] = _json_pieces(json.dumps(c, ensure_ascii=False) + ": ", sub[c].combine_chunks(),
                                    _kind(table.schema.field(c).type), escapes)
    if plan.kind == "pairwise":
        label = paths["label"]
        a, b = json.dumps(paths["first"], ensure_ascii=False), json.dumps(paths["second"], ensure_ascii=False)
        parts["_ingest"] = ['"_ingest": {"chosen": ', pc.if_else(swap, b, a),
                            *_json_pieces(f', "format": {plan.name}, "label": ', sub[label].combine_chunks(),
                                          _kind(table.schema.field(label).type), escapes),
                            ', "line": ', line_texts, ', "rejected": ', pc.if_else(swap, a, b), "}"]
    else:
        parts["_ingest"] = [f'"_ingest": {{"format": {plan.name}, "line": ', line_texts, "}"]
    pieces: list = ["{"]
    for i, key in enumerate(sorted(parts)):
        pieces.extend(([", "] if i else []) + parts[key])
    pieces.append("}")
    merged: list = []  # neighbouring literals as one argument
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    return pc.binary_join_element_wise(*merged, "")


def _fast_pairs(plan: Plan, batch: ColumnarBatch, rows: np.ndarray, verdicts: pa.Array | None,
                out: Collector) -> pa.Table:
    table, lines, escapes = batch.table, batch.lines, batch.escapes
    n = len(rows)
    take = pa.array(rows, pa.int64())
    sub = table.take(take)
    paths = plan.paths
    first, second = (sub[paths[role]].combine_chunks() for role in plan.texts)
    prompts = sub[paths["prompt"]].combine_chunks()
    line_texts = pc.cast(pa.array([lines[i] for i in rows.tolist()], pa.int64()), pa.string())
    if verdicts is not None:
        verdict = verdicts.take(take)
        swap = pc.equal(verdict, SECOND)
        chosen, rejected = pc.if_else(swap, second, first), pc.if_else(swap, first, second)
        ties = pc.equal(verdict, 0)
    else:
        chosen, rejected, ties = first, second, pa.array(np.zeros(n, dtype=bool))
    p_esc, c_esc, r_esc = (_escaped(a, escapes) for a in (prompts, chosen, rejected))
    # text.pair_id: the digest of json.dumps([[["user", prompt]], chosen, rejected], ensure_ascii=False)
    pair_ids = _digest(pc.binary_join_element_wise('[[["user", "', p_esc, '"]], "', c_esc, '", "', r_esc, '"]', ""))
    prompt_ids = _digest(_normalized(prompts))

    metas = _metas(plan, batch, sub, line_texts, swap if verdicts is not None else None)

    schema = pair_schema()
    prompt = pa.LargeListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int64)),
        pa.StructArray.from_arrays([pa.array(["user"] * n, pa.large_string()), _plain(prompts)],
                                   fields=list(schema.field("prompt").type.value_type)))
    columns = {
        "pair_id": pair_ids, "prompt_id": prompt_ids, "source": [out.source] * n, "prompt": prompt,
        "chosen": _plain(chosen), "rejected": _plain(rejected), "chosen_score": [None] * n,
        "rejected_score": [None] * n, "label_source": [out.options.label_source] * n,
        "annotator_agreement": [None] * n, "tie": ties.to_pylist(), "meta": _plain(metas),
    }
    out.read += n
    out.written += n
    out.ties_kept += sum(columns["tie"])
    return pa.Table.from_pydict(columns, schema=schema)


def _clean_messages(col: pa.ChunkedArray) -> pa.Array:
    """Rows whose message list has no null message, role or content (a null may be a missing key,
    which the per-record path reports as it is)."""
    col = col.combine_chunks()
    items = pc.list_flatten(col)
    bad = pc.invert(pc.and_(pc.is_valid(items), pc.and_(pc.is_valid(pc.struct_field(items, "role")),
                                                         pc.is_valid(pc.struct_field(items, "content")))))
    bad = pc.fill_null(bad, True).to_numpy(zero_copy_only=False)
    ok = np.ones(len(col), dtype=bool)
    if bad.any():
        ok[np.unique(pc.list_parent_indices(col).to_numpy()[bad])] = False
    return pa.array(ok)


def _rowwise(plan: Plan, table: pa.Table, mask: np.ndarray) -> dict[int, tuple]:
    """Prompt and responses of each candidate row, by the adapter's own per-record functions
    (transcripts, message lists); rows they or the Collector's checks would set aside are dropped
    from `mask`."""
    from .trl import split_implicit

    adapter, paths = plan.adapter, plan.paths
    rows = np.flatnonzero(mask)
    take = pa.array(rows, pa.int64())
    chosen = table[paths["chosen"]].take(take).to_pylist()
    rejected = table[paths["rejected"]].take(take).to_pylist()
    prompts = table[paths["prompt"]].take(take).to_pylist() if "prompt" in paths else [None] * len(rows)
    found = {}
    for row, p, c, r in zip(rows.tolist(), prompts, chosen, rejected):
        try:
            if p is None:
                prompt, c_text, r_text = split_implicit(c, r)
            else:
                prompt, c_text, r_text = adapter.with_responses(adapter.prompt({paths["prompt"]: p}), c, r)
        except Reject:
            mask[row] = False
            continue
        if Collector._problem(prompt, c_text, r_text) is not None:
            mask[row] = False
            continue
        found[row] = (prompt, c_text, r_text)
    return found


def _implicit_pairs(plan: Plan, batch: ColumnarBatch, rows: np.ndarray, split: dict[int, tuple],
                    out: Collector) -> pa.Table:
    n = len(rows)
    sub = batch.table.take(pa.array(rows, pa.int64()))
    line_texts = pc.cast(pa.array([batch.lines[i] for i in rows.tolist()], pa.int64()), pa.string())
    parsed = [split[row] for row in rows.tolist()]
    out.read += n
    out.written += n
    return build_pairs([p for p, _, _ in parsed], [c for _, c, _ in parsed], [r for _, _, r in parsed],
                       source=[out.source] * n, chosen_score=[None] * n, rejected_score=[None] * n,
                       label_source=[out.options.label_source] * n, annotator_agreement=[None] * n,
                       tie=[False] * n, meta=_metas(plan, batch, sub, line_texts, None).to_pylist())
