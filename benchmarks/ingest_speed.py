"""Ingest speed for BENCHMARKS.md (section `ingest`): pairs/s of `prefcli ingest` on the fast path and on the
per-record path (--no-columnar), and rows/s of `polars.read_ndjson` of the same file in the same
run, with the ratio (goal: ingest within 3x the raw read). Also checks both paths wrote the same bytes.

Each command runs as its own subprocess (import time included); CPU = user + sys of that process.
Run: `.venv/bin/python benchmarks/ingest_speed.py [--pairs N] [--layout trl|pairwise]`
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

from ingest_alpaca import synthetic, text_maker

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench_out" / "ingest_speed"

_WRAP = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
         "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
         "sys.stderr.write(f'\\ncpu_s={u.ru_utime + u.ru_stime:.2f}\\n'); sys.exit(rc)")


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    return wall, float(proc.stderr.strip().rsplit("cpu_s=", 1)[1])


def pairwise(path: Path, n: int, seed: int = 0) -> None:
    """N AlpacaEval-like judgments: instruction, output_1/2, preference 1 or 2, generator and annotator."""
    rng = random.Random(seed)
    text = text_maker(rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"instruction": f"#{i} " + text(5, 60), "output_1": text(5, 200),
                                 "generator_1": "gpt4", "output_2": text(5, 200), "generator_2": f"model-{i % 97}",
                                 "annotator": "judge", "preference": rng.choice([1, 2])}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--layout", choices=("trl", "pairwise"), default="trl")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs of each command")
    args = parser.parse_args()
    raw = OUT / f"{args.layout}_{args.pairs}.jsonl"
    if not raw.exists():
        (synthetic if args.layout == "trl" else pairwise)(raw, args.pairs)
    read = [sys.executable, "-c", f"import polars; assert polars.read_ndjson({str(raw)!r}).height == {args.pairs}"]
    runs = {}
    for name, cmd, env in (
            ("polars.read_ndjson", read, None),
            ("ingest fast path", [sys.executable, "-m", "prefcli.cli.main", "ingest", str(raw), "-o",
                                  str(OUT / "fast.parquet"), "--quiet"], None),
            ("ingest per-record", [sys.executable, "-m", "prefcli.cli.main", "ingest", str(raw), "-o",
                                   str(OUT / "slow.parquet"), "--quiet", "--no-columnar"], None)):
        runs[name] = min((timed(cmd, env) for _ in range(args.repeat)), key=lambda r: r[0])
    same = all((OUT / f"fast{s}").read_bytes() == (OUT / f"slow{s}").read_bytes()
               for s in (".parquet", ".rejects.parquet"))
    base_wall, base_cpu = runs["polars.read_ndjson"]
    print(f"{args.pairs:,} {args.layout} pairs, {raw.stat().st_size / 1e6:.0f} MB JSONL; outputs identical: {same}")
    print(f"{'command':<22} {'wall s':>8} {'CPU s':>8} {'pairs/s':>10} {'x read (wall)':>14} {'x read (CPU)':>13}")
    for name, (wall, cpu) in runs.items():
        print(f"{name:<22} {wall:>8.2f} {cpu:>8.2f} {args.pairs / wall:>10,.0f} {wall / base_wall:>14.2f} "
              f"{cpu / base_cpu:>13.2f}")
    (OUT / f"results_{args.layout}.json").write_text(json.dumps(
        {"pairs": args.pairs, "layout": args.layout, "identical": same,
         "runs": {k: {"wall_s": round(w, 2), "cpu_s": c} for k, (w, c) in runs.items()}}, indent=2) + "\n")
    if not same:
        raise SystemExit("fast and per-record outputs differ")


if __name__ == "__main__":
    main()
