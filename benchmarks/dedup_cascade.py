"""Cascade dedup (static model proposes, MiniLM verifies) vs MiniLM alone vs SemHash on the static model.

Same near-duplicate benchmark as benchmarks/dedup_quality.py (real AlpacaEval and HH-RLHF prompts, with
constructed variants and natural repeats), in one run, each method timed from an empty vector cache:
- prefcli, MiniLM only (`--model minilm`): every text embedded by the encoder;
- prefcli cascade (`--model static --verify minilm`, the default) at each --propose threshold;
- prefcli, static only (`--verify none`);
- SemHash 0.5 with the same static model (its encoder and index), at its default threshold 0.9 and at 0.95.

Prints precision, recall, F1, the texts the encoder embedded, wall seconds, and the ratios the throughput
issue sets as goals: cascade F1 minus MiniLM-only F1 (goal >= -0.003) and cascade time / SemHash time
(goal <= 1.0).

    .venv/bin/python benchmarks/dedup_cascade.py [--variants 800] [--propose 0.7,0.8,0.85]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dedup_data import prompt_pairs  # noqa: E402
from dedup_quality import DATA, build_benchmark, pair_scores  # noqa: E402
from prefcli.models.embed import MINILM, STATIC, build_embedder, ensure_static_model  # noqa: E402
from prefcli.models.index import connected_components  # noqa: E402
from prefcli.stages.dedup import DEFAULT_THRESHOLD, DedupOptions, dedup, text_keys  # noqa: E402


def prefcli_run(table, model: str, verify: str | None, options: DedupOptions):
    """(cluster per row, seconds, texts the encoder embedded) from an empty vector cache."""
    with tempfile.TemporaryDirectory() as cache:
        start, cpu = time.perf_counter(), time.process_time()
        embedder = build_embedder(model, device="cpu", cache_dir=cache)
        verifier = build_embedder(verify, device="cpu", cache_dir=cache) if verify else None
        run = dedup(table, embedder, options, verifier=verifier)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    clusters = np.array(text_keys(run.result.out.column("dedup_cluster").to_pylist()))
    encoded = (verifier or embedder).computed if (verify or model != STATIC) else 0
    return clusters, seconds, cpu, encoded


def semhash_run(texts: list[str], threshold: float, static_path: Path):
    from model2vec import StaticModel
    from semhash import SemHash

    start, cpu = time.perf_counter(), time.process_time()
    result = SemHash.from_records(texts, model=StaticModel.from_pretrained(str(static_path))
                                  ).self_deduplicate(threshold=threshold)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    canonical = {t: t for t in result.selected}
    canonical.update({d.record: d.duplicate_of for d in result.filtered})
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    a = np.array([first[t] for t in texts])
    b = np.array([first[canonical.get(t, t)] for t in texts])
    return connected_components(len(texts), a, b)[a], seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--propose", default="0.7,0.8,0.85")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing")
    start = time.perf_counter()
    static_path = ensure_static_model()
    print(f"static model: {static_path} ({time.perf_counter() - start:.1f}s to build or find)")
    texts, truth, kinds, n_base = build_benchmark(args.variants, args.seed)
    print(f"rows={len(texts)} distinct_prompts={n_base} positives={sum(k is not None for k in kinds)}")
    table = prompt_pairs(texts)
    rows = []

    def add(name, clusters, seconds, cpu, encoded):
        rows.append({"method": name, **pair_scores(clusters, truth), "encoded": encoded, "seconds": seconds,
                     "cpu": cpu})
        print(f"  {name}: {rows[-1]}", flush=True)

    options = DedupOptions(threshold=args.threshold)
    add(f"prefcli minilm only @{args.threshold}", *prefcli_run(table, MINILM, None, options))
    for propose in [float(p) for p in args.propose.split(",")]:
        opts = DedupOptions(threshold=args.threshold, propose=propose)
        add(f"prefcli cascade propose {propose} @{args.threshold}",
            *prefcli_run(table, STATIC, MINILM, opts))
    for t in (0.9, 0.95):
        add(f"prefcli static only @{t}", *prefcli_run(table, STATIC, None, DedupOptions(threshold=t)))
        add(f"semhash static @{t}", *semhash_run(texts, t, static_path), 0)
    print("\n| method | precision | recall | F1 | texts encoded by MiniLM | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['precision']} | {r['recall']} | {r['f1']} | {r['encoded']} | {r['seconds']:.2f} "
              f"| {r['cpu']:.2f} |")
    minilm = rows[0]
    semhash = next(r for r in rows if r["method"] == "semhash static @0.9")
    print("\ngoals: cascade F1 - MiniLM-only F1 >= -0.003; cascade wall / SemHash wall <= 1.0")
    for r in rows:
        if "cascade" in r["method"]:
            print(f"| {r['method']} | F1 delta {r['f1'] - minilm['f1']:+.4f} | wall x{r['seconds'] / semhash['seconds']:.1f}, "
                  f"CPU x{r['cpu'] / semhash['cpu']:.1f} SemHash | CPU x{r['cpu'] / minilm['cpu']:.2f} MiniLM-only "
                  f"| encoded {r['encoded']}/{minilm['encoded']} |")


if __name__ == "__main__":
    main()
