"""`prefcli vote`: reward models score every pair; preference strength, buckets, actions."""

from __future__ import annotations

from typing import Annotated

import typer

from ..stages.vote import MAX_FAILURE_RATE_HELP, RM_HELP, VoteStage, enforce_failure_rate  # noqa: F401
from .common import number
from .generate import register_stage

ORDER = 40

# Kept for commands not yet generated from a Stage (review select).
MaxFailureRate = Annotated[float, typer.Option("--max-failure-rate", parser=number(float, 0.0, 1.0),
                                               help=MAX_FAILURE_RATE_HELP)]


def register(app: typer.Typer) -> None:
    register_stage(app, VoteStage)
