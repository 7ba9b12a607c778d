"""`prefcli run PIPELINE.toml`: run the stage commands a pipeline file lists, incrementally, under a lock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..engines import ENGINE_HELP, parse_engine
from ..pipeline import OUTCOME_COLUMNS, Runner, load_pipeline
from ..report import Table
from .common import Json, Quiet, handle_errors, number, reporter

ORDER = 90
def default_workdir(pipeline) -> Path:
    if pipeline.workdir:
        return pipeline.path.parent / pipeline.workdir
    return Path("prefcli-runs") / pipeline.path.stem


def register(app: typer.Typer) -> None:
    @app.command("run")
    @handle_errors
    def run(
        pipeline_file: Annotated[str, typer.Argument(metavar="PIPELINE.toml", help="Pipeline file (TOML).")],
        workdir: Annotated[Optional[str], typer.Option(
            "--workdir", "-w",
            help="Where stage outputs, manifest.json, the lock and the caches live "
                 "(default: [pipeline] workdir, else ./prefcli-runs/<pipeline name>).")] = None,
        start: Annotated[Optional[str], typer.Option(
            "--from", help="Re-run from this stage on; earlier stages keep their outputs.")] = None,
        until: Annotated[Optional[str], typer.Option("--until", help="Stop after this stage.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Re-run every stage even when unchanged.")] = False,
        wait: Annotated[bool, typer.Option("--wait", help="Wait for a concurrent run to finish instead of exit 3.")] = False,
        wait_timeout: Annotated[Optional[float], typer.Option(
            "--wait-timeout", parser=number(float, 0.0),
                help="With --wait: give up (exit 3) after this many seconds.")] = None,
        engine: Annotated[str, typer.Option(
            "--engine", metavar="local|ray[:ADDRESS][,OPTS]",
            help=ENGINE_HELP + " Applies to every stage; the engine is not part of a stage's skip key.")] = "local",
        quiet: Quiet = False,
        json_mode: Json = False,
    ) -> None:
        """Run a pipeline of stage commands; unchanged stages are skipped, a killed run resumes."""
        spec = parse_engine(engine)
        pipeline = load_pipeline(pipeline_file)
        rep = reporter(quiet, json_mode)
        root = Path(workdir) if workdir else default_workdir(pipeline)
        cache = Path(pipeline.cache_dir) if pipeline.cache_dir else None
        if cache is not None and not cache.is_absolute():
            cache = root / cache
        elif cache is None:
            cache = Path(os.environ["PREFCLI_CACHE_DIR"]) if os.environ.get("PREFCLI_CACHE_DIR") else root / "cache"

        def announce(name: str, what: str) -> None:
            if rep.fancy:
                rep.console.print(f"[dim]{what}[/dim] {name}")

        runner = Runner(pipeline, root, quiet=quiet or json_mode, on_stage=announce, cache_dir=cache.resolve(),
                        report=rep, engine=spec)
        result = runner.run(start=start, until=until, force=force, wait=wait, wait_timeout=wait_timeout)
        ran = sum(o.status == "ran" for o in result.outcomes)
        stats = {"pipeline": result.pipeline, "workdir": result.workdir, "status": "ok", "stages_run": ran,
                 "stages_skipped": sum(o.status == "skipped" for o in result.outcomes),
                 "final_output": result.final_output, "wall_s": round(result.wall_s, 2)}
        rep.summary(f"prefcli run {pipeline.name}", stats,
                    [Table("stages", "stages", OUTCOME_COLUMNS, [o.row() for o in result.outcomes])])
