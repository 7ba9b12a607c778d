"""`prefcli run PIPELINE.toml`: run the stage commands a pipeline file lists, incrementally, under a lock."""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.exceptions import TyperException

from ..pipeline import OUTCOME_COLUMNS, CommandSpec, Invocation, OptionSpec, Runner, load_pipeline
from ..report import Table
from .common import Json, Quiet, handle_errors, number, reporter

ORDER = 90
ERROR_PREFIX = "prefcli: error: "


class ClickStageCli:
    """Looks stage commands up in the prefcli click app and invokes them in this process."""

    def __init__(self, root=None) -> None:
        """`root`: the running app's click command (from the context), else built from the app."""
        if root is None:
            from .main import app

            root = typer.main.get_command(app)
        self.root = root

    def _command(self, words: list[str]):
        """The (sub)command `words` names, or None. Typer bundles its own click, so duck-type groups."""
        command = self.root
        ctx = self.root.context_class(self.root)
        for word in words:
            if not hasattr(command, "get_command"):
                return None
            command = command.get_command(ctx, word)
            if command is None:
                return None
        return None if hasattr(command, "get_command") or words == ["run"] else command

    def spec(self, command: list[str]) -> CommandSpec | None:
        found = self._command(command)
        if found is None:
            return None
        options: dict[str, OptionSpec] = {}
        positional = 0
        for param in found.params:
            if param.param_type_name == "argument":
                positional = -1 if param.nargs == -1 or positional else 1
                continue
            long = [o for o in param.opts if o.startswith("--")]
            if param.param_type_name != "option" or not long:
                continue
            negative = next((o for o in param.secondary_opts if o.startswith("--")), None)
            info = getattr(getattr(param, "type_descriptor", None), "parameter_info", None)
            options[long[0][2:]] = OptionSpec(flag=long[0], is_flag=param.is_flag, negative=negative,
                                              multiple=param.multiple,
                                              writes=getattr(getattr(info, "parser", None), "writes", False))
        return CommandSpec(options=options, positional=positional)

    def invoke(self, command: list[str], argv: list[str], *, quiet: bool) -> Invocation:
        stdout, stderr = _io.StringIO(), _ErrorTap(sys.stderr)
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                returned = self.root.main(args=[*command, *argv], prog_name="prefcli", standalone_mode=False)
            code = returned if isinstance(returned, int) else 0
        except TyperException as exc:  # usage errors: bad option values
            stderr.errors.append(exc.format_message())
            code = exc.exit_code
        except typer.Abort:
            code = 130
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return Invocation(code=code, error=" ".join(e.strip() for e in stderr.errors), stats=_last_json(stdout))


class _ErrorTap:
    """stderr for a stage: `prefcli: error:` lines are kept for the run's own one-line error, the rest passes."""

    def __init__(self, stream):
        self.stream = stream
        self.errors: list[str] = []

    def write(self, text: str) -> int:
        if text.startswith(ERROR_PREFIX):
            self.errors.append(text[len(ERROR_PREFIX):])
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _last_json(stdout: _io.StringIO) -> dict:
    for line in reversed(stdout.getvalue().splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return {}


def default_workdir(pipeline) -> Path:
    if pipeline.workdir:
        return pipeline.path.parent / pipeline.workdir
    return Path("prefcli-runs") / pipeline.path.stem


def register(app: typer.Typer) -> None:
    @app.command("run")
    @handle_errors
    def run(
        ctx: typer.Context,
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
        quiet: Quiet = False,
        json_mode: Json = False,
    ) -> None:
        """Run a pipeline of stage commands; unchanged stages are skipped, a killed run resumes."""
        pipeline = load_pipeline(pipeline_file)
        rep = reporter(quiet, json_mode)
        root = Path(workdir) if workdir else default_workdir(pipeline)
        cache = Path(pipeline.cache_dir) if pipeline.cache_dir else None
        if cache is not None and not cache.is_absolute():
            cache = root / cache
        elif cache is None and not os.environ.get("PREFCLI_CACHE_DIR"):
            cache = root / "cache"

        def announce(name: str, what: str) -> None:
            if rep.fancy:
                rep.console.print(f"[dim]{what}[/dim] {name}")

        runner = Runner(pipeline, root, ClickStageCli(ctx.find_root().command), quiet=quiet or json_mode,
                        on_stage=announce,
                        cache_dir=(cache or Path(os.environ["PREFCLI_CACHE_DIR"])).resolve())
        with _cache_env(cache):
            result = runner.run(start=start, until=until, force=force, wait=wait, wait_timeout=wait_timeout)
        ran = sum(o.status == "ran" for o in result.outcomes)
        stats = {"pipeline": result.pipeline, "workdir": result.workdir, "status": "ok", "stages_run": ran,
                 "stages_skipped": sum(o.status == "skipped" for o in result.outcomes),
                 "final_output": result.final_output, "wall_s": round(result.wall_s, 2)}
        rep.summary(f"prefcli run {pipeline.name}", stats,
                    [Table("stages", "stages", OUTCOME_COLUMNS, [o.row() for o in result.outcomes])])


@contextlib.contextmanager
def _cache_env(cache: Path | None):
    """Stages find the shared embedding/score cache through PREFCLI_CACHE_DIR."""
    if cache is None:
        yield
        return
    before = os.environ.get("PREFCLI_CACHE_DIR")
    os.environ["PREFCLI_CACHE_DIR"] = str(cache.resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PREFCLI_CACHE_DIR", None)
        else:
            os.environ["PREFCLI_CACHE_DIR"] = before
