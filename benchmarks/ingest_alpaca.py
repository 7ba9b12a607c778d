"""Ingest figures for BENCHMARKS.md (section `ingest`):

1. Full AlpacaEval annotations (108,665 judgments, 100 MB gz) through `prefcli ingest`: wall time, peak RSS.
2. A synthetic stream of N pairs (default 1,000,000) through `prefcli ingest` then `prefcli stats`: wall time
   and peak RSS of each (goal: within 2 GB).

Each command runs as its own subprocess; peak RSS is that process's ru_maxrss (RUSAGE_CHILDREN of a
one-command wrapper). Run: `.venv/bin/python benchmarks/ingest_alpaca.py [--pairs N] [--skip-alpaca]`
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca-eval-annotations" / "annotations_compact.jsonl.gz"
OUT = ROOT / "bench_out" / "ingest"

# Runs one command and prints its peak RSS (KiB on Linux) as the last line of stderr.
_WRAP = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
         "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
         "sys.stderr.write(f'\\ncpu_s={u.ru_utime + u.ru_stime:.1f} maxrss_kib={u.ru_maxrss}\\n'); "
         "sys.exit(rc)")


def measure(*args: str) -> dict:
    cmd = [sys.executable, "-m", "prefcli.cli.main", *args]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{proc.stderr}")
    tail = proc.stderr.strip().rsplit("cpu_s=", 1)[1]
    cpu, rss = tail.split(" maxrss_kib=")
    return {"command": "prefcli " + " ".join(args), "seconds": round(seconds, 1), "cpu_seconds": float(cpu),
            "peak_rss_mib": round(int(rss) / 1024), "stdout": proc.stdout}


def describe(run: dict) -> str:
    return f"{run['seconds']} s wall, {run['cpu_seconds']} s CPU, peak RSS {run['peak_rss_mib']} MiB"


WORDS = ("the model answer data question river system light garden energy market city music value code "
         "history window table paper story water friend number moment science").split()


def text_maker(rng: random.Random):
    """text(lo, hi): a sentence of lo..hi random words."""
    return lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def synthetic(path: Path, n: int, seed: int = 0) -> None:
    """N trl-standard pairs with varied lengths (prompts 5-60 words, responses 5-200 words)."""
    text = text_maker(random.Random(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"#{i} " + text(5, 60), "chosen": text(5, 200),
                                 "rejected": text(5, 200)}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--skip-alpaca", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    args = parser.parse_args()
    results = {}
    if not args.skip_alpaca:
        run = measure("ingest", str(ALPACA), "-o", str(OUT / "alpaca.parquet"), "--label-source", "ai", "--json")
        summary = json.loads(run.pop("stdout"))
        run.update(rows_read=summary["records"], pairs_written=summary["written"], set_aside=summary["set_aside"])
        results["alpaca_ingest"] = run
        print(f"AlpacaEval ingest: {describe(run)}, "
              f"{run['rows_read']} rows -> {run['pairs_written']} pairs")
    if args.skip_synthetic:
        return
    raw = OUT / f"synthetic_{args.pairs}.jsonl"
    if not raw.exists():
        synthetic(raw, args.pairs)
    run = measure("ingest", str(raw), "-o", str(OUT / "synthetic.parquet"), "--quiet")
    run.pop("stdout")
    results["synthetic_ingest"] = run
    print(f"{args.pairs:,} synthetic pairs ingest: {describe(run)}")
    run = measure("stats", str(OUT / "synthetic.parquet"), "--json")
    assert json.loads(run.pop("stdout"))["rows"] == args.pairs
    results["synthetic_stats"] = run
    print(f"{args.pairs:,} synthetic pairs stats: {describe(run)}")
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
