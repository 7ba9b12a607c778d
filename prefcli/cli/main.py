"""The `prefcli` Typer app. Each module in prefcli.cli with a `register(app)` adds its commands."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Annotated, Optional

import typer

from .. import __version__
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


def main() -> None:
    try:
        app(standalone_mode=True)
    except SystemExit as exc:
        # click reports usage errors with exit 2 already; keep codes as they are.
        raise SystemExit(exc.code) from None


if __name__ == "__main__":
    sys.exit(main())
