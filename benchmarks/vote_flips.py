"""Flip detection of the offline ensemble on real preference data, side by side with its peers.

Injects 10/20/30% label flips (fixed seed) into HH-RLHF harmless test, AlpacaEval
(alpaca_eval_gpt4, one pair per (instruction, model)), LLMBar and PandaLM (majority label), then
reports for each detector, in one run:
  - AUROC of the flip score (-pref_mean for vote; -P(given label) for cleanlab),
  - precision / recall of the flagged set (`incorrect` bucket; cleanlab's find_label_issues),
  - accuracy of the detector's own label (sign of its margin) against the ORIGINAL labels.
Detectors: the ensemble (`--rm ensemble`), one member of it, cleanlab on the ensemble's
out-of-fold probabilities, and the baseline (MiniLM embeddings + logistic head, 5 seeds × 5 folds).
A last row is a ceiling, not a detector: the same ensemble cross-fitted on the CLEAN labels (an oracle
no user has), scored against the flipped ones. No amount of noise-robust training gets this model
family above it on that dataset; only stronger features (a better encoder, an `hf:` reward model) do.

Run: PREFCLI_CACHE_DIR=/work/cache .venv/bin/python benchmarks/vote_flips.py [--datasets hh-harmless,alpacaeval]
     [--ensemble max_train=1000] [--only-ensemble]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import real_pairs  # noqa: E402

from prefcli.models.reward.ensemble import EnsembleConfig, OfflineEnsemble, _fit_bt, last_user_turn  # noqa: E402
from prefcli.stages.vote import BucketThresholds, VoteOptions, vote  # noqa: E402


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, score))


def pr(flagged: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    tp = float((flagged & positive).sum())
    return tp / max(flagged.sum(), 1), tp / max(positive.sum(), 1)


def row(name: str, flip_score: np.ndarray, flagged: np.ndarray, agrees_now: np.ndarray, flipped: np.ndarray):
    """agrees_now: the detector prefers the current chosen. Original label = current unless flipped."""
    precision, recall = pr(flagged, flipped)
    accuracy = float((agrees_now != flipped).mean())
    return {"detector": name, "auroc": auroc(flip_score, flipped), "precision": precision, "recall": recall,
            "flagged": int(flagged.sum()), "accuracy_vs_original": accuracy}


def baseline_margins(table, embedder, seeds: int = 5, folds: int = 5) -> np.ndarray:
    """The issue's baseline: MiniLM (response, prompt×response, log length) + logistic head, 5 seeds × 5 folds."""
    n = table.num_rows
    queries = [last_user_turn(m) for m in table.column("prompt").to_pylist()]
    q = embedder.encode(queries).astype(np.float64)

    def phi(side: str) -> np.ndarray:
        texts = table.column(side).to_pylist()
        r = embedder.encode(texts).astype(np.float64)
        return np.hstack([r, q * r, np.log1p([[len(t)] for t in texts])])

    delta = phi("chosen") - phi("rejected")
    margin = np.zeros(n)
    for s in range(seeds):
        fold_of = np.random.default_rng(100 + s).permutation(n) % folds
        for f in range(folds):
            train, held = fold_of != f, fold_of == f
            margin[held] += delta[held] @ _fit_bt(delta[train], np.ones(train.sum()), 1.0) / seeds
    return margin


def cleanlab_row(member_margins: np.ndarray, flipped: np.ndarray, seed: int) -> dict:
    """cleanlab.find_label_issues on the ensemble's out-of-fold P(chosen better), pairs shown in random order."""
    from cleanlab.filter import find_label_issues

    p_chosen = np.mean(1.0 / (1.0 + np.exp(-member_margins)), axis=1)
    swap = np.random.default_rng(seed).random(len(p_chosen)) < 0.5  # label 0 = first shown response is chosen
    labels = swap.astype(int)
    p_first = np.where(swap, 1 - p_chosen, p_chosen)
    pred_probs = np.column_stack([p_first, 1 - p_first])
    issues = find_label_issues(labels, pred_probs, filter_by="prune_by_noise_rate")
    return row("cleanlab find_label_issues", -p_chosen, issues, p_chosen > 0.5, flipped)


def run(dataset: str, rates: list[float], seed: int, config: EnsembleConfig, only_ensemble: bool = False) -> list[dict]:
    table = real_pairs.LOADERS[dataset]()
    if not only_ensemble:
        oracle = OfflineEnsemble(config, device="cpu")
        oracle.fit(table, seed=seed)
        oracle_chosen, oracle_rejected = oracle.score_pairs(table)
    out = []
    for rate in rates:
        noisy, flipped = real_pairs.inject_flips(table, rate, seed=seed)
        ensemble = OfflineEnsemble(config, device="cpu")
        start = time.perf_counter()
        result = vote(noisy, [ensemble], VoteOptions(seed=seed, thresholds=BucketThresholds()))
        seconds = time.perf_counter() - start
        t = result.out
        mean = t.column("pref_mean").to_numpy()
        incorrect = np.asarray(t.column("pref_bucket").to_pylist()) == "incorrect"
        members = np.column_stack([m.chosen - m.rejected for m in ensemble.members])
        rows = [row(f"ensemble ({len(ensemble.members)} members)", -mean, incorrect, mean > 0, flipped)]
        for j, m in enumerate(ensemble.members[: len(config.views)]):
            z = members[:, j] / np.median(np.abs(members[:, j])) * 0.6745
            rows.append(row(f"single member {m.name}", -z, z < BucketThresholds().incorrect, z > 0, flipped))
        if not only_ensemble:
            rows.append(cleanlab_row(members, flipped, seed))
            base = baseline_margins(noisy, ensemble.embedder)
            zb = base / np.median(np.abs(base)) * 0.6745
            rows.append(row("baseline MiniLM+logistic (5x5)", -zb, zb < BucketThresholds().incorrect, zb > 0,
                            flipped))
            ceiling = np.where(flipped, -1, 1) * (oracle_chosen - oracle_rejected)  # margin w.r.t. the noisy label
            zc = ceiling / np.median(np.abs(ceiling)) * 0.6745
            rows.append(row("ceiling: ensemble on clean labels", -zc, zc < BucketThresholds().incorrect, zc > 0,
                            flipped))
        for r in rows:
            r.update(dataset=dataset, pairs=table.num_rows, flip_rate=rate)
        rows[0]["seconds"] = round(seconds, 1)
        out.extend(rows)
        for r in rows:
            print(f"{dataset:12s} {rate:4.0%} {r['detector']:34s} AUROC {r['auroc']:.3f}  P {r['precision']:.2f} "
                  f"R {r['recall']:.2f}  acc {r['accuracy_vs_original']:.3f}"
                  + (f"  ({r['seconds']}s)" if "seconds" in r else ""), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="hh-harmless,alpacaeval,llmbar,pandalm")
    parser.add_argument("--rates", default="0.1,0.2,0.3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ensemble", default="", help="ensemble options, as in --rm ensemble:<options>")
    parser.add_argument("--only-ensemble", action="store_true", help="the ensemble and its members only: no "
                        "cleanlab, baseline or clean-label ceiling (faster, for comparing ensemble options)")
    args = parser.parse_args()
    from prefcli.models.reward.ensemble import parse_options

    config = parse_options(args.ensemble)
    rows = []
    for name in args.datasets.split(","):
        rows.extend(run(name, [float(r) for r in args.rates.split(",")], args.seed, config, args.only_ensemble))
    print("\n| dataset | pairs | flips | detector | AUROC | P(incorrect) | R(incorrect) | acc vs original |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['pairs']} | {r['flip_rate']:.0%} | {r['detector']} | {r['auroc']:.3f} | "
              f"{r['precision']:.2f} | {r['recall']:.2f} | {r['accuracy_vs_original']:.3f} |")


if __name__ == "__main__":
    main()
