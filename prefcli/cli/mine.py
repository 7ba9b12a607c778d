"""`prefcli mine`: hard-negative mining with a false-negative guard."""

from __future__ import annotations

import typer

from ..stages.mine import MineStage
from .generate import register_stage

ORDER = 45


def register(app: typer.Typer) -> None:
    register_stage(app, MineStage)
