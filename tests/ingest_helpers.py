"""In-process CLI runner for the ingest/stats tests (a subprocess costs seconds of import time each)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
from typer.testing import CliRunner

from conftest import assert_one_line_error
from prefcli.cli.main import main


def cli(*args: str, input: bytes | str | None = None):
    """Run `prefcli ARGS` in process through the real entry point (so usage errors are one line too).
    Returns a Result-like namespace: exit_code, stdout, stderr, stdout_bytes."""
    runner = CliRunner()
    with runner.isolation(input=input) as streams:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        out, err = streams[0].getvalue(), streams[1].getvalue()
    return SimpleNamespace(exit_code=code, stdout_bytes=out, stdout=out.decode(errors="replace"),
                           stderr=err.decode(errors="replace"))


def ingest(*args: str) -> tuple[list[dict], list[dict], dict]:
    """`prefcli ingest ARGS --json` -> (pairs rows, rejects rows, summary). ARGS must include -o OUT."""
    result = cli("ingest", *args, "--json")
    assert result.exit_code == 0, result.stderr
    out = Path(args[list(args).index("-o") + 1])
    summary = json.loads(result.stdout)
    rejects = pq.read_table(summary["rejects"]).to_pylist() if summary["rejects"] else []
    return pq.read_table(out).to_pylist(), rejects, summary


def assert_one_line_error_result(result, *fragments: str, code: int = 2) -> None:
    """conftest.assert_one_line_error for an in-process Result."""
    proc = SimpleNamespace(returncode=result.exit_code, stderr=result.stderr.encode())
    assert_one_line_error(proc, *fragments, code=code)
