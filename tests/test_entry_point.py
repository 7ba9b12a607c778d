"""The `prefcli` console script, and conftest.run_inproc against it: same exit codes, same stdout bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE_DATA, run_inproc
from prefcli import __version__


def console_script(*args: str, input: bytes | None = None, cwd: Path | None = None):
    """The installed `prefcli` script next to this interpreter, as a user's shell runs it."""
    script = Path(sys.executable).parent / "prefcli"
    if not script.exists():
        pytest.skip(f"no console script at {script} (prefcli is not installed in this environment)")
    return subprocess.run([str(script), *args], input=input, cwd=cwd, capture_output=True, timeout=600)


def test_console_script_and_in_process_runs_agree(tmp_path):
    data = (SAMPLE_DATA / "trl_standard.jsonl").read_bytes()
    args = ("ingest", "-", "-o", "-", "--rejects", str(tmp_path / "r.parquet"), "--quiet")
    script = console_script(*args, input=data)
    here = run_inproc(*args, input=data)
    assert script.returncode == here.returncode == 0, script.stderr.decode() + here.stderr.decode()
    assert script.stdout == here.stdout and script.stderr == here.stderr == b""
    assert pq.read_table(pa.BufferReader(here.stdout)).num_rows > 0  # binary Parquet on stdout

    version = console_script("--version")
    assert version.returncode == 0 and version.stdout.decode().strip() == f"prefcli {__version__}"
    assert run_inproc("--version").stdout == version.stdout

    missing = console_script("stats", "missing.parquet", cwd=tmp_path)
    here = run_inproc("stats", "missing.parquet", cwd=tmp_path)
    assert missing.returncode == here.returncode == 2
    assert missing.stderr == here.stderr and here.stderr.startswith(b"prefcli: error:")


def test_in_process_runs_leave_no_process_state_behind(tmp_path):
    env_before, cwd_before = dict(os.environ), os.getcwd()
    stdout_before, stderr_before, stdin_before = sys.stdout, sys.stderr, sys.stdin
    proc = run_inproc("cache", "info", "--json", cwd=tmp_path,
                      env={"PREFCLI_CACHE_DIR": "rel-cache", "PREFCLI_TEST_ONLY": "1"})
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["cache_dir"] == "rel-cache"
    assert dict(os.environ) == env_before and os.getcwd() == cwd_before
    assert (sys.stdout, sys.stderr, sys.stdin) == (stdout_before, stderr_before, stdin_before)
    assert run_inproc("stats", "-", input=b"").returncode == 2  # stdin is the given input, here empty


def test_in_process_warnings_and_crashes_look_like_a_process(monkeypatch):
    from prefcli.cli import main as entry

    def noisy(argv):
        warnings.warn("a library's warning", UserWarning)
        warnings.warn("hidden as in a fresh interpreter", DeprecationWarning)
        print("partial output")
        raise RuntimeError("boom")

    monkeypatch.setattr(entry, "main", noisy)
    proc = run_inproc("stats")
    err = proc.stderr.decode()
    assert proc.returncode == 1 and proc.stdout == b"partial output\n"
    assert "UserWarning: a library's warning" in err and "hidden" not in err
    assert "Traceback" in err and "RuntimeError: boom" in err
