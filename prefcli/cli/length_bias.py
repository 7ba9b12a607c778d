"""`prefcli length-bias`: fit f(length) -> reward, apply the saved correction, report and plot, rebalance."""

from __future__ import annotations

import typer

from ..stages.length_bias_stages import ApplyStage, FitStage, RebalanceStage, ReportStage
from .generate import register_stage

ORDER = 60

app = typer.Typer(help="Length bias: fit f(length) -> reward, debias scores (len_ columns), report, rebalance.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)

for _stage in (FitStage, ApplyStage, ReportStage, RebalanceStage):
    register_stage(app, _stage)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="length-bias")
