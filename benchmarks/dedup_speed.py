"""Dedup speed on 20k+ real pairs, in one run:

1. wall time of prefcli dedup (cold: fresh cache, model load included) vs SemHash on the same rows and the
   same MiniLM model (SentenceTransformer, batch 64), as a ratio;
2. embedding throughput (texts/s) of prefcli's cached embedder vs plain SentenceTransformer.encode on
   the same unique texts;
3. re-runs against the cold run: warm cache (search again), warm cache + stored graph (re-threshold),
   and input with 1% new rows (full re-run, and incremental `dedup_new_rows` against the kept set).

Rows: AlpacaEval judgments (805 instructions answered by many models, so many exact duplicates) +
--hh HH-RLHF harmless pairs (multi-turn prompts), deduplicated `--on prompt` (the default).

    .venv/bin/python benchmarks/dedup_speed.py [--rows 20000] [--hh 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dedup_data import alpaca_judgments  # noqa: E402
from prefcli.models.embed import build_embedder, default_model_path, resolve_device  # noqa: E402
from prefcli.pairs import build_pairs, user_prompt  # noqa: E402
from prefcli.stages.dedup import DedupOptions, dedup, dedup_new_rows, text_keys  # noqa: E402
from prefcli.stages.ingest import load_pairs  # noqa: E402
from prefcli.text import texts_for  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEVICE = {"name": "cpu"}  # --device: cuda for the GPU figures (CUDA embeddings; faiss-gpu when installed)


def real_rows(total: int, hh: int) -> pa.Table:
    others = load_pairs(str(DATA / "hh-rlhf-harmless/test.jsonl.gz")).slice(0, hh)
    judged = alpaca_judgments(DATA, max(0, total - others.num_rows))
    first = [r["preference"] in (1, 1.0) for r in judged]
    alpaca = build_pairs([user_prompt(r["instruction"]) for r in judged],
                         [r["output_1"] if f else r["output_2"] for r, f in zip(judged, first)],
                         [r["output_2"] if f else r["output_1"] for r, f in zip(judged, first)],
                         source="alpaca_eval")
    return pa.concat_tables([alpaca, others.select(alpaca.column_names).cast(alpaca.schema)])


CPU = {}  # label -> process CPU seconds (all threads): stable on a shared box where wall time is not


def timed(fn, label: str | None = None):
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    if label:
        CPU[label] = time.process_time() - cpu
    return value, time.perf_counter() - start


class TimedEncode:
    """Measures the time spent inside the base embedder (the model, loaded beforehand), to get texts/s."""

    def __init__(self, cached):
        self.base = cached.embedder
        self.base.model  # load outside the measured region, as for plain encode
        self.seconds = 0.0
        self.texts = 0
        encode = self.base.encode

        def wrapped(texts):
            value, took = timed(lambda: encode(texts))
            self.seconds += took
            self.texts += len(texts)
            return value

        self.base.encode = wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--hh", type=int, default=1000, help="HH-RLHF pairs among the rows")
    parser.add_argument("--threshold", type=float, default=0.92)
    parser.add_argument("--throughput-only", type=int, metavar="N",
                        help="only compare embedding throughput on N unique prompts, interleaved and repeated")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args()
    DEVICE["name"] = resolve_device(args.device)
    if args.throughput_only:
        return throughput(real_rows(args.rows, args.hh), args.throughput_only)
    table = real_rows(args.rows, args.hh)
    # hold out 1% of rows whose prompts are new, for the "1% new rows" re-run
    prompts = texts_for(table, "prompt")
    keys = np.array(text_keys(prompts))
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    singles = np.sort(first[counts == 1])
    rng = np.random.default_rng(0)
    new_rows = np.sort(rng.choice(singles, size=min(len(singles), table.num_rows // 100), replace=False))
    is_new = np.zeros(table.num_rows, bool)
    is_new[new_rows] = True
    base, extra = table.filter(pa.array(~is_new)), table.filter(pa.array(is_new))
    full = pa.concat_tables([base, extra])
    print(f"rows={base.num_rows} (+{extra.num_rows} new) unique_prompts={len(set(text_keys(texts_for(base, 'prompt'))))}")
    options = DedupOptions(threshold=args.threshold, device=DEVICE["name"])

    with tempfile.TemporaryDirectory() as cache:
        def prefcli_cold():
            embedder = build_embedder(device=DEVICE["name"], cache_dir=cache)
            meter = TimedEncode(embedder)
            return dedup(base, embedder, options), embedder, meter

        (cold, embedder, meter), cold_s = timed(prefcli_cold, "prefcli")
        print(f"prefcli cold: {cold_s:.1f}s (cpu {CPU['prefcli']:.1f}s), embedded {meter.texts} texts in {meter.seconds:.1f}s "
              f"({meter.texts / meter.seconds:.0f} texts/s), index {cold.result.stats['index']}")

        def semhash_run():
            from sentence_transformers import SentenceTransformer
            from semhash import SemHash

            model = SentenceTransformer(default_model_path(), device=DEVICE["name"])

            class Encoder:
                def encode(self, inputs, **_):
                    return model.encode(list(inputs), batch_size=64, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)

            return SemHash.from_records(prompts_of(base), model=Encoder()).self_deduplicate(args.threshold), model

        (sem, model), sem_s = timed(semhash_run, "semhash")
        print(f"semhash: {sem_s:.1f}s (cpu {CPU['semhash']:.1f}s, {len(sem.filtered)} duplicates); prefcli/semhash "
              f"wall time {cold_s / sem_s:.2f}x, cpu time {CPU['prefcli'] / CPU['semhash']:.2f}x "
              f"(prefcli flagged {base.num_rows - cold.result.stats['clusters']})")

        unique = [cold.texts[i] for i in cold.groups.first_row]
        _, plain_s = timed(lambda: model.encode(unique, batch_size=64, normalize_embeddings=True,
                                                convert_to_numpy=True, show_progress_bar=False), "plain")
        print(f"plain SentenceTransformer.encode: {len(unique) / plain_s:.0f} texts/s on the same {len(unique)} "
              f"texts; prefcli {meter.texts / meter.seconds:.0f} texts/s "
              f"(ratio {plain_s / meter.seconds:.2f}x)")

        warm, warm_s = timed(lambda: dedup(base, build_embedder(device=DEVICE["name"], cache_dir=cache), options))
        stored = cold.graph.to_table(cold.groups, base.column("pair_id").to_pylist())
        graph_run, graph_s = timed(lambda: dedup(base, build_embedder(device=DEVICE["name"], cache_dir=cache),
                                                 DedupOptions(threshold=0.85, device=DEVICE["name"]),
                                                 graph_source=lambda fp: stored))
        assert graph_run.result.stats["graph_reused"] and graph_run.result.stats["embedded"] == 0
        # both 1% runs start from the same cache state (the cold run's)
        before_new = f"{cache}-copy"
        shutil.copytree(cache, before_new)
        more, more_s = timed(lambda: dedup(full, build_embedder(device=DEVICE["name"], cache_dir=cache), options))
        kept = cold.result.out
        fresh_embedder = build_embedder(device=DEVICE["name"], cache_dir=before_new)
        inc, inc_s = timed(lambda: dedup_new_rows(extra, kept, fresh_embedder, options))
        shutil.rmtree(before_new)
        print(f"warm cache re-run: {warm_s:.1f}s ({warm_s / cold_s:.1%} of cold, embedded "
              f"{warm.result.stats['embedded']})")
        print(f"re-threshold from stored graph: {graph_s:.1f}s ({graph_s / cold_s:.1%} of cold, embedded 0)")
        print(f"1% new rows, full re-run: {more_s:.1f}s ({more_s / cold_s:.1%} of cold, embedded "
              f"{more.result.stats['embedded']})")
        print(f"1% new rows, incremental vs kept set: {inc_s:.1f}s ({inc_s / cold_s:.1%} of cold, embedded "
              f"{inc.stats['embedded']})")


def throughput(table: pa.Table, n: int, rounds: int = 2) -> None:
    """prefcli's cached embedder (fresh cache each round) vs plain SentenceTransformer.encode, alternating,
    so both see the same machine load; model load excluded from both."""
    from sentence_transformers import SentenceTransformer

    prompts = texts_for(table, "prompt")
    first = np.unique(np.array(text_keys(prompts)), return_index=True)[1]
    unique = [prompts[i] for i in np.sort(first)[:n]]
    model = SentenceTransformer(default_model_path(), device=DEVICE["name"])
    for r in range(rounds):
        _, plain_s = timed(lambda: model.encode(unique, batch_size=64, normalize_embeddings=True,
                                                convert_to_numpy=True, show_progress_bar=False), "plain")
        with tempfile.TemporaryDirectory() as cache:
            embedder = build_embedder(device=DEVICE["name"], cache_dir=cache)
            embedder.embedder.model  # loaded outside the timing
            _, ours_s = timed(lambda: embedder.encode(unique), "prefcli")
        print(f"round {r + 1}: {len(unique)} texts; plain {len(unique) / plain_s:.1f} texts/s "
              f"(cpu {CPU['plain']:.1f}s), prefcli {len(unique) / ours_s:.1f} texts/s (cpu {CPU['prefcli']:.1f}s); "
              f"prefcli/plain throughput {plain_s / ours_s:.2f}x, cpu {CPU['prefcli'] / CPU['plain']:.2f}x")


def prompts_of(table: pa.Table) -> list[str]:
    return texts_for(table, "prompt")


if __name__ == "__main__":
    main()
