"""`prefcli mine` on AlpacaEval: false-negative rate against the judge, hardness against random negatives.

AlpacaEval answers each instruction with ~50 models, each judged against one reference output
(output_1). Judge verdicts give a partial order per instruction: model > ref or model < ref, and
model A > ref > model B implies A > B. The benchmark hides most verdicts while mining:

  - instructions are split in two folds; each fold is mined on its own;
  - input pairs: per instruction, the reference against `--labelled` random models, oriented by the judge;
  - pool: the other models' outputs, unlabelled (`mine(..., pool=...)`), so the guard never sees their verdicts;
  - the mining reward models (the `prefcli mine` defaults) train on the fold's input pairs only.

Each mined pair (chosen X, rejected Z) is then checked against the hidden verdicts:
  X = ref: Z judged better than ref -> false negative, worse -> correct;
  X = model judged better than ref: Z = ref or Z judged worse than ref -> correct, Z better -> unknown.
False-negative rate = false negatives / checkable mined pairs. Hardness: a held-out reward model
(offline ensemble trained on the *other* fold's instructions, all verdicts) scores chosen - negative;
harder negatives have a smaller margin, and they sit closer to the chosen in embedding space.
Random negatives: one uniformly drawn pool response per source pair (same pool, same seed).
Hardness is reported three ways, mined vs random as a ratio: over all negatives; over verified-correct
negatives only (judge confirms them worse than the chosen) against random pool responses drawn among
the verified-correct ones; and on the same chosen responses (source pairs with both).

Run: .venv/bin/python benchmarks/mine.py [--instructions 60] [--labelled 6]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFCLI_CACHE_DIR", "/work/cache")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from prefcli.cli.mine import DEFAULT_RMS  # noqa: E402
from prefcli.models.embed import build_embedder  # noqa: E402
from prefcli.models.reward import parse_rm_spec  # noqa: E402
from prefcli.pairs import build_pairs, user_prompt  # noqa: E402
from prefcli.stages.mine import MineParams, mine  # noqa: E402
from prefcli.stages.vote import robust_scale  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALPACA = DATA / "alpaca-eval-annotations" / "annotations_compact.jsonl.gz"
REF = "__reference__"


def load_verdicts(annotator: str, n_instructions: int, seed: int) -> dict[str, dict]:
    """instruction -> {"ref": text, "models": {generator: (text, +1 better than ref | -1 worse)}}; ties left out."""
    by_instruction: dict[str, dict] = {}
    with gzip.open(ALPACA, "rt") as fh:
        for line in fh:
            row = json.loads(line)
            pref = row.get("preference")
            if row.get("annotator") != annotator or pref is None or pref == 1.5 or pref == 0:
                continue
            o1, o2 = row.get("output_1") or "", row.get("output_2") or ""
            if not o1.strip() or not o2.strip() or o1.strip() == o2.strip():
                continue
            entry = by_instruction.setdefault(row["instruction"], {"ref": o1, "models": {}})
            if o1 == entry["ref"]:
                entry["models"].setdefault(row["generator_2"], (o2, 1 if pref > 1.5 else -1))
    names = sorted(by_instruction)
    pick = sorted(np.random.default_rng(seed).permutation(len(names))[:n_instructions])
    return {names[i]: by_instruction[names[i]] for i in pick}


def fold_tables(verdicts: dict, instructions: list[str], labelled: int, seed: int):
    """(input pairs, unlabelled pool, all judged pairs) for these instructions."""
    rng = np.random.default_rng(seed)
    cols = {k: {"p": [], "c": [], "r": []} for k in ("input", "pool", "all")}

    def add(kind, instruction, chosen, rejected):
        cols[kind]["p"].append(user_prompt(instruction))
        cols[kind]["c"].append(chosen)
        cols[kind]["r"].append(rejected)

    for instruction in instructions:
        entry = verdicts[instruction]
        models = sorted(entry["models"])
        shown = set(rng.permutation(len(models))[:labelled].tolist())
        for i, model in enumerate(models):
            text, verdict = entry["models"][model]
            chosen, rejected = (text, entry["ref"]) if verdict > 0 else (entry["ref"], text)
            add("all", instruction, chosen, rejected)
            if i in shown:
                add("input", instruction, chosen, rejected)
            else:  # unlabelled: the orientation carries no information, both sides become candidates
                add("pool", instruction, text, entry["ref"])
    return {k: build_pairs(v["p"], v["c"], v["r"], source=f"alpaca-eval-{k}", label_source="ai")
            for k, v in cols.items()}


def verdict_map(entry: dict) -> dict[str, int]:
    """response text -> +1 judged better than the reference, -1 worse, 0 the reference itself."""
    verdict = {text: v for text, v in entry["models"].values()}
    verdict[entry["ref"]] = 0
    return verdict


def judge(chosen: str, rejected: str, verdict: dict[str, int]) -> str:
    """correct / false_negative / unknown for (chosen, rejected) under the partial order of the verdicts."""
    x, z = verdict.get(chosen), verdict.get(rejected)
    if x is None or z is None:
        return "unknown"
    if x == 0:
        return "false_negative" if z > 0 else "correct"
    return "correct" if x > 0 and z <= 0 else "unknown"


def check(pairs: pa.Table, verdicts: dict) -> list[str]:
    """Judge status of each pair against the hidden judge verdicts."""
    return [judge(chosen, rejected, verdict_map(verdicts[prompt[-1]["content"]]))
            for prompt, chosen, rejected in zip(pairs.column("prompt").to_pylist(), pairs.column("chosen").to_pylist(),
                                                pairs.column("rejected").to_pylist())]


def random_negatives(inputs: pa.Table, pool: pa.Table, seed: int,
                     verdicts: dict | None = None) -> tuple[pa.Table, list[str]]:
    """One uniformly drawn pool response (to the same prompt, not the chosen) per input pair, and the
    source pair ids. With `verdicts`, only responses the judge confirms worse than the chosen are drawn
    (an oracle-filtered random baseline: verified-correct random negatives)."""
    rng = np.random.default_rng(seed)
    responses = defaultdict(list)
    for pid, a in zip(pool.column("prompt_id").to_pylist(), pool.column("chosen").to_pylist()):
        responses[pid].append(a)
    prompts, chosen, rejected, sources = [], [], [], []
    for row in inputs.to_pylist():
        options = [r for r in responses[row["prompt_id"]] if r.strip() != row["chosen"].strip()]
        if verdicts is not None:
            verdict = verdict_map(verdicts[row["prompt"][-1]["content"]])
            options = [r for r in options if judge(row["chosen"], r, verdict) == "correct"]
        if options:
            prompts.append(row["prompt"])
            chosen.append(row["chosen"])
            rejected.append(options[int(rng.integers(len(options)))])
            sources.append(row["pair_id"])
    return build_pairs(prompts, chosen, rejected, source="random", label_source="rm"), sources


def hardness(pairs: pa.Table, heldout, embedder, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: held-out RM margin chosen - negative (robust-scale units) and cosine(chosen, negative)."""
    if not pairs.num_rows:
        return np.zeros(0), np.zeros(0)
    prompts = pairs.column("prompt").to_pylist()
    c, r = pairs.column("chosen").to_pylist(), pairs.column("rejected").to_pylist()
    margin = (heldout.score(prompts, c) - heldout.score(prompts, r)) / scale
    sim = (embedder.encode(c) * embedder.encode(r)).sum(axis=1)
    return np.asarray(margin, np.float64), np.asarray(sim, np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotator", default="alpaca_eval_gpt4")
    ap.add_argument("--instructions", type=int, default=60)
    ap.add_argument("--labelled", type=int, default=6, help="labelled models per instruction (input pairs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed-only", action="store_true", help="only fill the embedding cache")
    args = ap.parse_args()

    verdicts = load_verdicts(args.annotator, args.instructions, args.seed)
    embedder = build_embedder(device="cpu")
    t0 = time.perf_counter()
    texts = [t for e in verdicts.values() for t in [e["ref"]] + [m[0] for m in e["models"].values()]]
    everything = texts + list(verdicts)
    for start in range(0, len(everything), 256):  # chunks: an interrupted warm-up keeps what it embedded
        embedder.encode(everything[start:start + 256])
    print(f"embedded {embedder.computed} new texts of {len(texts)} in {time.perf_counter() - t0:.0f}s "
          f"(cache {os.environ['PREFCLI_CACHE_DIR']})", flush=True)
    if args.embed_only:
        return
    names = sorted(verdicts)
    folds = [names[0::2], names[1::2]]
    settings = {
        "guard (defaults)": MineParams(device="cpu", seed=args.seed),
        "guard, mu-2sigma": MineParams(device="cpu", seed=args.seed, selection="mu-2sigma"),
        "no guard": MineParams(device="cpu", seed=args.seed, guard=False),
    }
    records = {name: _Records() for name in [*settings, RANDOM, RANDOM_CORRECT]}
    timing = []
    for f, fold in enumerate(folds):
        tables = fold_tables(verdicts, fold, args.labelled, args.seed + f)
        other = fold_tables(verdicts, folds[1 - f], args.labelled, args.seed + f)["all"]
        heldout = parse_rm_spec("heldout=ensemble", device="cpu")
        heldout.fit(other, seed=args.seed + 100)
        s_c, s_r = heldout.score_pairs(other)
        scale = float(robust_scale(s_c - s_r)[0])
        for name, params in settings.items():
            rms = [parse_rm_spec(spec, device="cpu") for spec in DEFAULT_RMS]
            start = time.perf_counter()
            result = mine(tables["input"], embedder, rms, params, pool=tables["pool"])
            timing.append((tables["input"].num_rows, time.perf_counter() - start))
            mined = result.out.filter(pa.compute.equal(result.out.column("neg_origin"), "mined"))
            records[name].add(mined, mined.column("neg_source_pair_id").to_pylist(), verdicts, heldout, embedder,
                              scale)
        for name, oracle in ((RANDOM, None), (RANDOM_CORRECT, verdicts)):
            rand, sources = random_negatives(tables["input"], tables["pool"], args.seed + f, oracle)
            records[name].add(rand, sources, verdicts, heldout, embedder, scale)
        print(f"fold {f}: {tables['input'].num_rows} input pairs, {tables['pool'].num_rows} pool responses", flush=True)

    print(f"\nAlpacaEval ({args.annotator}), {len(verdicts)} instructions, {args.labelled} labelled models each, "
          f"2 folds")
    print("| negatives | mined | checkable | false negatives | FN rate |")
    print("|---|---|---|---|---|")
    for name in [*settings, RANDOM]:
        counts = records[name].counts()
        checkable = counts["correct"] + counts["false_negative"]
        fn_rate = counts["false_negative"] / checkable if checkable else float("nan")
        print(f"| {name} | {len(records[name].status)} | {checkable} | {counts['false_negative']} | {fn_rate:.1%} |")

    print("\nHardness (held-out RM margin chosen - negative: smaller = harder; cosine to chosen: higher = harder);"
          " ratio = mined / random on the same rows")
    print("| rows | negatives | n | margin mean | margin median | cosine mean | margin < 0 "
          "| random: margin mean | median | cosine | margin ratio (mean) | median ratio | cosine ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rand_all, rand_ok = records[RANDOM], records[RANDOM_CORRECT]
    for name in settings:
        rec = records[name]
        _hardness_row("all (unrestricted)", name, rec.margin, rec.sim, rand_all.margin, rand_all.sim)
    for name in settings:
        rec = records[name]
        ok = rec.status == "correct"
        _hardness_row("verified-correct", name, rec.margin[ok], rec.sim[ok], rand_ok.margin, rand_ok.sim)
    for name in settings:  # the same chosen responses: sources with a verified-correct negative on both sides
        rec = records[name]
        ok = rec.status == "correct"
        mined_at = {src: i for i, src in reversed(list(enumerate(rec.source))) if ok[i]}  # first per source
        rand_at = {src: i for i, src in enumerate(rand_ok.source)}
        both = sorted(set(mined_at) & set(rand_at))
        m, r = [mined_at[s] for s in both], [rand_at[s] for s in both]
        _hardness_row("verified-correct, same chosen", name, rec.margin[m], rec.sim[m], rand_ok.margin[r],
                      rand_ok.sim[r])
    print(f"(random = {RANDOM} for unrestricted rows, {RANDOM_CORRECT} otherwise: {len(rand_ok.status)} of "
          f"{len(rand_all.status)} source pairs have a pool response the judge confirms worse than the chosen)")
    pairs = sum(p for p, _ in timing)
    seconds = sum(s for _, s in timing)
    print(f"\nmine time (warm embedding cache, 2 default ensembles fitted per run): "
          f"{seconds / pairs * 10000:.0f} s per 10k source pairs ({pairs} pairs in {seconds:.1f}s over {len(timing)} runs)")


RANDOM = "random pool response"
RANDOM_CORRECT = "random verified-correct pool response"


class _Records:
    """Per negative pair, over both folds: source pair id, judge status, held-out margin, cosine to chosen."""

    def __init__(self):
        self.source: list[str] = []
        self.status = np.zeros(0, dtype=object)
        self.margin = np.zeros(0)
        self.sim = np.zeros(0)

    def add(self, pairs: pa.Table, sources: list[str], verdicts, heldout, embedder, scale: float) -> None:
        margin, sim = hardness(pairs, heldout, embedder, scale)
        self.source += list(sources)
        self.status = np.concatenate([self.status, np.asarray(check(pairs, verdicts), dtype=object)])
        self.margin = np.concatenate([self.margin, margin])
        self.sim = np.concatenate([self.sim, sim])

    def counts(self) -> dict[str, int]:
        return {key: int((self.status == key).sum()) for key in ("correct", "false_negative", "unknown")}


def _hardness_row(rows: str, name: str, margin, sim, rand_margin, rand_sim) -> None:
    def stats(m, s):
        if not len(m):
            return float("nan"), float("nan"), float("nan"), float("nan")
        return float(np.mean(m)), float(np.median(m)), float(np.mean(s)), float(np.mean(m < 0))

    mm, mmed, ms, mneg = stats(margin, sim)
    rm, rmed, rs, _ = stats(rand_margin, rand_sim)
    ratio = (lambda a, b: a / b if b else float("nan"))
    print(f"| {rows} | {name} | {len(margin)} | {mm:.3f} | {mmed:.3f} | {ms:.3f} | {mneg:.1%} | {rm:.3f} | {rmed:.3f} "
          f"| {rs:.3f} | {ratio(mm, rm):.2f} | {ratio(mmed, rmed):.2f} | {ratio(ms, rs):.2f} |")


if __name__ == "__main__":
    main()
