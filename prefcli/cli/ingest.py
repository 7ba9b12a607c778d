"""`prefcli ingest SRC... -o OUT`: raw preference data in any supported layout -> canonical pairs Parquet."""

from __future__ import annotations

import typer

from ..stages.ingest import IngestStage
from .generate import register_stage

ORDER = 10


def register(app: typer.Typer) -> None:
    register_stage(app, IngestStage)
