"""Shared test fixtures: offline hub, a per-session cache dir, real data from ../shared/data."""

from __future__ import annotations

import os
import subprocess
import sys
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
    return subprocess.run([sys.executable, "-m", "prefcli.cli.main", *args], input=input, cwd=cwd,
                          capture_output=True, env=full_env, timeout=900)


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
