"""The one path from files to files around `Stage.run`, shared by the CLI and `prefcli run`:

plan outputs -> load side inputs -> read -> run -> check accounting -> write, all or nothing -> enforce
--max-reject-rate. It returns the stats; printing them is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import io
from .errors import InputError, ProblemsReported
from .outputs import OutputPlan
from .report import Timer
from .result import StageResult, check_accounting
from .stage import SET_ASIDE, Context, Stage


@dataclass
class Call:
    """One stage invocation with paths: what the CLI parsed, or what the runner resolved from TOML."""

    stage: Stage
    inputs: list[str] = field(default_factory=list)  # positional: one pairs file, or raw sources
    output: str | None = None
    writes: dict[str, str | None] = field(default_factory=dict)  # Write.name -> explicit path
    reads: dict[str, Any] = field(default_factory=dict)  # Read.name -> path or list of paths
    ctx: Context = field(default_factory=Context)
    max_reject_rate: float | None = None
    overwrite: bool = False


@dataclass
class Outcome:
    result: StageResult
    stats: dict[str, Any]
    rows_in: int
    paths: dict[str, str]  # output name -> path written ("output", Write.name)


def side_path(output: str, stage: str, suffix: str) -> str:
    """A side file derived from --output: OUT.rejects.parquet, or STAGE.rejects.parquet for stdout."""
    if output == io.STDIO:
        return f"{stage.replace(' ', '-')}{suffix}"
    path = Path(output)
    stem = path.name[: -len(".parquet")] if path.name.endswith(".parquet") else path.name
    return str(path.with_name(f"{stem}{suffix}"))


def plan_outputs(call: Call) -> tuple[OutputPlan, dict[str, str]]:
    stage = call.stage
    read_paths = [p for value in call.reads.values() for p in (value if isinstance(value, list) else [value])
                  if isinstance(p, str)]
    plan = OutputPlan(inputs=[*call.inputs, *read_paths], overwrite=call.overwrite)
    paths: dict[str, str] = {}
    if call.output is not None:
        paths["output"] = plan.add("--output", call.output, kind=stage.output_kind(call))
    for write in stage.planned_writes():
        path = call.writes.get(write.name)
        if path is None and write.default_suffix and call.output is not None:
            path = side_path(call.output, stage.name, write.default_suffix)
        if path is not None:
            paths[write.name] = plan.add(write.flag, path, kind=write.kind)
    return plan, paths


def load_reads(call: Call) -> None:
    for read in call.stage.reads:
        value = call.reads.get(read.name)
        if value in (None, []):
            if read.required:
                raise InputError(f"missing option '{read.flag}'")
            continue
        call.ctx.inputs[read.name] = read.load(value)


def execute(call: Call, engine=None) -> Outcome:
    """Run one Call. `engine` (prefcli.engines.make_engine; None: local) supplies only the middle step, table ->
    StageResult: planning, side inputs, reading, accounting, the all-or-nothing write and --max-reject-rate are
    the same whatever runs the stage."""
    from .engines import LocalEngine

    engine = engine or LocalEngine()
    stage = call.stage
    stage.validate(call)
    plan, paths = plan_outputs(call)
    load_reads(call)
    stage.check(call.ctx)
    table = engine.read(stage, call)  # local: a table, or batches for a stage that streams; ray: rows on the cluster
    rows_in = table.num_rows if table is not None else 0
    used = stage.rows_used(rows_in, call.ctx) if table is not None else None
    if used is not None:  # the stage reads a sample: only those rows reach it (it writes no rows)
        table = engine.take(table, used)
    with Timer() as timer:
        result = engine.run(stage, table, call.ctx)
    if table is not None and used is None:
        check_accounting(rows_in, result, added=result.added)
    else:
        rows_in = result.stats.get("rows_in", rows_in)
    stage.write(plan, paths, result)
    plan.commit()
    stats = stage.final_stats(result, rows_in, timer.seconds)
    if call.max_reject_rate is not None and rows_in and result.rows_set_aside / rows_in > call.max_reject_rate:
        share = result.rows_set_aside / rows_in
        raise ProblemsReported(f"{result.rows_set_aside}/{rows_in} rows {stage.set_aside_word} ({share:.1%}), "
                               f"above --max-reject-rate {call.max_reject_rate:.1%}")
    stage.after_write(result.stats)
    return Outcome(result, stats, rows_in, paths)


def write_default(stage: Stage, plan: OutputPlan, paths: dict[str, str], result: StageResult) -> None:
    """Kept rows to --output, set-aside rows (if any) to their file, each artefact to its option's path."""
    if "output" in paths and result.out is not None:
        plan.write(paths["output"], result.out)
    for name, path in paths.items():
        if name == "output":
            continue
        if name == SET_ASIDE:
            if result.set_aside is not None and result.set_aside.num_rows:
                plan.write(path, result.set_aside)
        elif name in result.artifacts:
            data = result.artifacts[name]
            if callable(data):
                plan.write_with(path, data)
            else:
                plan.write(path, data)


def run_on_table(stage: Stage, table: pa.Table | None, ctx: Context) -> StageResult:
    """`run` plus the accounting check: what the Python API and engines call."""
    result = stage.run(table, ctx)
    if table is not None:
        check_accounting(table.num_rows, result, added=result.added)
    return result
