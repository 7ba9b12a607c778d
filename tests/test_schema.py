"""The canonical schema: the packaged prefcli/schemas/pairs.v1.json is what validate() enforces; round trip,
stage column ownership."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import ROOT
from prefcli.errors import SchemaError
from prefcli.pairs import build_pairs
from prefcli.schema import (MESSAGES_TYPE, core_columns, pair_schema, stage_columns_present, stage_of, validate,
                            with_stage_columns)
from prefcli.text import pair_id


def small() -> pa.Table:
    prompts = [[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}],
               [{"role": "user", "content": "Bye?"}]]
    return build_pairs(prompts, ["Hello!", "Goodbye."], ["Go away.", "Whatever."], source="unit",
                       chosen_score=[2.0, None], label_source=["human", "ai"], meta=[{"k": 1}, None])


def packaged_document() -> dict:
    return json.loads(resources.files("prefcli").joinpath("schemas", "pairs.v1.json").read_text(encoding="utf-8"))


def test_packaged_document_is_what_validate_enforces():
    """The packaged JSON's columns, types, nullability, enums and non-empty rules are what validate() checks."""
    doc = packaged_document()
    table = small()
    assert validate(table).num_rows == 2
    assert pair_schema().names == core_columns() == [c["name"] for c in doc["columns"]]
    assert pair_schema().field("prompt").type == MESSAGES_TYPE
    for spec in doc["columns"]:
        name = spec["name"]
        with pytest.raises(SchemaError, match=f"missing column '{name}'"):
            validate(table.drop_columns([name]))
        column = table.column_names.index(name)
        nulled = table.set_column(column, name, pa.nulls(2, table.schema.field(name).type))
        if spec["nullable"]:
            assert validate(nulled).column(name).null_count == 2
        else:
            with pytest.raises(SchemaError, match=f"column '{name}' is null"):
                validate(nulled)
        if spec.get("non_empty"):
            with pytest.raises(SchemaError, match=f"column '{name}' is empty text"):
                validate(table.set_column(column, name, pa.array([" ", "x"], pa.large_string())))
        if "enum" in spec:
            for value in spec["enum"]:
                validate(table.set_column(column, name, pa.array([value] * 2, pa.large_string())))
            with pytest.raises(SchemaError, match=f"column '{name}' is 'other', expected one of"):
                validate(table.set_column(column, name, pa.array(["other"] * 2, pa.large_string())))
    for stage, spec in doc["stage_columns"].items():
        assert all(stage_of(f"{prefix}x") == stage for prefix in spec["prefixes"])
        assert all(stage_of(column) == stage for column in spec["columns"])


def test_top_level_schemas_dir_links_to_the_packaged_document():
    packaged = resources.files("prefcli").joinpath("schemas", "pairs.v1.json")
    assert (ROOT / "schemas" / "pairs.v1.json").resolve() == Path(str(packaged)).resolve()


def test_validate_round_trip_through_parquet(tmp_path):
    from prefcli import io

    table = small()
    io.write_table(table, tmp_path / "p.parquet")
    back = io.read_pairs(tmp_path / "p.parquet")
    assert back.equals(validate(table))
    assert back.column("pair_id")[0].as_py() == pair_id(table.column("prompt")[0].as_py(), "Hello!", "Go away.")
    assert json.loads(back.column("meta")[0].as_py()) == {"k": 1}


def test_validate_casts_plain_list_and_string_types():
    table = small()
    loose = pa.Table.from_pylist(table.to_pylist())  # list<struct>, string: not the canonical large types
    assert loose.schema.field("prompt").type != MESSAGES_TYPE
    assert validate(loose).schema.field("prompt").type == MESSAGES_TYPE


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.drop_columns(["chosen"]), "missing column 'chosen'"),
    (lambda t: t.set_column(t.column_names.index("tie"), "tie", pa.array(["no", "no"])), "column 'tie' has type"),
    (lambda t: t.set_column(t.column_names.index("label_source"), "label_source",
                            pa.array(["human", "robot"], pa.large_string())), "row 1: column 'label_source'"),
    (lambda t: t.set_column(t.column_names.index("chosen"), "chosen", pa.array(["", "x"], pa.large_string())),
     "row 0: column 'chosen' is empty text"),
])
def test_validate_errors_name_column_and_row(mutate, message):
    with pytest.raises(SchemaError, match=message):
        validate(mutate(small()), where="f.parquet")


def test_stage_columns_by_prefix_only():
    table = with_stage_columns(small(), "dedup", {"dedup_cluster": pa.array([0, 0])})
    table = with_stage_columns(table, "vote", {"margin": pa.array([0.5, 0.1])})
    assert stage_columns_present(table) == {"dedup": ["dedup_cluster"], "vote": ["margin"]}
    with pytest.raises(ValueError, match="owned by vote"):
        with_stage_columns(table, "dedup", {"pref_mean": pa.array([1.0, 2.0])})
    with pytest.raises(ValueError, match="core"):
        with_stage_columns(table, "dedup", {"chosen": pa.array(["a", "b"])})
    assert validate(table).column_names[-2:] == ["dedup_cluster", "margin"]
