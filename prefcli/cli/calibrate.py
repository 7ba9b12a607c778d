"""`prefcli calibrate`: bucket thresholds for `prefcli vote --calibration` from human-verified pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import io
from ..outputs import OutputPlan
from ..plots import coverage_plot
from ..report import Table
from ..stages.calibrate import REQUIRES, calibrate, coverage_summary
from .common import OUTPUT_PATH, Input, Json, Quiet, Seed, handle_errors, number, reporter

ORDER = 75


def png_path(output: str) -> str:
    if output == io.STDIO:
        return "calib.png"
    path = Path(output)
    return str(path.with_suffix(".png") if path.suffix else path.with_name(path.name + ".png"))


@handle_errors
def calibrate_command(
    input: Input,
    output: Annotated[str, typer.Option("--output", "-o", parser=OUTPUT_PATH,
                                        help="calib.json to write, or - for stdout.")],
    target: Annotated[float, typer.Option("--target", parser=number(float, 0.0, 1.0),
                                          help="Agreement with humans the kept (and flipped) AI "
                                          "labels must reach.")] = 0.9,
    bins: Annotated[Optional[int], typer.Option("--bins", parser=number(int, 2),
                                                help="pref_mean bins of the agreement report "
                                                "(default: reviewed/25, within 4..20).")] = None,
    min_reviewed: Annotated[int, typer.Option("--min-reviewed", parser=number(int, 1),
                                              help="Fewest human-verified pairs to "
                                              "calibrate on.")] = 20,
    png: Annotated[bool, typer.Option("--png", help="Also write the coverage/agreement plot beside the JSON "
                                      "(calib.png).")] = False,
    quiet: Quiet = False,
    json_mode: Json = False,
    seed: Seed = 0,
) -> None:
    """Choose incorrect/ambiguous/strong thresholds on pref_mean that meet --target agreement with humans."""
    rep = reporter(quiet, json_mode, output)
    plan = OutputPlan(inputs=[input])
    plan.add("--output", output)
    plot = plan.add("--png", png_path(output)) if png else None
    table = io.read_pairs(input, require=REQUIRES)
    doc = calibrate(table, target=target, bins=bins, min_reviewed=min_reviewed)
    plan.write(output, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    if plot:
        plan.write(plot, coverage_plot(doc))
    plan.commit()
    if not doc["met"]["ambiguous"]:
        rep.warn(f"no pref_mean cut reaches agreement {target}: every pair lands in ambiguous; review more pairs "
                 "or lower --target")
    rows = [[r["threshold"], r["keep_coverage"], r["keep_agreement"], r["keep_reviewed"]] for r in doc["coverage"]]
    table_out = Table("coverage", "Coverage vs agreement (pairs with pref_mean >= threshold kept)",
                      ["threshold", "coverage", "agreement", "reviewed"], rows)
    rep.summary("calibrate", coverage_summary(doc), [table_out])


def register(app: typer.Typer) -> None:
    app.command("calibrate", help="Bucket thresholds for `prefcli vote --calibration` from human-verified "
                                  "pairs (review import output).")(calibrate_command)
