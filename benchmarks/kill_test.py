"""Kill test: `kill -9` a `prefcli run` at random moments, then check nothing was lost.

    .venv/bin/python benchmarks/kill_test.py [--kills 20] [--lines 300] [--seed 0]

An uninterrupted run gives the reference output. Trials alternate between two kinds of run:
a `--force` run (every stage rewrites its output) in a workdir holding a completed run, and a run
in a fresh workdir. Each is killed after a random delay drawn uniformly over that kind's measured
wall time; a trial where the run finished first does not count and is retried. After each kill:
  1. the previous outputs stay readable: every stage output the manifest records is there, with the
     recorded digest, and every Parquet output reads;
  2. a plain rerun completes (resuming: stages whose records still match are skipped);
  3. the final output equals the uninterrupted run's, byte for byte.
Prints one line per kill (what the run was doing when killed) and the count of passes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from run_common import HH, run_pipeline, write_raw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prefcli import io  # noqa: E402

PIPELINE = """
[pipeline]
name = "kill-test"
seed = 1

[[stage]]
command = "ingest"
inputs = ["raw"]
format = "hh-rlhf"

[[stage]]
command = "dedup"

[[stage]]
name = "rebalance"
command = "length-bias rebalance"

[[stage]]
command = "export"
to = "trl"
output = "train.jsonl"
"""
FINAL = Path("export") / "train.jsonl"


def outputs_readable(work: Path) -> str | None:
    """None when every recorded output is intact and readable, else what is wrong."""
    if not (work / "manifest.json").exists():
        return None  # killed before the first stage completed: nothing to keep
    manifest = json.loads((work / "manifest.json").read_text())
    for stage, record in manifest["stages"].items():
        for name, digest in record["outputs"].items():
            path = work / stage / name
            if not path.is_file():
                return f"{stage}/{name} missing"
            if io.file_digest(path) != digest:
                return f"{stage}/{name} changed"
            if name.endswith(".parquet"):
                pq.read_table(path)
    return None


def doing(work: Path) -> str:
    if not work.exists():
        return "starting up"
    pending = sorted(p.name.split(".")[1] for p in work.iterdir() if p.name.endswith(".tmp") and p.is_dir())
    return f"inside stage {pending[0]}" if pending else "between stages / starting up"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="prefcli-kill-") as scratch:
        root = Path(scratch)
        write_raw(HH, root / "raw" / "hh.jsonl", 0, args.lines)
        toml = root / "pipeline.toml"
        toml.write_text(PIPELINE)
        cache = str(root / "cache")
        run_pipeline(toml, root / "reference", cache=cache)  # warms the shared cache
        reference = (root / "reference" / FINAL).read_bytes()
        fresh_wall, _ = run_pipeline(toml, root / "work", cache=cache)
        force_wall, _ = run_pipeline(toml, root / "work", "--force", cache=cache)
        env = {**os.environ, "PREFCLI_CACHE_DIR": cache}
        passed = landed = attempts = 0
        while landed < args.kills and attempts < 3 * args.kills:
            attempts += 1
            fresh = landed % 2 == 1
            work, wall = (root / f"fresh-{landed}", fresh_wall) if fresh else (root / "work", force_wall)
            delay = rng.uniform(0, wall)
            proc = subprocess.Popen([sys.executable, "-m", "prefcli.cli.main", "run", str(toml), "--workdir",
                                     str(work), "--quiet", *([] if fresh else ["--force"])], env=env)
            try:
                proc.wait(timeout=delay)
                print(f"(run finished before the kill at {delay:.1f}s: retried)", flush=True)
                continue
            except subprocess.TimeoutExpired:
                state = doing(work)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            landed += 1
            problem = outputs_readable(work)
            _, summary = run_pipeline(toml, work, cache=cache)
            same = (work / FINAL).read_bytes() == reference
            passed += problem is None and same
            reran = [r["stage"] for r in summary["tables"]["stages"] if r["status"] == "ran"]
            print(f"kill {landed:2d} ({'fresh workdir' if fresh else '--force over a completed run'}) at "
                  f"{delay:5.1f}s, {state}: outputs {'readable' if problem is None else problem}; rerun completed "
                  f"(ran: {', '.join(reran) or 'nothing'}); final output {'identical' if same else 'DIFFERENT'}",
                  flush=True)
        print(f"{passed}/{landed} kills ({attempts} runs started): previous outputs readable, rerun completed, "
              f"final output identical")
        if passed != landed or landed < args.kills:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
