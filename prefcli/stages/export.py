"""Training exports: the curated pairs in the shapes trainers read.

- `trl` (alias `trl-conversational`), `hf-dataset`, `parquet`: conversational rows. `prompt` is the
  message list, `chosen`/`rejected` one assistant message each; the trainer applies the model's chat
  template (TRL `DPOTrainer`/`RewardTrainer`; OpenRLHF with `--data.apply_chat_template --data.prompt_key prompt`).
- `trl-standard`: plain text for models without a chat template. The prompt is rendered with
  `PLAIN_CHAT_TEMPLATE` and ends with `Assistant:`; each response starts with one space, so
  prompt + response (what TRL and OpenRLHF concatenate) is exactly the rendered conversation.
- `openrlhf`: implicit-prompt conversations: `chosen`/`rejected` are the whole conversation (prompt
  messages + the assistant message), no `prompt` key. OpenRLHF's defaults (`prompt_key` None) with
  `--data.apply_chat_template` then see the prompt, for reward models and DPO alike.
- `jsonl`: every column, one JSON object per line (for a custom training job).

Training shapes leave out ties (`tie = true`) and exact repeats of (prompt, chosen, rejected), both
counted in the summary. `margin` is the vote's margin for the stored orientation, raised to
`margin_floor` (default 0: a reward loss never asks for a negative gap); `margin_signed` keeps the
signed value.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import io
from ..errors import InputError
from ..result import StageResult, mark_set_aside, row_tables, whole_table
from ..schema import MESSAGE_TYPE
from ..stage import Context, Params, Resources, Stage, option, register
from ..text import texts_for

FORMATS = ("trl", "trl-conversational", "trl-standard", "openrlhf", "jsonl", "hf-dataset", "parquet")
JSONL_FORMATS = ("trl", "trl-conversational", "trl-standard", "openrlhf", "jsonl")
SHAPE = {"trl": "conversational", "trl-conversational": "conversational", "trl-standard": "standard",
         "openrlhf": "implicit", "hf-dataset": "conversational", "parquet": "conversational", "jsonl": "all"}
# The text rendering of `trl-standard` as a chat template (set it as a base model's tokenizer.chat_template
# to render prompts the same way at inference). A prompt ends with "Assistant:", a response starts with " ".
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% else %}{{ m['role'] | capitalize }}: {{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}"
)


# Words that start a query or name a table; a row filter needs none of them. Checked before polars parses the
# expression, because polars runs table functions such as read_csv('/path') while it parses a subquery.
_QUERY_WORDS = {"select", "from", "with", "values", "table", "union", "intersect", "except", "join", "lateral",
                "unnest", "into", "copy", "attach", "pragma", "execute", "call"}
_SQL_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|([A-Za-z_][A-Za-z0-9_]*)\s*(\()?|(;)")


def check_where(expression: str | None) -> None:
    """Refuse anything but a filter over the table's own columns: no subqueries, table functions or
    statements. Runs before any data is read; one-line InputError naming the offending word."""
    if not expression:
        return
    quotes = expression.count("'") - 2 * expression.count("''")
    if quotes % 2:
        raise InputError(f"--where: unterminated string in '{expression}'")
    for match in _SQL_TOKENS.finditer(expression):
        word, call, semicolon = match.groups()
        if semicolon:
            raise InputError("--where: ';' is not allowed; give one filter expression over the table's columns")
        if word and word.lower() in _QUERY_WORDS:
            raise InputError(f"--where: '{word}' is not allowed; give a filter over the table's own columns "
                             f"(no subqueries or table functions)")
        if word and call and word.lower().startswith(("read_", "scan_")):
            raise InputError(f"--where: '{word}(' is not allowed; --where reads no files")


def filter_where(table: pa.Table, expression: str | None) -> pa.Table:
    """Rows where a polars SQL expression is true (null counts as false); one-line error otherwise."""
    return table if not expression else table.filter(where_mask(table, expression))


def where_mask(table: pa.Table, expression: str | None) -> pa.Array:
    """True for each row where a polars SQL expression is true (null counts as false)."""
    if not expression:
        return pa.array(np.ones(table.num_rows, bool))
    import polars as pl

    check_where(expression)
    try:
        frame = pl.from_arrow(table)
        parsed = pl.sql_expr(expression)
        unknown = [name for name in parsed.meta.root_names() if name not in frame.columns]
        if unknown:
            raise InputError(f"--where: unknown column '{unknown[0]}' in '{expression}'")
        mask = frame.select(parsed.alias("__where__")).to_series()
    except pl.exceptions.ColumnNotFoundError as exc:
        found = re.search(r'column "([^"]+)"', str(exc))
        name = found.group(1) if found else _first_line(exc).split(";")[0]
        raise InputError(f"--where: unknown column '{name}' in '{expression}'") from None
    except (pl.exceptions.PolarsError, ValueError, TypeError) as exc:
        raise InputError(f"--where: cannot evaluate '{expression}' ({_first_line(exc)})") from None
    if mask.dtype != pl.Boolean:
        raise InputError(f"--where: '{expression}' is not a condition (it gives {mask.dtype}, expected Boolean)")
    if len(mask) != table.num_rows:  # an aggregate such as `count(*) > 1`
        raise InputError(f"--where: '{expression}' does not give one value per row")
    return pa.array(mask.fill_null(False).to_numpy())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def assistant_messages(texts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Each text as a one-message list [{role: assistant, content: text}] (vectorised)."""
    content = (texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts).cast(pa.large_string())
    n = len(content)
    roles = pa.repeat(pa.scalar("assistant", pa.large_string()), n)
    structs = pa.StructArray.from_arrays([roles, content], fields=list(MESSAGE_TYPE))
    return pa.LargeListArray.from_arrays(pa.array(np.arange(n + 1), pa.int64()), structs)


def render_prompt(messages: Sequence[dict]) -> str:
    """A prompt as `PLAIN_CHAT_TEMPLATE` renders it with the generation prompt: ends with "Assistant:"."""
    turns = [m["content"] if m["role"] == "system" else f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(turns + ["Assistant:"])


def conversations(prompts: pa.ChunkedArray, responses: pa.ChunkedArray) -> pa.Array:
    """Each prompt's message list followed by the response as one assistant message (vectorised)."""
    prompts = prompts.combine_chunks() if isinstance(prompts, pa.ChunkedArray) else prompts
    answers = assistant_messages(responses)
    n = len(prompts)
    lengths = pc.fill_null(pc.list_value_length(prompts), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths + 1, out=offsets[1:])
    order = np.empty(int(offsets[-1]), np.int64)  # where each flattened message comes from
    prompt_values = pc.list_flatten(prompts).cast(answers.type.value_type)
    for_prompt = np.ones(len(order), bool)
    for_prompt[offsets[1:] - 1] = False
    order[for_prompt] = np.arange(len(prompt_values))
    order[~for_prompt] = len(prompt_values) + np.arange(n)
    values = pa.concat_arrays([prompt_values, answers.values]).take(pa.array(order))
    return pa.LargeListArray.from_arrays(pa.array(offsets), values)


def oriented_margin(table: pa.Table) -> pa.ChunkedArray:
    """`margin` for the stored orientation (missing -> 0), signed.

    A pair humans flipped in `review import` after the vote still carries the vote's margin for the
    old orientation (the review stage may not rewrite vote columns); it is negated here until
    `prefcli vote` is re-run (detected as margin still equal to its `review_margin` snapshot).
    """
    margin = pc.fill_null(table.column("margin").cast(pa.float64()), 0.0)
    if "review_flipped" in table.column_names and "review_margin" in table.column_names:
        stale = pc.fill_null(pc.and_(table.column("review_flipped"),
                                     pc.equal(margin, table.column("review_margin").cast(pa.float64()))), False)
        margin = pc.if_else(stale, pc.negate(margin), margin)
    return margin


def training_table(table: pa.Table, fmt: str, *, keep: Sequence[str] = (), margin_floor: float = 0.0) -> pa.Table:
    """The rows in `fmt`'s shape, plus `margin` (floored) and `margin_signed` when present, and `keep` columns."""
    if fmt not in FORMATS:
        raise InputError(f"--to: expected one of {', '.join(FORMATS)}, got '{fmt}'")
    missing = [c for c in keep if c not in table.column_names]
    if missing:
        raise InputError(f"--keep: unknown column '{missing[0]}'")
    shape = SHAPE[fmt]
    if shape == "all":
        return table
    columns: dict[str, Any] = {}
    if shape == "standard":
        prompts = [render_prompt(m) for m in table.column("prompt").to_pylist()]
        columns["prompt"] = pa.array(prompts, pa.large_string())
        for side in ("chosen", "rejected"):  # one space after "Assistant:"
            columns[side] = pc.utf8_replace_slice(table.column(side).cast(pa.large_string()), 0, 0, " ")
    elif shape == "implicit":
        columns["chosen"] = conversations(table.column("prompt"), table.column("chosen"))
        columns["rejected"] = conversations(table.column("prompt"), table.column("rejected"))
    else:
        columns["prompt"] = table.column("prompt")
        columns["chosen"] = assistant_messages(table.column("chosen"))
        columns["rejected"] = assistant_messages(table.column("rejected"))
    if "margin" in table.column_names:
        signed = oriented_margin(table)
        columns["margin"] = pc.max_element_wise(signed, pa.scalar(float(margin_floor)))
        columns["margin_signed"] = signed
    for name in keep:
        columns.setdefault(name, table.column(name))
    return pa.table(columns)


def repeated_rows(table: pa.Table, seen: set[bytes] | None = None) -> np.ndarray:
    """True for every row whose (prompt, chosen, rejected) already appeared earlier in the table, or in `seen`
    (the 16-byte digests of earlier batches' rows; this batch's are added), so a stream keeps keys, not texts."""
    import hashlib

    if table.num_rows == 0:
        return np.zeros(0, bool)
    prompts = texts_for(table, "prompt")
    roles = ["\x1f".join(m["role"] for m in p) for p in table.column("prompt").to_pylist()]
    seen = set() if seen is None else seen
    repeated = np.zeros(table.num_rows, bool)
    for i, parts in enumerate(zip(prompts, roles, table.column("chosen").to_pylist(),
                                  table.column("rejected").to_pylist())):
        digest = hashlib.blake2b(digest_size=16)
        for part in parts:  # length-prefixed: no two different rows give the same bytes
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little") + data)
        key = digest.digest()
        if key in seen:
            repeated[i] = True
        else:
            seen.add(key)
    return repeated


def export_pairs(table: pa.Table, fmt: str, *, where: str | None = None, keep: Sequence[str] = (),
                 shuffle: bool = False, seed: int = 0, margin_floor: float = 0.0,
                 keep_repeats: bool = False, seen: set[bytes] | None = None) -> StageResult:
    """Filter (--where), drop ties and exact repeats from training shapes, optionally shuffle, reshape.
    The rows left out are the result's `set_aside`, each with its reason (where, tie, repeat)."""
    rows_in = table.num_rows
    keep_rows = where_mask(table, where)
    left_out = [mark_set_aside(table.filter(pc.invert(keep_rows)), "where", "export")]
    selected = table.filter(keep_rows)
    stats: dict[str, Any] = {"rows_in": rows_in, "filtered_out": rows_in - selected.num_rows, "format": fmt}
    if SHAPE.get(fmt) != "all":
        ties = pc.fill_null(selected.column("tie"), False)
        stats["ties_left_out"] = int(pc.sum(ties.cast(pa.int64())).as_py() or 0)
        left_out.append(mark_set_aside(selected.filter(ties), "tie", "export"))
        selected = selected.filter(pc.invert(ties))
        repeats = np.zeros(selected.num_rows, bool) if keep_repeats else repeated_rows(selected, seen)
        stats["repeats_left_out"] = int(repeats.sum())
        left_out.append(mark_set_aside(selected.filter(pa.array(repeats)), "repeat", "export"))
        selected = selected.filter(pa.array(~repeats))
        if "dedup_is_rep" in selected.column_names:  # training on non-representatives repeats near-duplicates
            stats["non_representatives"] = int(pc.sum(pc.invert(pc.fill_null(selected.column("dedup_is_rep"), True))
                                                      .cast(pa.int64())).as_py() or 0)
    if "margin" in selected.column_names:
        stats["margin_missing"] = selected.column("margin").null_count
    if shuffle:
        selected = selected.take(pa.array(np.random.default_rng(seed).permutation(selected.num_rows)))
    out = training_table(selected, fmt, keep=keep, margin_floor=margin_floor)
    stats["rows_out"] = out.num_rows
    stats["has_margin"] = "margin" in out.column_names
    if stats["has_margin"] and SHAPE.get(fmt) != "all":
        stats["margin_floor"] = margin_floor
        stats["margins_raised"] = int(pc.sum(pc.less(out.column("margin_signed"), margin_floor)
                                             .cast(pa.int64())).as_py() or 0)
    return StageResult(out=out, set_aside=pa.concat_tables(left_out), stats=stats)


def iter_rows(rows, batch_rows: int = 4096) -> Iterator[dict]:
    """Python dicts batch by batch (of a table, or of rows left on a cluster), for streaming JSONL writes."""
    for table in row_tables(rows):
        for batch in table.to_batches(max_chunksize=batch_rows):
            yield from batch.to_pylist()


def write_jsonl(rows, path) -> None:
    """JSON lines, written as they are made (never the whole file's text in memory)."""
    with open(path, "w", encoding="utf-8") as fh:
        for table in row_tables(rows):
            fh.write("".join(io.jsonl_lines(iter_rows(table))))


def to_hf_dataset(table: pa.Table):
    """An in-memory `datasets.Dataset` over the same Arrow data."""
    import datasets

    return datasets.Dataset(datasets.table.InMemoryTable(table))


class ExportParams(Params):
    to: Literal[FORMATS] = option(..., "Training shape.")
    where: str | None = option(None, "Keep rows where this polars SQL expression is true, e.g. "
                                     "\"pref_bucket != 'incorrect' AND dedup_is_rep\".")
    keep: str | None = option(None, "Extra columns to carry, comma-separated (e.g. pair_id,source).")
    shuffle: bool = option(False, "Shuffle rows (with --seed).")
    margin_floor: float = option(0.0, "The written `margin` is at least this (a reward loss never asks for a "
                                      "negative gap); `margin_signed` keeps the vote's signed value.")
    keep_repeats: bool = option(False, "Keep exact repeats of (prompt, chosen, rejected) in the training shapes "
                                       "(left out by default).")
    push_to_hub: str | None = option(None, "Also push the rows as a Hugging Face dataset to this repo id "
                                           "(needs a login).")
    private: bool = option(False, "With --push-to-hub: create a private repo.")


@register
class ExportStage(Stage):
    """Write the pairs in the shape a trainer reads; --where filters first.

    `run` gives the reshaped rows (`out`) and the rows left out (`set_aside`: where, tie, repeat); `write`
    puts them in the file format of --to, and --push-to-hub pushes them once the files are committed."""

    name = "export"
    Params = ExportParams
    summary = ("Write curated pairs for training: TRL (conversational or standard text), OpenRLHF JSONL, plain "
               "JSONL, HF datasets directory, or Parquet; --where filters.")
    output = "dir"  # a file, or a directory for --to hf-dataset (see output_kind); either may be replaced
    engines = ("local", "ray")
    resources = Resources(mode="batch", batch_size=8192,
                          on_ray="map_batches over tasks (filter, ties, reshape), unless --shuffle or the dropping "
                                 "of exact repeats (every training shape without --keep-repeats) needs the whole "
                                 "table: then one Ray task on a worker")

    def batchwise(self) -> bool:
        """Rows are independent unless --shuffle, or repeats are dropped (a repeat is global)."""
        return not self.params.shuffle and (self.params.keep_repeats or SHAPE.get(self.params.to) == "all")

    def streams(self) -> bool:
        """In input order, batch by batch, unless --shuffle: repeats are found against the digests of the rows
        seen so far."""
        return not self.params.shuffle

    def start_stream(self) -> None:
        self._seen = set()
    output_help = "File (directory for hf-dataset), or - for stdout (JSONL formats and parquet)."
    uses_seed = True

    def output_kind(self, call) -> str:
        return "dir" if self.params.to == "hf-dataset" else "file"

    def takes_row_blocks(self) -> bool:
        return True

    def validate(self, call) -> None:
        if call.output is None and not self.params.push_to_hub:
            raise InputError("--output: give -o PATH (or - for stdout), or --push-to-hub REPO")
        if call.output == io.STDIO and self.params.to == "hf-dataset":
            raise InputError("-o -: hf-dataset is a directory; use --to jsonl or parquet for stdout")

    def check(self, ctx: Context) -> None:
        check_where(self.params.where)

    def run(self, table: pa.Table, ctx: Context) -> StageResult:
        p = self.params
        columns = [c.strip() for c in (p.keep or "").split(",") if c.strip()]
        return export_pairs(table, p.to, where=p.where, keep=columns, shuffle=p.shuffle, seed=ctx.seed,
                            margin_floor=p.margin_floor, keep_repeats=p.keep_repeats,
                            seen=getattr(self, "_seen", None))

    def write(self, plan, paths: dict[str, str], result: StageResult) -> None:
        self._written = (paths.get("output"), result.out)
        output, to, rows = paths.get("output"), self.params.to, result.out
        if output is None:
            return
        if to in JSONL_FORMATS and output == io.STDIO:
            plan.write(output, "".join(io.jsonl_lines(iter_rows(rows))))
        elif to in JSONL_FORMATS:
            plan.write_with(output, lambda tmp: write_jsonl(rows, tmp))
        elif to == "parquet":
            plan.write(output, rows)
        else:
            plan.write_with(output, lambda tmp: save_dataset_to(to_hf_dataset(whole_table(rows)), tmp))

    def final_stats(self, result: StageResult, rows_in: int, seconds: float) -> dict[str, Any]:
        output = getattr(self, "_written", (None, None))[0]
        return dict(result.stats, output=output or "", pushed_to=self.params.push_to_hub or "")

    def after_write(self, stats: dict[str, Any]) -> None:
        """--push-to-hub, once the files are committed."""
        if self.params.push_to_hub:
            push(whole_table(self._written[1]), self.params.push_to_hub, self.params.private)


def push(table: pa.Table, repo: str, private: bool) -> None:
    """Push to the Hugging Face Hub; only ever called when the user asked with --push-to-hub."""
    try:
        to_hf_dataset(table).push_to_hub(repo, private=private)
    except Exception as exc:  # auth, network, offline mode, bad repo id: all "could not push"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--push-to-hub {repo}: could not push ({text[:200]})") from None


def save_dataset_to(dataset, directory: str | os.PathLike) -> None:
    """`datasets.Dataset.save_to_disk` into a new directory (an OutputPlan's staged temp)."""
    import datasets

    datasets.disable_progress_bars()  # no bars in cron logs
    dataset.save_to_disk(str(directory))
