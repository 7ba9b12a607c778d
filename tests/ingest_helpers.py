"""In-process CLI runner for the ingest/stats tests (a subprocess costs seconds of import time each)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq

from conftest import assert_one_line_error, run_inproc


def cli(*args: str, input: bytes | str | None = None):
    """conftest.run_inproc with text results: a Result-like namespace of exit_code, stdout, stderr, stdout_bytes."""
    proc = run_inproc(*args, input=input)
    return SimpleNamespace(exit_code=proc.returncode, stdout_bytes=proc.stdout,
                           stdout=proc.stdout.decode(errors="replace"), stderr=proc.stderr.decode(errors="replace"))


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
