"""Typer commands generated from Stage classes: options come from `Params` (names, types, choices, bounds, help),
the stage's side files and the options every command shares. One body runs them all: parse -> `execute`
(read, run, check accounting, write atomically, --max-reject-rate) -> report."""

from __future__ import annotations

import inspect
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ..execute import Call, execute
from ..report import Reporter
from ..stage import Context, Stage, option_info
from .common import OUTPUT_PATH, handle_errors, number

COMMON_HELP = {
    "seed": "Random seed; same seed and input give the same output.",
    "device": "auto, cpu or cuda.",
    "cache_dir": "Embedding/score cache and neighbour graphs (default $PREFCLI_CACHE_DIR or the user cache dir).",
    "no_cache": "Neither read nor write the cache.",
    "max_reject_rate": "Exit 1 when the share of rows set aside is above this.",
    "overwrite": "Allow replacing an existing directory that prefcli did not write (never needed for prefcli's "
                 "own earlier outputs).",
    "quiet": "Print nothing on success (for cron).",
    "json_mode": "Print a machine-readable JSON summary.",
}


def _kw(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def _field_parameter(stage: type[Stage], name: str) -> list[inspect.Parameter]:
    """The typer parameter for one Params field, plus hidden deprecated spellings."""
    field_info = stage.Params.model_fields[name]
    info = option_info(stage.Params, name)
    kind = field_info.annotation
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    optional = typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", ())) \
        and type(None) in typing.get_args(kind)
    base = args[0] if optional and len(args) == 1 else kind
    default = None if field_info.is_required() else field_info.default
    names = [info["flag"]]
    extra: dict[str, Any] = {"help": info["help"]}
    if info.get("short"):
        names.append(info["short"])
    if info.get("metavar"):
        extra["metavar"] = info["metavar"]
    if base is bool:
        names = [f"{info['flag']}/--no-{info['flag'][2:]}" if info.get("negatable") else info["flag"]]
        cli_type = bool
    elif base in (int, float):
        extra["parser"] = number(base, info["low"], info["high"])
        cli_type = Optional[base] if optional else base
    elif typing.get_origin(base) is list:
        cli_type = Optional[list[str]]
        default = None
    elif typing.get_origin(base) is dict:
        cli_type = Optional[str]
        default = None
    else:
        cli_type = Optional[base] if optional else base
    if default is None and cli_type in (str, int, float):
        cli_type = Optional[cli_type]
    params = [_kw(name, Annotated[cli_type, typer.Option(*names, **extra)], default)]
    for i, alias in enumerate(info.get("aliases") or []):
        alias_type = Optional[list[str]] if typing.get_origin(base) is list else Optional[str]
        params.append(_kw(f"_alias_{name}_{i}", Annotated[alias_type, typer.Option(alias, hidden=True)], None))
    return params


def stage_parameters(stage: type[Stage]) -> list[inspect.Parameter]:
    params: list[inspect.Parameter] = []
    if stage.input == "pairs":
        params.append(_kw("input", Annotated[str, typer.Argument(help="Input pairs Parquet file, or - for stdin.")],
                          inspect.Parameter.empty))
    elif stage.input == "sources":
        params.append(_kw("sources", Annotated[list[str], typer.Argument(help=stage.input_help)],
                          inspect.Parameter.empty))
    if stage.output != "none":
        params.append(_kw("output", Annotated[Optional[str], typer.Option(
            "--output", "-o", parser=OUTPUT_PATH, help=stage.output_help)], None))
    for name in stage.Params.model_fields:
        params += _field_parameter(stage, name)
    for read in stage.reads:
        kind = Optional[list[str]] if read.multiple else Optional[str]
        params.append(_kw(f"_read_{read.name}", Annotated[kind, typer.Option(read.flag, help=read.help)], None))
    for write in stage.writes:
        params.append(_kw(f"_write_{write.name}", Annotated[Optional[str], typer.Option(
            write.flag, parser=OUTPUT_PATH, help=write.help)], None))
    if stage.uses_seed:
        params.append(_kw("seed", Annotated[int, typer.Option("--seed", parser=number(int, 0),
                                                                help=COMMON_HELP["seed"])], 0))
    if stage.resources.uses_models:
        params.append(_kw("device", Annotated[str, typer.Option("--device", help=COMMON_HELP["device"])], "auto"))
        params.append(_kw("no_cache", Annotated[bool, typer.Option("--no-cache", help=COMMON_HELP["no_cache"])],
                          False))
    if stage.resources.uses_models or stage.uses_cache:
        params.append(_kw("cache_dir", Annotated[Optional[str], typer.Option(
            "--cache-dir", help=getattr(stage, "cache_dir_help", None) or COMMON_HELP["cache_dir"])], None))
    if stage.sets_aside:
        params.append(_kw("max_reject_rate", Annotated[Optional[float], typer.Option(
            "--max-reject-rate", parser=number(float, 0.0, 1.0), help=COMMON_HELP["max_reject_rate"])], None))
    if stage.output == "dir" or any(w.kind == "dir" for w in stage.writes):
        params.append(_kw("overwrite", Annotated[bool, typer.Option("--overwrite", help=COMMON_HELP["overwrite"])],
                          False))
    if "ray" in stage.engines:
        from ..engines import ENGINE_HELP

        params.append(_kw("engine", Annotated[str, typer.Option("--engine", metavar="local|ray[:ADDRESS][,OPTS]",
                                                                 help=ENGINE_HELP)], "local"))
    params.append(_kw("quiet", Annotated[bool, typer.Option("--quiet", "-q", help=COMMON_HELP["quiet"])], False))
    params.append(_kw("json_mode", Annotated[bool, typer.Option("--json", help=COMMON_HELP["json_mode"])], False))
    return params


def _deprecated(flag: str, instead: str) -> None:
    sys.stderr.write(f"prefcli: note: {flag} is deprecated; use {instead}\n")


def call_from_cli(stage_cls: type[Stage], kw: dict[str, Any]) -> tuple[Call, Reporter]:
    values: dict[str, Any] = {}
    for name in stage_cls.Params.model_fields:
        info = option_info(stage_cls.Params, name)
        value = kw.get(name)
        for i, alias in enumerate(info.get("aliases") or []):
            given = kw.get(f"_alias_{name}_{i}")
            if given is not None:
                _deprecated(alias, info["flag"])
                value = given
        if value is not None:
            values[name] = value
    stage = stage_cls(values)
    ctx = Context(seed=kw.get("seed", 0), device=kw.get("device", "auto"),
                  cache_dir=Path(kw["cache_dir"]) if kw.get("cache_dir") else None,
                  use_cache=not kw.get("no_cache", False))
    inputs = [kw["input"]] if "input" in kw else list(kw.get("sources") or [])
    output = kw.get("output")
    report = Reporter(quiet=kw["quiet"], json_mode=kw["json_mode"], data_on_stdout=output == "-",
                      tables_to_stdout=stage.tables_to_stdout(output))
    ctx.report = report
    call = Call(stage=stage, inputs=inputs, output=output, ctx=ctx,
                writes={w.name: kw.get(f"_write_{w.name}") for w in stage_cls.writes},
                reads={r.name: kw.get(f"_read_{r.name}") for r in stage_cls.reads},
                max_reject_rate=kw.get("max_reject_rate"), overwrite=kw.get("overwrite", False))
    return call, report


def make_command(stage_cls: type[Stage]) -> Callable:
    """A typer command function for `stage_cls`."""

    def command(**kw: Any) -> None:
        from ..engines import make_engine, parse_engine

        engine = parse_engine(kw.get("engine"))  # a bad value fails before anything is read
        call, report = call_from_cli(stage_cls, kw)
        outcome = execute(call, engine=None if engine.kind == "local" else make_engine(engine, quiet=kw["quiet"] or kw["json_mode"]))
        report.summary(stage_cls.name, outcome.stats, stage_cls.report_tables(outcome.stats))
        call.stage.after_report(outcome.stats)

    parameters = stage_parameters(stage_cls)
    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__name__ = stage_cls.name.replace(" ", "_").replace("-", "_") + "_command"
    command.__doc__ = stage_cls.summary or (stage_cls.__doc__ or "").strip().splitlines()[0]
    return handle_errors(command)


def register_stage(app: typer.Typer, stage_cls: type[Stage], name: str | None = None, **options: Any) -> None:
    app.command(name or stage_cls.name.split()[-1], **options)(make_command(stage_cls))
