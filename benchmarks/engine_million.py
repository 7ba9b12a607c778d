"""N synthetic pairs through ingest -> dedup (exact + semantic, --drop) -> export, with --engine local and
--engine ray: wall time per stage, peak RSS of the driver, and rows conserved (in = out + set aside, per stage).

    python benchmarks/engine_million.py --pairs 10000,100000 [--engines local,ray] [--verify none] [--out DIR]

With several sizes it also prints how the driver's peak RSS grows from the smallest to the largest size, per
engine (the ray engine's driver holds one block at a time, so it should not grow with the data).

Each engine runs `prefcli run` in a fresh subprocess (ray: a local cluster started by `ray.init()`), with its own
workdir and cache. The numbers come from the run's manifest.json (peak_rss_mb is the driver's VmHWM per stage).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

WORDS = ("river mountain cloud engine garden theory market window silver planet orange history network "
         "pattern signal doctor summer winter lesson bridge castle forest memory rocket violin").split()
TOPICS = ["Explain", "Summarise", "Write a poem about", "List three facts about", "Compare", "Describe"]

PIPELINE = """
[pipeline]
name = "engine-bench"
seed = 0

[[stage]]
name = "ingest"
command = "ingest"
inputs = ["{raw}"]

[[stage]]
name = "dedup"
command = "dedup"
input = "@ingest"
drop = true
{dedup_extra}

[[stage]]
name = "export"
command = "export"
input = "@dedup"
to = "jsonl"
output = "train.jsonl"
"""


def synthetic(path: Path, n: int, seed: int = 0) -> None:
    """TRL-standard JSONL: ~8% exact repeats of an earlier prompt, ~4% one-typo variants, the rest distinct."""
    rng = random.Random(seed)
    prompts: list[str] = []
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i in range(n):
            roll = rng.random()
            if prompts and roll < 0.08:
                prompt = rng.choice(prompts)
            elif prompts and roll < 0.12:
                base = rng.choice(prompts)
                j = rng.randrange(len(base))
                prompt = base[:j] + rng.choice("abcdefghij") + base[j + 1:]
            else:
                prompt = f"{rng.choice(TOPICS)} the {' '.join(rng.sample(WORDS, 4))} (case {i})"
                prompts.append(prompt)
            chosen = " ".join(rng.choices(WORDS, k=rng.randint(8, 30)))
            rejected = " ".join(rng.choices(WORDS, k=rng.randint(4, 20)))
            fh.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")


def run(engine: str, pipeline: Path, workdir: Path) -> dict:
    env = {**os.environ, "PREFCLI_CACHE_DIR": str(workdir / "cache"), "HF_HUB_OFFLINE": "1"}
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "prefcli.cli.main", "run", str(pipeline), "--workdir",
                             str(workdir), "--engine", engine, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    memory = watch_memory(proc)
    _, stderr = proc.communicate()
    wall = time.perf_counter() - began
    if proc.returncode:
        raise SystemExit(f"{engine}: exit {proc.returncode}: {stderr.strip()[-2000:]}")
    manifest = json.loads((workdir / "manifest.json").read_text())
    stages = {}
    for name, record in manifest["stages"].items():
        rows_in, rows_out, aside = record["rows_in"], record["rows_out"], record["rows_set_aside"]
        stages[name] = {"wall_s": record["wall_s"], "peak_rss_mb": record["peak_rss_mb"], "rows_in": rows_in,
                        "rows_out": rows_out, "set_aside": aside,
                        "conserved": rows_in is None or rows_out is None or rows_in == rows_out + aside}
    kept = pq.read_table(workdir / "dedup" / "dedup.parquet", columns=["pair_id"]).column("pair_id").to_pylist()
    return {"engine": engine, "wall_s": round(wall, 1), "stages": stages, **memory.result(), "kept": sorted(kept)}


class watch_memory:
    """Samples the driver's /proc status every 0.2 s: peak private memory (RssAnon) and peak shared memory
    (RssShmem: pages of Ray's object store the driver has mapped while writing blocks), which VmHWM adds up."""

    def __init__(self, proc):
        import threading

        self.proc, self.peak = proc, {"RssAnon": 0, "RssShmem": 0}
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while self.proc.poll() is None:
            try:
                with open(f"/proc/{self.proc.pid}/status") as fh:
                    for line in fh:
                        key = line.split(":")[0]
                        if key in self.peak:
                            self.peak[key] = max(self.peak[key], int(line.split()[1]) // 1024)
            except OSError:
                pass
            time.sleep(0.2)

    def result(self) -> dict:
        self.thread.join()
        return {"driver_private_peak_mb": self.peak["RssAnon"], "driver_shared_peak_mb": self.peak["RssShmem"]}


def one_size(pairs: int, engines: list[str], root: Path, verify: str | None = None) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    raw = root / "raw.jsonl.gz"
    if not raw.exists():
        synthetic(raw, pairs)
    pipeline = root / "bench.toml"
    pipeline.write_text(PIPELINE.format(raw=raw, dedup_extra=f'verify = "{verify}"' if verify else ""))
    results = [run(engine, pipeline, root / engine) for engine in engines]
    for result in results:
        peak = max(stage["peak_rss_mb"] or 0 for stage in result["stages"].values())
        result.update(pairs=pairs, driver_peak_mb=peak)
        print(json.dumps({k: v for k, v in result.items() if k != "kept"}), flush=True)
    if len(results) == 2:
        a, b = set(results[0]["kept"]), set(results[1]["kept"])
        print(json.dumps({"pairs": pairs, "kept_local": len(a), "kept_ray": len(b),
                          "kept_jaccard": round(len(a & b) / max(1, len(a | b)), 5),
                          "wall_ratio_ray_over_local": round(results[1]["wall_s"] / results[0]["wall_s"], 2)}),
              flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", default="100000", help="one size or several, comma-separated")
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--verify", default=None,
                        help="dedup --verify (default: the cascade's MiniLM verifier; none: the static model alone)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="engine-bench-"))
    sizes = [int(p) for p in str(args.pairs).split(",")]
    engines = args.engines.split(",")
    by_size = {n: one_size(n, engines, root / str(n), args.verify) for n in sizes}
    if len(sizes) > 1:
        small, large = by_size[min(sizes)], by_size[max(sizes)]
        for a, b in zip(small, large):
            print(json.dumps({"engine": a["engine"], "pairs": [min(sizes), max(sizes)],
                              "driver_peak_mb": [a["driver_peak_mb"], b["driver_peak_mb"]],
                              "driver_private_peak_mb": [a["driver_private_peak_mb"], b["driver_private_peak_mb"]],
                              "driver_growth_mb": round(b["driver_peak_mb"] - a["driver_peak_mb"], 1),
                              "wall_s": [a["wall_s"], b["wall_s"]]}))


if __name__ == "__main__":
    main()
