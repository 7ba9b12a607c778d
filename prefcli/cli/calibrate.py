"""`prefcli calibrate`: bucket thresholds for `prefcli vote --calibration` from human-verified pairs."""

from __future__ import annotations

import typer

from ..stages.calibrate import CalibrateStage
from .generate import register_stage

ORDER = 75


def register(app: typer.Typer) -> None:
    register_stage(app, CalibrateStage)
