"""Conventions every command shares: options, error handling, output writing, reporting."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from .. import io
from ..errors import EXIT_BAD_INPUT, InputError, PrefcliError, ProblemsReported
from ..report import Reporter, StageResult

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success (for cron).")]
Json = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; same seed and input give the same output.")]
Output = Annotated[str, typer.Option("--output", "-o", help="Output Parquet file, or - for stdout.")]
Input = Annotated[str, typer.Argument(help="Input pairs Parquet file, or - for stdin.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
EmbedModel = Annotated[Optional[str], typer.Option(
    "--model", help="Embedding model: local path or hub id (default: the packaged all-MiniLM-L6-v2).")]
CacheDir = Annotated[Optional[str], typer.Option(
    "--cache-dir", help="Embedding/score cache and neighbour graphs (default $PREFCLI_CACHE_DIR or the user "
    "cache dir).")]
MaxRejectRate = Annotated[Optional[float], typer.Option(
    "--max-reject-rate", min=0.0, max=1.0,
    help="Exit 1 when the share of rows set aside is above this.")]


def reporter(quiet: bool, json_mode: bool, output: str | None = None, *, tables_to_stdout: bool = False) -> Reporter:
    return Reporter(quiet=quiet, json_mode=json_mode, data_on_stdout=output == io.STDIO,
                    tables_to_stdout=tables_to_stdout)


def handle_errors(func: Callable) -> Callable:
    """Turn PrefcliError into one line on stderr and its exit code; never show a traceback for bad input."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PrefcliError as exc:
            _fail(str(exc), exc.exit_code)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:
            with contextlib.suppress(Exception):
                sys.stdout = open(os.devnull, "w")
            raise typer.Exit(141)
        except Exception as exc:  # a bug, not bad input: still one line unless PREFCLI_DEBUG is set
            if os.environ.get("PREFCLI_DEBUG"):
                traceback.print_exc()
            _fail(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  f"(set PREFCLI_DEBUG=1 for a traceback)", 70)

    return wrapper


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"prefcli: error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def bad_option(message: str) -> InputError:
    return InputError(message)


def side_path(output: str, explicit: str | None, stage: str) -> str:
    """Where set-aside rows go: --explicit path, else OUT.rejects.parquet, else STAGE.rejects.parquet for stdout."""
    if explicit:
        return explicit
    if output == io.STDIO:
        return f"{stage}.rejects.parquet"
    path = Path(output)
    stem = path.name[: -len(".parquet")] if path.name.endswith(".parquet") else path.name
    return str(path.with_name(f"{stem}.rejects.parquet"))


def write_stage(result: StageResult, output: str, side: str | None) -> None:
    """Write the kept rows to `output` and set-aside rows (if any) to `side`, all or nothing."""
    files = {output: result.out}
    if result.set_aside is not None and result.set_aside.num_rows and side:
        files[side] = result.set_aside
    io.write_files(files)


def enforce_reject_rate(rows_in: int, set_aside: int, limit: float | None, what: str = "set aside") -> None:
    if limit is not None and rows_in and set_aside / rows_in > limit:
        raise ProblemsReported(f"{set_aside}/{rows_in} rows {what} ({set_aside / rows_in:.1%}), "
                               f"above --max-reject-rate {limit:.1%}")


def parse_kv(spec: str, option: str) -> dict[str, str]:
    """Parse `a=1,b=x` option values; a one-line InputError names the option on a bad item."""
    out: dict[str, str] = {}
    if not spec:
        return out
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{option}: expected key=value, got '{item}'")
        out[key.strip()] = value.strip()
    return out


EXIT_CODES_DOC = f"Exit codes: 0 ok; 1 ran but reported problems; {EXIT_BAD_INPUT} bad input or usage; 3 workdir locked."
