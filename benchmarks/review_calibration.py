"""Human-AI review loop on PandaLM: does calibration on a small human review improve the kept AI labels,
and does `review select` surface more label errors than a random pick of the same size?

Setup (PandaLM test set, three human annotators per pair):
- pairs are oriented by the annotators' majority (ties / no majority dropped), then 20% of labels are
  flipped with a fixed seed: the stored labels play a noisy AI labeller; the flips are the true errors;
- the offline vote ensemble (`--rm ensemble`) scores every pair -> pref_mean, pref_std, buckets;
- the "review" is annotator 1's verdict on the pairs picked for a budget of 10/20/40% of pairs,
  run through the real import path (tasks with random sides -> judgements -> aggregate -> apply);
- `calibrate` (target 0.9) picks thresholds from those verdicts.
Policy before and after calibration is the same: flip `incorrect`, drop `ambiguous`, keep the rest.
Reported on the pairs NOT reviewed: coverage (share kept) and agreement of the kept labels with the
majority of the two OTHER annotators (pairs where those two split are not scored), before (vote's
default thresholds) and after calibration; and how many true errors each selection puts in front of humans.

Run: PREFCLI_CACHE_DIR=/work/cache .venv/bin/python benchmarks/review_calibration.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import real_pairs  # noqa: E402

from prefcli import io  # noqa: E402
from prefcli.models.embed import build_embedder  # noqa: E402
from prefcli.models.reward import parse_rm_spec  # noqa: E402
from prefcli.stages import review  # noqa: E402
from prefcli.stages.calibrate import calibrate  # noqa: E402
from prefcli.stages.vote import BucketThresholds, VoteOptions, bucketize, thresholds_from_calibration, vote  # noqa: E402


def annotator_votes(table: pa.Table) -> np.ndarray:
    """(n, 3) votes of annotators 1..3 relative to the stored pair: +1 chosen better, -1 rejected, 0 tie."""
    raw = json.loads((real_pairs.DATA / "pandalm" / "testset-v1.json").read_text())
    by_texts = {(str(r["response1"]), str(r["response2"])): r for r in raw}
    votes = np.zeros((table.num_rows, 3))
    for i, (c, r) in enumerate(zip(table.column("chosen").to_pylist(), table.column("rejected").to_pylist())):
        record, chosen_is_first = (by_texts[(c, r)], True) if (c, r) in by_texts else (by_texts[(r, c)], False)
        for k in range(3):
            a = record[f"annotator{k + 1}"]
            votes[i, k] = 0 if a == 0 else (1 if (a == 1) == chosen_is_first else -1)
    return votes


def policy_score(mean, std, thresholds: BucketThresholds, others: np.ndarray, rows: np.ndarray) -> dict:
    """Coverage and agreement with the other annotators of the labels kept under `thresholds` on `rows`."""
    bucket = bucketize(mean[rows], std[rows], thresholds)
    final = np.where(bucket == "incorrect", -1.0, 1.0)  # +1 keep the stored label, -1 flip it
    kept = bucket != "ambiguous"
    scored = kept & (others[rows] != 0)
    agree = (final == others[rows])[scored]
    return {"coverage": kept.mean(), "agreement": agree.mean() if len(agree) else float("nan"),
            "flipped": (bucket == "incorrect").mean()}


def review_verdicts(queue: pa.Table, votes: np.ndarray, row_of: dict) -> list[review.TaskOutcome]:
    """Annotator 1 answers every task in the queue (left/right shown at random), through the import path."""
    judgements = []
    ids = queue.column("review_task_id").to_pylist()
    for task_id, pair_id, left_is_chosen in zip(ids, queue.column("pair_id").to_pylist(),
                                                queue.column("review_left_is_chosen").to_pylist()):
        v = votes[row_of[pair_id], 0]
        choice = "tie" if v == 0 else ("left" if (v > 0) == left_is_chosen else "right")
        judgements.append(review.Judgement(task_id, "annotator1", choice, "", f"task {task_id}"))
    return review.aggregate(judgements, queue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="0.1,0.2,0.4")
    parser.add_argument("--flip-rate", type=float, default=0.2)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--voted", default="", help="Parquet to save the voted table to, or re-use it from")
    args = parser.parse_args()

    clean = real_pairs.pandalm()
    noisy, flipped = real_pairs.inject_flips(clean, args.flip_rate, seed=args.seed)
    votes = annotator_votes(noisy)
    s = np.sign(votes[:, 1] + votes[:, 2])  # the other two annotators' majority (0: they split)
    start = time.perf_counter()
    if args.voted and Path(args.voted).exists():  # re-use a scored table from an earlier run
        voted = io.read_pairs(args.voted)
    else:
        voted = vote(noisy, [parse_rm_spec("ensemble")], VoteOptions(seed=args.seed)).out
        if args.voted:
            io.write_table(voted, args.voted)
    vote_seconds = time.perf_counter() - start
    mean = voted.column("pref_mean").to_numpy()
    std = voted.column("pref_std").to_numpy()
    row_of = {p: i for i, p in enumerate(voted.column("pair_id").to_pylist())}
    embedder = build_embedder(device="cpu")
    n = voted.num_rows
    print(f"PandaLM: {n} pairs, {flipped.sum()} injected label errors ({args.flip_rate:.0%}); "
          f"vote ensemble {vote_seconds:.0f}s; defaults {BucketThresholds()}", flush=True)

    results = []
    rng = np.random.default_rng(args.seed)
    for share in [float(b) for b in args.budgets.split(",")]:
        budget = int(round(share * n))
        queue = review.select_for_review(voted, budget, embedder=embedder, seed=args.seed).out
        random_rows = rng.choice(n, budget, replace=False)
        picked = np.asarray([row_of[p] for p in queue.column("pair_id").to_pylist()])
        for name, rows in (("review select", picked), ("random", random_rows)):
            sample = queue if name == "review select" else review.select_for_review(
                voted.take(pa.array(np.sort(rows))), budget, groups="none", audit_share=1.0, seed=args.seed).out
            applied = review.apply_verdicts(voted, review_verdicts(sample, votes, row_of))
            doc = calibrate(pa.concat_tables([applied.out, applied.set_aside.drop_columns(
                ["set_aside_reason", "set_aside_stage"])]), target=args.target)
            thresholds = thresholds_from_calibration(doc)
            rest = np.setdiff1d(np.arange(n), rows)
            before = policy_score(mean, std, BucketThresholds(), s, rest)
            after = policy_score(mean, std, thresholds, s, rest)
            results.append({
                "budget": share, "reviewed": len(rows), "selection": name, "errors_surfaced": int(flipped[rows].sum()),
                "before_coverage": before["coverage"], "before_agreement": before["agreement"],
                "after_coverage": after["coverage"], "after_agreement": after["agreement"],
                "gain_points": 100 * (after["agreement"] - before["agreement"]),
                "thresholds": f"{thresholds.incorrect:.2f}/{thresholds.ambiguous:.2f}/{thresholds.strong:.2f}",
            })
            r = results[-1]
            print(f"budget {share:4.0%} ({len(rows)} pairs) {name:13s} errors surfaced {r['errors_surfaced']:3d} | "
                  f"before: cov {r['before_coverage']:.3f} agr {r['before_agreement']:.3f} | after: cov "
                  f"{r['after_coverage']:.3f} agr {r['after_agreement']:.3f} ({r['gain_points']:+.1f} pts) | "
                  f"thresholds {r['thresholds']}", flush=True)

    print("\n| budget | reviewed | selection | true errors surfaced | thresholds inc/amb/strong | coverage before -> "
          "after | agreement before -> after | gain |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['budget']:.0%} | {r['reviewed']} | {r['selection']} | {r['errors_surfaced']} | {r['thresholds']} | "
              f"{r['before_coverage']:.3f} -> {r['after_coverage']:.3f} | {r['before_agreement']:.3f} -> "
              f"{r['after_agreement']:.3f} | {r['gain_points']:+.1f} pts |")
    for share in sorted({r["budget"] for r in results}):
        sel, rnd = [next(r for r in results if r["budget"] == share and r["selection"] == k)
                    for k in ("review select", "random")]
        print(f"budget {share:.0%}: review select surfaces {sel['errors_surfaced']} true errors vs random "
              f"{rnd['errors_surfaced']} (x{sel['errors_surfaced'] / max(rnd['errors_surfaced'], 1):.2f})")


if __name__ == "__main__":
    main()
