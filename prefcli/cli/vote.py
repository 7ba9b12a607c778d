"""`prefcli vote`: reward models score every pair; preference strength, buckets, actions."""

from __future__ import annotations

import typer

from ..stages.vote import VoteStage
from .generate import register_stage

ORDER = 40


def register(app: typer.Typer) -> None:
    register_stage(app, VoteStage)
