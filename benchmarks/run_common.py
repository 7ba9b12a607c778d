"""Shared by the `prefcli run` benchmarks: real raw files from ../shared/data in a scratch project."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALPACA = DATA / "alpaca-eval-annotations" / "annotations_compact.jsonl.gz"
HH = DATA / "hh-rlhf-harmless" / "test.jsonl.gz"


def write_raw(source: Path, target: Path, start: int, count: int) -> None:
    """Lines [start, start + count) of a real JSONL(.gz) file, unchanged, as target (scratch dir, not the repo)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as fh, open(target, "w", encoding="utf-8") as out:
        out.writelines(itertools.islice(fh, start, start + count))


def run_pipeline(toml: Path, workdir: Path, *args: str, cache: str = "", timeout: float | None = None):
    """`prefcli run` in a subprocess; returns (seconds, summary dict). cache "" = <workdir>/cache."""
    env = {**os.environ, "PREFCLI_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "prefcli.cli.main", "run", str(toml), "--workdir", str(workdir),
                           "--json", *args], capture_output=True, env=env, timeout=timeout)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"prefcli run failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    return seconds, json.loads(proc.stdout)


def stage_seconds(summary: dict) -> str:
    return ", ".join(f"{row['stage']} {row['wall_s'] if row['wall_s'] is not None else '-'}"
                     for row in summary["tables"]["stages"])
