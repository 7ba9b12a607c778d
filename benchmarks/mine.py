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
Random baselines, drawn from the same candidate pool the miner selects from (`score_candidates`), one
per source pair that got a mined negative, so both sides share the chosen: with the guard, a random
candidate among those that pass it (isolates what the hardness ranking buys); without it, a random
candidate among all of them. The guard's own effect is the with / without comparison (FN rate, hardness).
Reported as mined vs random side by side (means, medians, FN rates, ratios, differences), over every
source pair and over the pairs where the judge confirms both negatives. Kept as an extra: the earlier
oracle-filtered baseline, a random pool response the hidden judge confirms worse than the chosen (the
miner cannot filter like that), against verified-correct mined negatives on the same chosen.

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

from prefcli.stages.mine import DEFAULT_RMS  # noqa: E402
from prefcli.models.embed import build_embedder  # noqa: E402
from prefcli.models.reward import parse_rm_spec  # noqa: E402
from prefcli.pairs import build_pairs, user_prompt  # noqa: E402
from prefcli.stages.mine import QUALIFIED, MineOptions, score_candidates  # noqa: E402
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
        "guard (defaults)": MineOptions(device="cpu", seed=args.seed),
        "guard, mu-2sigma": MineOptions(device="cpu", seed=args.seed, selection="mu-2sigma"),
        "no guard": MineOptions(device="cpu", seed=args.seed, guard=False),
    }
    # per setting: the stage's picks, and one random draw from the same candidate pool per source pair
    records = {(name, side): _Records() for name in settings for side in (MINED, SAME_POOL)}
    records.update({(RANDOM, ""): _Records(), (RANDOM_CORRECT, ""): _Records()})
    unique_mined = {name: {} for name in settings}  # mined pair_id -> judge status (the stage writes each pair once)
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
            cands = score_candidates(tables["input"], embedder, rms, params, pool=tables["pool"])
            timing.append((tables["input"].num_rows, time.perf_counter() - start))
            pool_rows = pa.compute.equal(cands.column("status"), QUALIFIED) if params.guard else None
            mined, same_pool = first_picks(cands), random_pick(cands, pool_rows, args.seed + f)
            for side, picks in ((MINED, mined), (SAME_POOL, same_pool)):
                pairs = candidate_pairs(tables["input"], picks)
                records[(name, side)].add(pairs, picks.column("source_pair_id").to_pylist(), verdicts, heldout,
                                          embedder, scale, mining_margin=picks.column("margin"))
            pairs = candidate_pairs(tables["input"], mined)
            unique_mined[name].update(zip(pairs.column("pair_id").to_pylist(), check(pairs, verdicts)))
        for name, oracle in ((RANDOM, None), (RANDOM_CORRECT, verdicts)):
            rand, sources = random_negatives(tables["input"], tables["pool"], args.seed + f, oracle)
            records[(name, "")].add(rand, sources, verdicts, heldout, embedder, scale)
        print(f"fold {f}: {tables['input'].num_rows} input pairs, {tables['pool'].num_rows} pool responses", flush=True)

    print(f"\nAlpacaEval ({args.annotator}), {len(verdicts)} instructions, {args.labelled} labelled models each, "
          f"2 folds")
    print("\nFalse negatives (mined: distinct mined pairs, as `mine` writes them; random: one per source pair)")
    print("| negatives | pairs | checkable | false negatives | FN rate |")
    print("|---|---|---|---|---|")
    for name in settings:
        print(_fn_row(f"mined, {name}", np.asarray(list(unique_mined[name].values()), dtype=object)))
    for name in settings:
        print(_fn_row(f"random from the same pool, {name}", records[(name, SAME_POOL)].status))
    print(_fn_row(RANDOM, records[(RANDOM, "")].status))

    print("\nHardness, mined vs random from the SAME candidate pool on the same source pairs (guard: a random "
          "qualifying candidate; no guard: a random candidate of all). Held-out RM margin chosen - negative: "
          "smaller = harder; cosine to chosen: higher = harder; ratio = mined / random; "
          "diff = mean paired difference mined - random")
    print(HARDNESS_HEADER)
    for name in settings:
        mined, rand = records[(name, MINED)], records[(name, SAME_POOL)]
        _hardness_row("same pool, every source pair", name, mined, rand, np.arange(len(mined.status)))
    for name in settings:
        mined, rand = records[(name, MINED)], records[(name, SAME_POOL)]
        both = np.flatnonzero((mined.status == "correct") & (rand.status == "correct"))
        _hardness_row("same pool, both verified-correct", name, mined, rand, both)

    print("\nExtra: the earlier oracle-filtered baseline (random pool response the hidden judge confirms worse "
          "than the chosen: the miner cannot do this filtering), against mined negatives the judge confirms worse")
    print(HARDNESS_HEADER)
    rand_ok = records[(RANDOM_CORRECT, "")]
    for name in settings:  # the same chosen responses: sources with a verified-correct negative on both sides
        rec = records[(name, MINED)]
        ok = rec.status == "correct"
        mined_at = {src: i for i, src in enumerate(rec.source) if ok[i]}
        rand_at = {src: i for i, src in enumerate(rand_ok.source)}
        both = sorted(set(mined_at) & set(rand_at))
        _hardness_row("oracle random, verified-correct, same chosen", name, rec.take([mined_at[s] for s in both]),
                      rand_ok.take([rand_at[s] for s in both]), np.arange(len(both)))
    pairs = sum(p for p, _ in timing)
    seconds = sum(s for _, s in timing)
    print(f"\nmine time (score_candidates, warm embedding cache, 2 default ensembles fitted per run): "
          f"{seconds / pairs * 10000:.0f} s per 10k source pairs ({pairs} pairs in {seconds:.1f}s over {len(timing)} runs)")


def first_picks(cands: pa.Table) -> pa.Table:
    """The stage's first pick per source pair."""
    return cands.filter(pa.compute.equal(cands.column("pick_rank"), 1))


def random_pick(cands: pa.Table, pool_rows, seed: int) -> pa.Table:
    """One uniformly drawn candidate per source pair that has a pick, from `pool_rows` (a mask; None = all)."""
    picked = set(first_picks(cands).column("source_pair_id").to_pylist())
    rows = cands if pool_rows is None else cands.filter(pool_rows)
    group = np.asarray(rows.column("source_row"))
    order = np.lexsort((np.random.default_rng(seed).random(len(group)), group))
    first = order[np.r_[True, group[order][1:] != group[order][:-1]]] if len(order) else order
    draw = rows.take(pa.array(first, pa.int64()))
    return draw.filter(pa.compute.is_in(draw.column("source_pair_id"), pa.array(sorted(picked), pa.large_string())))


def candidate_pairs(inputs: pa.Table, picks: pa.Table) -> pa.Table:
    """(prompt, chosen of the source pair, candidate) pairs."""
    src = inputs.take(picks.column("source_row"))
    return build_pairs(src.column("prompt").to_pylist(), src.column("chosen").to_pylist(),
                       picks.column("candidate").to_pylist(), source="candidate", label_source="rm")


MINED, SAME_POOL = "mined", "random from the same pool"
RANDOM = "random pool response"
RANDOM_CORRECT = "random verified-correct pool response"


class _Records:
    """Per negative pair, over both folds: source pair id, judge status, held-out margin, cosine to chosen,
    and (candidates of the stage) the mining-RM consensus margin."""

    def __init__(self, source=(), status=(), margin=(), sim=(), mining=()):
        self.source = list(source)
        self.status = np.asarray(status, dtype=object)
        self.margin = np.asarray(margin, np.float64)
        self.sim = np.asarray(sim, np.float64)
        self.mining = np.asarray(mining, np.float64)

    def add(self, pairs: pa.Table, sources: list[str], verdicts, heldout, embedder, scale: float,
            mining_margin=None) -> None:
        margin, sim = hardness(pairs, heldout, embedder, scale)
        mining = np.full(len(margin), np.nan) if mining_margin is None else \
            np.asarray(mining_margin.to_numpy(zero_copy_only=False), np.float64)
        self.source += list(sources)
        self.status = np.concatenate([self.status, np.asarray(check(pairs, verdicts), dtype=object)])
        self.margin = np.concatenate([self.margin, margin])
        self.sim = np.concatenate([self.sim, sim])
        self.mining = np.concatenate([self.mining, mining])

    def take(self, idx) -> "_Records":
        idx = np.asarray(idx, np.int64)
        return _Records([self.source[i] for i in idx], self.status[idx], self.margin[idx], self.sim[idx],
                        self.mining[idx])


def _fn_row(name: str, status: np.ndarray) -> str:
    correct, fn = int((status == "correct").sum()), int((status == "false_negative").sum())
    rate = fn / (correct + fn) if correct + fn else float("nan")
    return f"| {name} | {len(status)} | {correct + fn} | {fn} | {rate:.1%} |"


HARDNESS_HEADER = ("| rows | setting | n | mined: margin mean | median | cosine | FN rate | random: margin mean "
                   "| median | cosine | FN rate | ratio mean | ratio median | ratio cosine | diff margin (95% CI) "
                   "| diff cosine (95% CI) "
                   "| mining-RM margin mined / random |\n" + "|---" * 17 + "|")


def _hardness_row(rows: str, name: str, mined: _Records, rand: _Records, idx: np.ndarray) -> None:
    def stats(rec: _Records):
        sub = rec.take(idx)
        checkable = np.isin(sub.status, ["correct", "false_negative"])
        fn = float(np.mean(sub.status[checkable] == "false_negative")) if checkable.any() else float("nan")
        if not len(idx):
            return [float("nan")] * 5
        mining = float(np.nanmean(sub.mining)) if np.isfinite(sub.mining).any() else float("nan")
        return float(np.mean(sub.margin)), float(np.median(sub.margin)), float(np.mean(sub.sim)), fn, mining

    assert [mined.source[i] for i in idx] == [rand.source[i] for i in idx], "rows must pair up by source pair"
    mm, mmed, ms, mfn, mmine = stats(mined)
    rm, rmed, rs, rfn, rmine = stats(rand)
    ratio = (lambda a, b: a / b if b else float("nan"))

    def paired_diff(a, b):  # mean of the paired differences, +- 95% normal interval
        d = a[idx] - b[idx]
        half = 1.96 * np.std(d, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        return f"{np.mean(d):+.3f} ± {half:.3f}" if len(d) else "nan"

    print(f"| {rows} | {name} | {len(idx)} | {mm:.3f} | {mmed:.3f} | {ms:.3f} | {mfn:.1%} | {rm:.3f} | {rmed:.3f} "
          f"| {rs:.3f} | {rfn:.1%} | {ratio(mm, rm):.2f} | {ratio(mmed, rmed):.2f} | {ratio(ms, rs):.2f} "
          f"| {paired_diff(mined.margin, rand.margin)} | {paired_diff(mined.sim, rand.sim)} "
          f"| {mmine:.2f} / {rmine:.2f} |")


if __name__ == "__main__":
    main()
