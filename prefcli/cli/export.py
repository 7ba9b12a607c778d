"""`prefcli export`: curated pairs as TRL / OpenRLHF / JSONL / HF datasets / Parquet training files."""

from __future__ import annotations

import typer

from ..stages.export import ExportStage, push  # noqa: F401
from .generate import register_stage

ORDER = 90


def register(app: typer.Typer) -> None:
    register_stage(app, ExportStage)
