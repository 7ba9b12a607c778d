"""dedup --on pair on real pairs that share prompts and rejected answers: how many distinct pairs each rule
merges. AlpacaEval: for each instruction, several models' answers (chosen) against the one reference answer
(rejected), first 3,000 (instruction, model) pairs of ../shared/data's annotations file; 40 planted copies with
two letters swapped in the chosen answer measure what must still be found.

    .venv/bin/python benchmarks/pair_dedup.py [--pairs 3000] [--thresholds 0.92,0.95,0.97] [--no-minilm]

Prints, per model (static alone; the cascade static -> MiniLM) and threshold, the rows set aside, of which
planted copies found, for the whole-pair cosine alone and for the part-by-part rule (prefcli's).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca-eval-annotations" / "annotations_compact.jsonl.gz"


def answer_pairs(n: int, planted: int = 40, seed: int = 5):
    from prefcli.pairs import build_pairs, user_prompt

    seen, prompts, chosen, rejected = set(), [], [], []
    with gzip.open(DATA, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            key = (rec["instruction"], rec["generator_2"])
            if key in seen or not rec["output_1"].strip() or not rec["output_2"].strip():
                continue
            seen.add(key)
            prompts.append(user_prompt(rec["instruction"]))
            chosen.append(rec["output_2"])
            rejected.append(rec["output_1"])
            if len(prompts) == n:
                break
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(prompts), planted, replace=False):
        j = int(rng.integers(1, len(chosen[i]) - 2))
        prompts.append(prompts[i])
        chosen.append(chosen[i][:j] + chosen[i][j + 1] + chosen[i][j] + chosen[i][j + 2:])
        rejected.append(rejected[i])
    return build_pairs(prompts, chosen, rejected, source="alpaca_eval"), len(prompts) - planted


def run(table, n: int, proposer, verifier, threshold: float, by_parts: bool) -> tuple[int, int, float]:
    import prefcli.stages.dedup as dd

    real = dd.by_parts
    if not by_parts:
        dd.by_parts = lambda graph, *args, **kwargs: graph
    try:
        began = time.perf_counter()
        result = dd.dedup(table, proposer, dd.DedupOptions(on="pair", drop=True, threshold=threshold),
                          verifier=verifier).result
        seconds = time.perf_counter() - began
    finally:
        dd.by_parts = real
    ids = table.column("pair_id").to_pylist()
    row_of = {pid: i for i, pid in enumerate(ids)}
    removed = {row_of[p] for p in result.set_aside.column("pair_id").to_pylist()} if result.set_aside else set()
    return len(removed), sum(1 for i in range(n, table.num_rows) if i in removed), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--thresholds", default="0.92,0.95,0.97")
    parser.add_argument("--no-minilm", action="store_true", help="the static model only (fast)")
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"skipped: {DATA} not found (../shared/data)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from prefcli.models.embed import STATIC, build_embedder

    table, n = answer_pairs(args.pairs)
    static = build_embedder(STATIC)
    setups = [("static alone", None)] + ([] if args.no_minilm else [("static -> MiniLM", build_embedder("minilm"))])
    print(f"{n:,} AlpacaEval pairs ({len({str(p) for p in table.column('prompt').to_pylist()})} prompts) "
          f"+ {table.num_rows - n} planted copies")
    print(f"{'model':18} {'threshold':>9}  {'whole pair: aside (planted found)':>34}  {'by parts: aside (planted found)':>32}")
    for label, verifier in setups:
        for threshold in (float(t) for t in args.thresholds.split(",")):
            whole = run(table, n, static, verifier, threshold, by_parts=False)
            parts = run(table, n, static, verifier, threshold, by_parts=True)
            print(f"{label:18} {threshold:9.2f}  {whole[0]:>22,} ({whole[1]}/{table.num_rows - n})"
                  f"  {parts[0]:>21,} ({parts[1]}/{table.num_rows - n})")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
