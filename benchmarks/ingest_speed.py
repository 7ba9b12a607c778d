"""Ingest speed for BENCHMARKS.md (section `ingest`): pairs/s of `prefcli ingest` on the fast path and on the
per-record path (--no-columnar), and rows/s of `polars.read_ndjson` of the same file in the same
run, with the ratio (goal: ingest within 3x the raw read). Also checks both paths wrote the same bytes.

Each command runs as its own subprocess (import time included); CPU = user + sys of that process.
Run: `.venv/bin/python benchmarks/ingest_speed.py [--pairs N] [--layout trl|pairwise] [--floor]`

`--floor` also times, alone and single-threaded, the work any ingest that writes prefcli's schema must do on
the file: start the CLI, parse the JSON, hash every pair's canonical JSON and normalised prompt (blake2b: the
`pair_id` / `prompt_id` every cache and earlier output keys on) and write the zstd Parquet output. Their CPU
spread perfectly over the cores, plus the start-up, is the fastest such an ingest could run here. Use it with
`--repeat 3`: the raw read it is compared with takes about 0.3 s, and one slow run of it moves the ratio a lot.
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


def floor(raw: Path, written: Path, reference_wall: float) -> dict:
    """Seconds of the unavoidable parts of an ingest of `raw` (whose output is `written`), and the best wall
    time they allow on this machine's cores, against the raw read's wall time."""
    import hashlib

    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    from prefcli.io.parquet import write_table
    from prefcli.models.reward.ensemble import usable_cores
    from prefcli.text import normalize

    startup, _ = min((timed([sys.executable, "-c", "import prefcli.cli.main"]) for _ in range(3)), key=lambda r: r[0])
    parts = {"start-up (wall)": startup}
    clock = time.process_time
    start = clock()
    pa_json.read_json(raw, read_options=pa_json.ReadOptions(use_threads=False))
    parts["JSON parse (pyarrow, one thread)"] = clock() - start
    table = pq.read_table(written)
    prompts = [m[0]["content"] for m in table.column("prompt").to_pylist()]
    payloads = [json.dumps([[["user", p]], c, r], ensure_ascii=False).encode()
                for p, c, r in zip(prompts, table.column("chosen").to_pylist(), table.column("rejected").to_pylist())]
    normalized = [normalize(p).encode() for p in prompts]
    start = clock()
    for data in (payloads, normalized):
        for d in data:
            hashlib.blake2b(d, digest_size=16).hexdigest()
    parts["blake2b ids (pair JSON + prompt)"] = clock() - start
    del payloads, normalized, prompts
    start = clock()
    write_table(table, OUT / "floor.parquet")
    parts["zstd Parquet write of the output"] = clock() - start
    cores = usable_cores()
    work = sum(v for k, v in parts.items() if k != "start-up (wall)")
    best = startup + work / cores
    return {"parts_s": {k: round(v, 3) for k, v in parts.items()}, "cores": cores,
            "best_wall_s": round(best, 3), "x_read": round(best / reference_wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--layout", choices=("trl", "pairwise"), default="trl")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs of each command")
    parser.add_argument("--floor", action="store_true",
                        help="also time the unavoidable parts of an ingest and the best wall time they allow")
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
    result = {"pairs": args.pairs, "layout": args.layout, "identical": same,
              "runs": {k: {"wall_s": round(w, 2), "cpu_s": c} for k, (w, c) in runs.items()}}
    if args.floor:
        result["floor"] = floor(raw, OUT / "fast.parquet", base_wall)
        print(f"\nunavoidable parts (CPU s, one thread; start-up as wall):")
        for name, seconds in result["floor"]["parts_s"].items():
            print(f"  {name:<36} {seconds:>7.2f}")
        print(f"best wall on {result['floor']['cores']} cores (start-up + parts / cores): "
              f"{result['floor']['best_wall_s']:.2f} s = {result['floor']['x_read']:.2f}x read_ndjson")
    (OUT / f"results_{args.layout}.json").write_text(json.dumps(result, indent=2) + "\n")
    if not same:
        raise SystemExit("fast and per-record outputs differ")


if __name__ == "__main__":
    main()
