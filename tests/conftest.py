"""Shared test fixtures: offline hub, a per-session cache dir, real data from ../shared/data.

Two ways to run the CLI: `run_inproc` (the real entry point in this process: no interpreter start, no torch
import per call) for tests about what a command does, and `run_cli` (a subprocess) for tests about the process
itself: pipes between processes, signals, locks held by another process, resource limits, the console script.
Both return a CompletedProcess with bytes stdout/stderr.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE_DATA = ROOT / "sample_data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a clean skip on a user's fresh clone that lacks it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (real-data tests need it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One embedding/score cache for the whole session, so the MiniLM encoder runs once per text."""
    path = tmp_path_factory.mktemp("prefcli-cache")
    os.environ["PREFCLI_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def embedder(session_cache):
    from prefcli.models.embed import build_embedder

    return build_embedder(cache_dir=str(session_cache), device="cpu")


def run_cli(*args: str, input: bytes | None = None, cwd: Path | None = None, env: dict | None = None):
    """Run `prefcli ARGS` in a subprocess, as a user's shell would. Returns CompletedProcess (bytes)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "prefcli.cli.main", *[str(a) for a in args]], input=input,
                          cwd=cwd, capture_output=True, env=full_env, timeout=900)


def run_inproc(*args, input: bytes | str | None = None, cwd: Path | None = None, env: dict | None = None):
    """`run_cli` in this process, through the real entry point `prefcli.cli.main.main(argv)`.

    What a subprocess would see is kept: file descriptors 1 and 2 go to temporary files for the call (so C-level
    writes and binary stdout, `-o -`, are captured in order), stdin is `input` (empty if None), Python warnings
    are printed to stderr under the interpreter's default filters, an uncaught exception is a traceback and exit 1.
    `env` and `cwd` apply for the call only; os.environ, the working directory and sys.std* are restored after."""
    from prefcli.cli.main import main

    argv = [str(a) for a in args]
    if isinstance(input, str):
        input = input.encode()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        with _fds_to(out_file, err_file):
            sys.stdin = io.TextIOWrapper(io.BytesIO(input or b""), encoding="utf-8")
            sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8")
            sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), encoding="utf-8",
                                          errors="backslashreplace", line_buffering=True)
            try:
                os.environ.update({k: str(v) for k, v in (env or {}).items()})
                if cwd is not None:
                    os.chdir(cwd)
                with warnings.catch_warnings():
                    _interpreter_warning_filters()
                    code = _call_main(main, argv)
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                sys.stdin, sys.stdout, sys.stderr = saved_streams
                os.chdir(saved_cwd)
                _restore_environ(saved_env)
        out_file.seek(0)
        err_file.seek(0)
        return subprocess.CompletedProcess(["prefcli", *argv], code, out_file.read(), err_file.read())


def _call_main(main, argv: list[str]) -> int:
    """The exit status a process would have after `main(argv)`."""
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except Exception:  # a bug: the interpreter would print the traceback and exit 1
        traceback.print_exc()
        return 1
    return 0


@contextlib.contextmanager
def _fds_to(out_file, err_file):
    """Point file descriptors 1 and 2 at the given files, then back (pytest's own capture included)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(out_file.fileno(), 1)
        os.dup2(err_file.fileno(), 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _interpreter_warning_filters() -> None:
    """Inside catch_warnings: the filters and the printing of a fresh `python` (pytest records warnings instead)."""
    warnings.resetwarnings()
    for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


def _restore_environ(saved: dict) -> None:
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def stream_in_batches(monkeypatch, batch_rows: int) -> list[int]:
    """Make the local engine stream inputs of more than `batch_rows` rows in batches of that size; the list
    returned gets one entry (the batch size) per streamed run."""
    from prefcli.engines import stream

    calls: list[int] = []
    real_run = stream.run_streamed

    def counting(stage, source, ctx):
        calls.append(source.batch_rows)
        return real_run(stage, source, ctx)

    monkeypatch.setattr(stream, "STREAM_BATCH_ROWS", batch_rows)
    monkeypatch.setattr(stream, "run_streamed", counting)
    return calls


def assert_one_line_error(proc, *fragments: str, code: int = 2) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("prefcli: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (starting one costs ~20 s on the 2-core box); a clean
    skip with the pip hint where Ray is not installed."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'prefcli[ray]'")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'prefcli[ray]'")
    from prefcli.engines.ray_data import connect

    connect(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False,
            configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.max_hash_shuffle_aggregators = 2  # an aggregator actor is a process: two are enough for two cores
    yield ray
    ray.shutdown()
