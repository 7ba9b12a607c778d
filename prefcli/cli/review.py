"""`prefcli review select|export|import`: the human side of the curation loop."""

from __future__ import annotations

import typer

from ..stages.review_stages import EXPORT_MARKER, FORMATS, ExportStage, ImportStage, SelectStage  # noqa: F401
from .generate import register_stage

ORDER = 70

app = typer.Typer(name="review", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Human review: select pairs for review, export annotation tasks, import verdicts.")

for _stage in (SelectStage, ExportStage, ImportStage):
    register_stage(app, _stage)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="review")
