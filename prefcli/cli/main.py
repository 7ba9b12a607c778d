"""The `prefcli` Typer app. Each module in prefcli.cli with a `register(app)` adds its commands."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Annotated, Optional

import typer

from .. import __version__
from ..errors import EXIT_BAD_INPUT
from .common import EXIT_CODES_DOC

app = typer.Typer(
    name="prefcli",
    help=f"Curate preference data (prompt, chosen, rejected) for reward models and RLHF/DPO. {EXIT_CODES_DOC}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"prefcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                          help="Show the version and exit.")] = None) -> None:
    pass


def _register_commands() -> None:
    package = importlib.import_module(__package__)
    modules = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in ("main", "common"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        if hasattr(module, "register"):
            modules.append(module)
    for module in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        module.register(app)


_register_commands()


def _click_exceptions():
    """typer >= 0.2x vendors click as typer._click; older typer uses click itself."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions
    return exceptions


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's usage errors become the same one-line error as every other bad input.

    `argv` (default: sys.argv[1:]) lets tests run the real entry point in process."""
    errors = _click_exceptions()
    try:
        code = app(args=argv, prog_name="prefcli", standalone_mode=False)
    except getattr(errors, "NoArgsIsHelpError", ()) as exc:  # bare `prefcli`: help was wanted
        sys.stderr.write(exc.format_message() if hasattr(exc, "format_message") else "")
        raise SystemExit(EXIT_BAD_INPUT) from None
    except errors.UsageError as exc:
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) is not None else ""
        message = " ".join(exc.format_message().replace("Value error, ", "").split())
        sys.stderr.write(f"prefcli: error: {where}{message} (see --help)\n")
        raise SystemExit(EXIT_BAD_INPUT) from None
    except errors.ClickException as exc:
        sys.stderr.write(f"prefcli: error: {' '.join(exc.format_message().split())}\n")
        raise SystemExit(exc.exit_code) from None
    except (KeyboardInterrupt, EOFError):
        sys.stderr.write("prefcli: error: aborted\n")
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
