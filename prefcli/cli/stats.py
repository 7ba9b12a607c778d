"""`prefcli stats FILE`: what a pairs file holds, as rich tables (or --json for scripts)."""

from __future__ import annotations

import typer

from ..stages.stats import StatsStage
from .generate import register_stage

ORDER = 15


def register(app: typer.Typer) -> None:
    register_stage(app, StatsStage)
