"""The canonical pair schema, built from prefcli/schemas/pairs.v1.json (the one source of truth).

`validate` checks a table against it and returns it cast to the canonical Arrow types;
`with_stage_columns` is how a stage adds its prefixed columns without touching others'.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from .errors import SchemaError

SCHEMA_VERSION = 1
_SCHEMA_FILE = f"pairs.v{SCHEMA_VERSION}.json"

MESSAGE_TYPE = pa.struct([("role", pa.large_string()), ("content", pa.large_string())])
MESSAGES_TYPE = pa.large_list(MESSAGE_TYPE)
ROLES = ("system", "user", "assistant")

_TYPES = {
    "string": pa.large_string(),
    "float64": pa.float64(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
    "messages": MESSAGES_TYPE,
}


@lru_cache(maxsize=1)
def schema_document() -> dict:
    """The packaged schema document, prefcli/schemas/pairs.v1.json (package data)."""
    return json.loads(resources.files(__package__).joinpath("schemas", _SCHEMA_FILE).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def pair_schema() -> pa.Schema:
    """Arrow schema of the core columns, in canonical order."""
    fields = []
    for col in schema_document()["columns"]:
        fields.append(pa.field(col["name"], _TYPES[col["type"]], nullable=col["nullable"]))
    return pa.schema(fields)


def core_columns() -> list[str]:
    return [c["name"] for c in schema_document()["columns"]]


def stage_of(column: str) -> str | None:
    """The stage that owns a non-core column, or None when no stage claims it."""
    for stage, spec in schema_document()["stage_columns"].items():
        if column in spec["columns"] or any(column.startswith(p) for p in spec["prefixes"]):
            return stage
    return None


def _same_kind(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual == expected:
        return True
    if pa.types.is_null(actual):
        return True
    stringy = (pa.types.is_string, pa.types.is_large_string, getattr(pa.types, "is_string_view", lambda t: False))
    if any(f(expected) for f in stringy):
        return any(f(actual) for f in stringy)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_large_list(expected):
        if not (pa.types.is_list(actual) or pa.types.is_large_list(actual) or pa.types.is_list_view(actual)):
            return False
        item = actual.value_type
        return pa.types.is_struct(item) and {item.field(i).name for i in range(item.num_fields)} >= {"role", "content"}
    return False


def validate(table: pa.Table, *, where: str = "input", require_stage: Mapping[str, str] | None = None) -> pa.Table:
    """Check the core columns and return the table with them cast to canonical types.

    `require_stage` maps extra required column -> hint, e.g. {"pref_mean": "run `prefcli vote` first"}.
    Raises SchemaError with one line naming the file (`where`), column and, for bad values, the row.
    """
    schema = pair_schema()
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SchemaError(f"{where}: missing column '{missing[0]}' (expected the pairs v{SCHEMA_VERSION} schema; "
                          f"run `prefcli ingest` to convert raw data)")
    for name, hint in (require_stage or {}).items():
        if name not in table.column_names:
            raise SchemaError(f"{where}: missing column '{name}' ({hint})")
    columns = {}
    for field in schema:
        col = table.column(field.name)
        if not _same_kind(col.type, field.type):
            raise SchemaError(f"{where}: column '{field.name}' has type {col.type}, expected {field.type}")
        if col.type != field.type:
            try:
                col = _cast_messages(col) if field.type == MESSAGES_TYPE else col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(f"{where}: column '{field.name}' cannot be read as {field.type}: {exc}") from None
        if not field.nullable and col.null_count:
            row = _first_index(pc.is_null(col))
            raise SchemaError(f"{where}: row {row}: column '{field.name}' is null")
        if field.type == MESSAGES_TYPE:
            _check_messages(col, field.name, where)
        columns[field.name] = col
    for spec in schema_document()["columns"]:
        name = spec["name"]
        if spec.get("non_empty"):
            blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(columns[name])), 0)
            if pc.any(blank).as_py():
                raise SchemaError(f"{where}: row {_first_index(blank)}: column '{name}' is empty text")
        if "enum" in spec:
            bad = pc.invert(pc.is_in(columns[name], value_set=pa.array(spec["enum"], pa.large_string())))
            if pc.any(bad).as_py():
                row = _first_index(bad)
                raise SchemaError(f"{where}: row {row}: column '{name}' is {columns[name][row].as_py()!r}, "
                                  f"expected one of {', '.join(spec['enum'])}")
    extras = [c for c in table.column_names if c not in columns]
    arrays = [columns[f.name] for f in schema] + [table.column(c) for c in extras]
    fields = list(schema) + [table.schema.field(c) for c in extras]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=table.schema.metadata))


def _cast_messages(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Cast list<struct<role, content, ...>> (any string/list flavour) to MESSAGES_TYPE, dropping extra keys."""
    chunks = []
    for chunk in col.chunks:
        if pa.types.is_null(chunk.type):
            chunks.append(pa.nulls(len(chunk), MESSAGES_TYPE))
            continue
        values = chunk.values
        role = values.field("role").cast(pa.large_string())
        content = values.field("content").cast(pa.large_string())
        structs = pa.StructArray.from_arrays([role, content], fields=list(MESSAGE_TYPE))
        offsets = chunk.offsets.cast(pa.int64())
        chunks.append(pa.LargeListArray.from_arrays(offsets, structs, mask=chunk.is_null()))
    return pa.chunked_array(chunks, type=MESSAGES_TYPE)


def _check_messages(col: pa.ChunkedArray, name: str, where: str) -> None:
    """Every message has a role the schema allows and non-null content."""
    offset = 0
    for chunk in col.chunks:
        flat = chunk.flatten()
        parents = pc.list_parent_indices(chunk)
        roles = flat.field("role")
        bad_role = pc.fill_null(pc.invert(pc.is_in(roles, value_set=pa.array(ROLES, pa.large_string()))), True)
        for mask, what in ((bad_role, "role"), (pc.is_null(flat.field("content")), "content")):
            if len(mask) and pc.any(mask).as_py():
                i = _first_index(mask)
                row = offset + parents[i].as_py()
                found = roles[i].as_py()
                detail = (f"has role {found!r}, expected one of {', '.join(ROLES)}" if what == "role"
                          else "has null content")
                raise SchemaError(f"{where}: row {row}: column '{name}' message {i - _first_message(parents, i)} "
                                  f"{detail}")
        offset += len(chunk)


def _first_message(parents: pa.Array, i: int) -> int:
    """Index in `flat` of the first message of the row that message i belongs to."""
    row = parents[i].as_py()
    return _first_index(pc.equal(parents, row))


def _first_index(mask) -> int:
    return pc.index(mask, True).as_py()


def with_stage_columns(table: pa.Table, stage: str, columns: Mapping[str, pa.Array | pa.ChunkedArray]) -> pa.Table:
    """Add or replace `stage`'s own columns. Refuses a column another stage (or the core) owns."""
    core = set(core_columns())
    for name, values in columns.items():
        owner = stage_of(name)
        if name in core or owner != stage:
            raise ValueError(f"stage '{stage}' may not write column '{name}' (owned by {owner or 'core'})")
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table


def stage_columns_present(table: pa.Table) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name in table.column_names:
        owner = stage_of(name)
        if owner:
            found.setdefault(owner, []).append(name)
    return found


def empty_pairs() -> pa.Table:
    return pair_schema().empty_table()
