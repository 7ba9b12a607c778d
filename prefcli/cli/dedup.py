"""`prefcli dedup IN -o OUT`: exact + semantic near-duplicates, eval-set decontamination, cached re-threshold."""

from __future__ import annotations

import typer

from ..stages.dedup import DedupStage
from .generate import register_stage

ORDER = 20


def register(app: typer.Typer) -> None:
    register_stage(app, DedupStage)
