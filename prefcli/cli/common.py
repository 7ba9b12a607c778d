"""Conventions every command shares: options, error handling, output writing, reporting."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from typing import Annotated, Callable, Optional

import typer

from .. import io
from ..errors import (EXIT_BAD_INPUT, EXIT_CANT_CREATE, EXIT_IO, EXIT_SOFTWARE, PrefcliError,
                      os_failure)
from ..report import Reporter


class OutputPath:
    """Parser of a path the command writes. `prefcli run` keeps such paths inside the stage's own directory."""

    writes = True

    def __call__(self, value):
        if value is not None and not str(value).strip():
            raise ValueError("expected a path, got an empty string")
        return value


class BoundedNumber:
    """Parser of a finite int or float within [low, high]: NaN, inf and out-of-range values are usage errors."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None):
        self.kind, self.low, self.high = kind, low, high

    def __call__(self, value):
        import math

        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = self.kind(value)
        else:
            try:
                number = self.kind(str(value).strip())
            except ValueError:
                raise ValueError(f"{value!r} is not a valid {self.kind.__name__}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            raise ValueError(f"{value!r} is not in the range {low}..{high}")
        return number


def number(kind: type = float, low: float | None = None, high: float | None = None) -> BoundedNumber:
    """Parser for a numeric option: the range is declared with the option, whatever uses it."""
    return BoundedNumber(kind, low, high)


OUTPUT_PATH = OutputPath()

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success (for cron).")]
Json = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary.")]
CacheDir = Annotated[Optional[str], typer.Option(
    "--cache-dir", help="Embedding/score cache and neighbour graphs (default $PREFCLI_CACHE_DIR or the user "
    "cache dir).")]


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
        except OSError as exc:  # the environment, not a bug: a full disk, a read-only folder
            if os.environ.get("PREFCLI_DEBUG"):
                traceback.print_exc()
            error = os_failure(exc)
            _fail(str(error), error.exit_code)
        except RecursionError:
            _fail("input is nested too deeply to read", EXIT_BAD_INPUT)
        except Exception as exc:  # a bug, not bad input: still one line unless PREFCLI_DEBUG is set
            if os.environ.get("PREFCLI_DEBUG"):
                traceback.print_exc()
            _fail(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  f"(set PREFCLI_DEBUG=1 for a traceback)", EXIT_SOFTWARE)

    return wrapper


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"prefcli: error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)







EXIT_CODES_DOC = (f"Exit codes: 0 ok; 1 ran but reported problems; {EXIT_BAD_INPUT} bad input or usage; 3 workdir "
                  f"locked; {EXIT_SOFTWARE} internal error; {EXIT_CANT_CREATE} an output cannot be created; "
                  f"{EXIT_IO} I/O error (e.g. disk full).")
