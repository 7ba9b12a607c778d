"""A million pairs through the default pipeline's training path on this box: time and peak RSS per stage, and how
each grows with the input (100k, 300k, 1M by default).

    .venv/bin/python benchmarks/million.py [--sizes 100000,300000,1000000] [--profile default|static] [--keep]

Synthetic pairs with realistic lengths (prompts ~200 characters, responses ~350, log-normal; each pair on
one of 20,000 made-up topic vocabularies), 4% exact repeats,
3% near-duplicates (one typo in the prompt, same responses) and 5% planted flips (chosen and rejected swapped:
the chosen side carries the helpful vocabulary). The pipeline is pipelines/default.toml's path to the training
file: ingest -> dedup (flag) -> dedup-pairs (drop) -> vote (offline ensemble) -> length-bias fit/apply ->
review select -> export. `mine` is a side branch there and is left out here.

Prints, per size: every stage's wall seconds and peak RSS (from the run manifest), the total, the rows kept,
the planted duplicates found and the flip AUROC; then each stage's growth exponent between sizes
(t ~ n^k: k = 1 is linear). Goal (issue 17): <= 2 h and <= 4 GB at 1M.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a of to and in is it for on with as this that be are by at from or an was can will not have has "
         "more use data model time way make see first also how each which their about into than them some "
         "could would other these two may then its only over new most any such through when where while "
         "people work water system number part place after years back little world very still good own").split()
HELPFUL = ("here steps example first second explain because therefore specifically detailed answer result "
           "consider note method approach solution clearly precise check source evidence").split()
UNHELPFUL = ("sorry unsure maybe whatever cannot dunno guess probably unclear something stuff kind basically "
             "anyway honestly vague random").split()

# pipelines/default.toml's path to the training file (mine is a side branch there), as [[stage]] tables
STAGES = [
    {"command": "ingest", "inputs": ["{raw}"]},
    {"command": "dedup"},
    {"name": "dedup-pairs", "command": "dedup", "input": "@ingest", "on": "pair", "threshold": 0.97, "drop": True},
    {"command": "vote", "input": "@dedup-pairs", "rm": ["ensemble"]},
    {"name": "length-fit", "command": "length-bias fit", "input": "@vote", "output": "length_model.json"},
    {"name": "length", "command": "length-bias apply", "input": "@vote", "model": "@length-fit"},
    {"name": "review-select", "command": "review select", "input": "@length", "budget": 200},
    {"command": "export", "input": "@length", "to": "trl", "where": "pref_bucket != 'incorrect'",
     "output": "train.trl.jsonl"},
]


# --profile static: every embedding on the static model (no MiniLM anywhere): dedup without the MiniLM verifier,
# the ensemble's embedding view on static vectors. What a CPU box can afford at 1M; its accuracy cost is measured
# by benchmarks/vote_speed.py and dedup_cascade.py.
STATIC_PROFILE = {"dedup": {"verify": "none"}, "dedup-pairs": {"verify": "none"},
                  "vote": {"rm": ["ensemble:model=static"]}}


def pipeline_toml(raw: Path, profile: str = "default") -> str:
    """The pipeline file for one raw input (JSON scalars and lists are valid TOML values)."""
    lines = ["[pipeline]", 'name = "million"', "seed = 0"]
    for stage in STAGES:
        if profile == "static":
            stage = {**stage, **STATIC_PROFILE.get(stage.get("name", stage["command"]), {})}
        lines += ["", "[[stage]]"]
        lines += [f"{key} = {json.dumps(value).replace('{raw}', str(raw))}" for key, value in stage.items()]
    return "\n".join(lines) + "\n"


def pseudo_words(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct made-up words from syllables: the topic vocabulary, so texts differ as real ones do."""
    syllables = np.array([c + v for c in "bcdfghklmnprstvz" for v in "aeiou"])
    words = {"".join(rng.choice(syllables, size=int(rng.integers(2, 4)))) for _ in range(n * 2)}
    return np.array(sorted(words)[:n])


def sentences(rng: np.random.Generator, lengths: np.ndarray, topics: np.ndarray, vocab: np.ndarray,
              extra: list[str], share: np.ndarray) -> list[str]:
    """Texts of about `lengths` characters: common words, 35% words of the row's topic (20 words out of the
    vocabulary), and a per-row share of `extra` words."""
    common, extra_words = np.array(WORDS), np.array(extra or ["the"])
    out = []
    for length, topic, extra_share in zip(lengths, topics, share):
        count = max(3, int(length / 5.5))
        kind = rng.random(count)
        topic_words = vocab[(topic * 20 + rng.integers(0, 20, count)) % len(vocab)]
        words = np.where(kind < 0.35, topic_words,
                         np.where(kind < 0.35 + extra_share, rng.choice(extra_words, count),
                                  rng.choice(common, count)))
        out.append(" ".join(words).capitalize() + ".")
    return out


def typo(text: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(1, max(2, len(text) - 2)))
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def generate(path: Path, n: int, seed: int = 0) -> dict:
    """Write n pairs as TRL-standard JSONL; return what was planted."""
    rng = np.random.default_rng(seed)
    base = int(n / 1.07)  # unique pairs; the rest are repeats and near-duplicates
    exact, near = int(n * 0.04), n - base - int(n * 0.04)
    flips = set(rng.choice(base, size=int(base * 0.05), replace=False).tolist())
    vocab = pseudo_words(rng, 20_000)
    planted = {"rows": n, "exact_repeats": exact, "near_duplicates": near, "flips": len(flips)}
    with open(path, "w", encoding="utf-8") as out:
        chunk = 50_000
        rows: list[tuple[str, str, str, int]] = []
        for start in range(0, base, chunk):
            m = min(chunk, base - start)
            topics = rng.integers(0, len(vocab), m)
            prompts = sentences(rng, rng.lognormal(math.log(180), 0.6, m).clip(20, 4000), topics, vocab, [],
                                np.zeros(m))
            # the helpful side carries more helpful words, noisily: flips are findable, not trivially
            good = sentences(rng, rng.lognormal(math.log(380), 0.7, m).clip(10, 8000), topics, vocab, HELPFUL,
                             rng.uniform(0.0, 0.12, m))
            bad = sentences(rng, rng.lognormal(math.log(320), 0.7, m).clip(10, 8000), topics, vocab, UNHELPFUL,
                            rng.uniform(0.0, 0.12, m))
            for i in range(m):
                flipped = (start + i) in flips
                row = (prompts[i], bad[i], good[i], 1) if flipped else (prompts[i], good[i], bad[i], 0)
                rows.append(row)
                out.write(json.dumps({"prompt": row[0], "chosen": row[1], "rejected": row[2],
                                      "flipped": row[3]}) + "\n")
        for i in rng.integers(0, base, size=exact):
            p, c, r, f = rows[i]
            out.write(json.dumps({"prompt": p, "chosen": c, "rejected": r, "flipped": f}) + "\n")
        for i in rng.integers(0, base, size=near):
            p, c, r, f = rows[i]
            out.write(json.dumps({"prompt": typo(p, rng), "chosen": c, "rejected": r, "flipped": f}) + "\n")
    return planted


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    pos = labels.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)) if n_pos and n_neg else float("nan")


def run_size(n: int, scratch: Path, profile: str = "default") -> dict:
    raw = scratch / f"raw-{n}" / "pairs.jsonl"
    raw.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    planted = generate(raw, n)
    generated = time.perf_counter() - began
    toml = scratch / f"million-{n}.toml"
    toml.write_text(pipeline_toml(raw, profile))
    workdir = scratch / f"run-{n}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PREFCLI_CACHE_DIR": ""}
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "prefcli.cli.main", "run", str(toml), "--workdir", str(workdir),
                           "--json"], capture_output=True, env=env)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{n} pairs: prefcli run failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    manifest = json.loads((workdir / "manifest.json").read_text())
    stages = {name: {"wall_s": rec["wall_s"], "peak_rss_mb": rec["peak_rss_mb"], "rows_in": rec["rows_in"],
                     "rows_out": rec["rows_out"], "set_aside": rec["rows_set_aside"]}
              for name, rec in manifest["stages"].items()}
    import pyarrow.parquet as pq

    vote = pq.read_table(workdir / "vote" / "vote.parquet", columns=["pref_mean", "meta"])
    flipped = np.array([json.loads(m or "{}").get("flipped", 0) if isinstance(m, str) else 0
                        for m in vote.column("meta").to_pylist()])
    dedup = json.loads(proc.stdout)
    return {"pairs": n, "profile": profile, "generate_s": round(generated, 1), "wall_s": round(wall, 1), "stages": stages,
            "planted": planted, "flip_auroc": round(auroc(-vote.column("pref_mean").to_numpy(), flipped), 4),
            "rows_removed_by_dedup_pairs": stages.get("dedup-pairs", {}).get("set_aside"), "summary": dedup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--profile", choices=["default", "static"], default="default",
                        help="default: pipelines/default.toml's models; static: the static model everywhere")
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="prefcli-million-"))
    results = []
    try:
        for n in sizes:
            result = run_size(n, scratch, args.profile)
            results.append(result)
            print(f"\n{n:,} pairs: {result['wall_s']:.0f} s wall (generating the file: {result['generate_s']} s), "
                  f"flip AUROC {result['flip_auroc']}, dedup-pairs removed {result['rows_removed_by_dedup_pairs']} "
                  f"of {result['planted']['exact_repeats'] + result['planted']['near_duplicates']} planted")
            for name, s in result["stages"].items():
                print(f"  {name:14} {s['wall_s']:9.1f} s  peak {s['peak_rss_mb']:8.0f} MB  "
                      f"in {s['rows_in']}  out {s['rows_out']}  aside {s['set_aside']}")
            sys.stdout.flush()
        if len(results) > 1:
            print("\ngrowth exponent k (t ~ n^k) between sizes:")
            for name in results[0]["stages"]:
                ks = []
                for a, b in zip(results, results[1:]):
                    ta, tb = a["stages"][name]["wall_s"], b["stages"][name]["wall_s"]
                    ks.append(math.log(max(tb, 1e-3) / max(ta, 1e-3)) / math.log(b["pairs"] / a["pairs"]))
                print(f"  {name:14} " + "  ".join(f"{k:.2f}" for k in ks))
        if args.json:
            print(json.dumps(results, default=str))
    finally:
        if args.keep:
            print(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
