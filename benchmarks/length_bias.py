"""Length bias before/after debiasing, on AlpacaEval (with its _verbose/_concise variants) and HH-RLHF harmless.

Scores: the vote stage's offline ensemble (`--rm ensemble`, cross-fitted on each dataset), as
`prefcli vote` writes them. Then `length-bias fit` + `apply` with each method (paired, isotonic,
spline), reporting in one run, before -> after debiasing (on vote's pref_mean -> len_pref_mean):
  - Spearman rho(margin, dlen), dlen = chars(chosen) - chars(rejected)   (goal |rho| <= 0.05 after)
  - accuracy of sign(margin) against the original labels                 (goal: at most 1 point lower)
  - accuracy on chosen-longer and on chosen-shorter pairs (FiMi-RM: 80.7/56.9 -> 73.6/65.7)
and beside it the AlpacaEval-style length-controlled GLM on the labels (win rates vs gpt4_1106_preview), and
on AlpacaEval a content oracle built from that GLM (each generator's length-controlled quality), before and
after the same debiasing.

Run: PREFCLI_CACHE_DIR=/work/cache .venv/bin/python benchmarks/length_bias.py [--datasets alpacaeval,hh-harmless]
     [--rm bt]   (fallback voter without sentence embeddings: cross-fitted TF-IDF Bradley-Terry, for a loaded CPU box)
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
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import real_pairs  # noqa: E402

from prefcli.models.length import LengthMeasure  # noqa: E402
from prefcli.models.reward import parse_rm_spec  # noqa: E402
from prefcli.pairs import build_pairs, user_prompt  # noqa: E402
from prefcli.stages import length_bias as lb  # noqa: E402
from prefcli.stages.vote import VoteParams, vote  # noqa: E402

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
BASELINE = "gpt4_1106_preview"
FAMILIES = ("gpt-3.5-turbo-1106", "alpaca-7b")
GENERATORS = tuple(f"{f}{v}" for f in FAMILIES for v in ("", "_verbose", "_concise"))


def alpaca_variants(data: Path = real_pairs.DATA):
    """Each generator (plain, _verbose, _concise) vs gpt4_1106_preview, one judge; ties dropped."""
    prompts, chosen, rejected, meta = [], [], [], []
    with gzip.open(data / "alpaca-eval-annotations" / "annotations_compact.jsonl.gz", "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["annotator"] != ANNOTATOR or rec["generator_2"] not in GENERATORS:
                continue
            pref, o1, o2 = rec["preference"], rec["output_1"] or "", rec["output_2"] or ""
            if pref is None or float(pref) == 1.5 or not o1.strip() or not o2.strip() or o1 == o2:
                continue
            sides = [(o1, rec["generator_1"]), (o2, rec["generator_2"])]
            (c, gc), (r, gr) = sides[::-1] if float(pref) > 1.5 else sides
            prompts.append(user_prompt(rec["instruction"]))
            chosen.append(c)
            rejected.append(r)
            meta.append({"generator_chosen": gc, "generator_rejected": gr})
    return build_pairs(prompts, chosen, rejected, source=f"alpaca-eval/{ANNOTATOR}", meta=meta)


def crossfit_bt_scores(table, seed: int, folds: int = 5):
    """Fallback reward signal for a CPU-starved box: TF-IDF (word 1-2-grams) + log length, Bradley-Terry
    logistic regression on feature differences, cross-fitted so no pair is scored by a model that saw it."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    chosen, rejected = table["chosen"].to_pylist(), table["rejected"].to_pylist()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=50000, sublinear_tf=True).fit(chosen + rejected)

    def phi(texts):
        return sp.hstack([vec.transform(texts), sp.csr_matrix(np.log1p([[len(t)] for t in texts]))]).tocsr()

    fc, fr = phi(chosen), phi(rejected)
    out_c, out_r = np.zeros(len(chosen)), np.zeros(len(chosen))
    fold = np.random.default_rng(seed).permutation(len(chosen)) % folds
    for f in range(folds):
        train, held = fold != f, fold == f
        delta = fc[train] - fr[train]
        bt = LogisticRegression(fit_intercept=False, C=1.0, max_iter=2000).fit(
            sp.vstack([delta, -delta]), np.r_[np.ones(train.sum()), np.zeros(train.sum())])
        out_c[held], out_r[held] = fc[held] @ bt.coef_[0], fr[held] @ bt.coef_[0]
    table = table.set_column(table.column_names.index("chosen_score"), "chosen_score", pa.array(out_c))
    return table.set_column(table.column_names.index("rejected_score"), "rejected_score", pa.array(out_r))


def margin_row(label: str, margin: np.ndarray, len_c: np.ndarray, len_r: np.ndarray) -> dict:
    bias = lb.score_bias(margin, np.zeros_like(margin), len_c, len_r)
    return {"scores": label, "rho_margin_dlen": bias["rho_margin_dlen"], "accuracy": bias["accuracy"],
            "acc_chosen_longer": bias["accuracy_chosen_longer"], "acc_chosen_shorter": bias["accuracy_chosen_shorter"]}


def run(name: str, table, seed: int, rm_spec: str) -> None:
    measure = LengthMeasure("chars")
    lengths = lb.response_lengths(table, measure)
    label = lb.label_bias(*lengths)
    print(f"\n## {name}: {table.num_rows} pairs, P(chosen longer) = {label['p_chosen_longer']:.3f}, "
          f"'longer wins' accuracy = {label['longer_wins_accuracy']:.3f}")
    start = time.perf_counter()
    if rm_spec == "bt":  # vote aggregates the fallback BT scores as its one voter
        table, rm_spec = crossfit_bt_scores(table, seed), "bt=scores:chosen_score,rejected_score"
    scored = vote(table, [parse_rm_spec(rm_spec, cache_dir=os.environ.get("PREFCLI_CACHE_DIR"))],
                  VoteParams(seed=seed)).out
    vote_s = time.perf_counter() - start
    rows = [margin_row("vote pref_mean (before)", scored["pref_mean"].to_numpy(), *lengths)]
    for method in lb.METHODS:
        start = time.perf_counter()
        model = lb.fit(scored, lb.select_scores(scored, "all"), lengths, length_spec=measure.spec, method=method)
        out = lb.apply(scored, model, lengths).out
        seconds = time.perf_counter() - start
        rows.append(margin_row(f"len_pref_mean, {method} ({seconds:.1f}s)", out["len_pref_mean"].to_numpy(), *lengths))
    print(f"vote --rm {rm_spec}: {vote_s:.0f}s ({table.num_rows / vote_s:.0f} pairs/s)")
    print_table(rows)
    groups = lb.meta_groups(table, "generator_chosen", "generator_rejected") if "alpaca" in name else (None, None)
    glm = lb.length_glm(*lengths, groups_chosen=groups[0], groups_rejected=groups[1])
    print(f"\nGLM on the labels: length coef {glm['length_coef']:.3f} (sigma {glm['sigma']:.0f} chars), "
          f"P(1 sigma longer wins | equal quality) = {glm['p_longer_wins_at_1sigma']:.3f}")
    if glm.get("groups"):
        print(f"\n| generator | pairs | win rate vs {glm['baseline']} | length-controlled (GLM, dlen=0) |")
        print("|---|---|---|---|")
        for g in glm["groups"]:
            print(f"| {g['group']} | {g['pairs']} | {g['win_rate']:.3f} | {g['lc_win_rate']:.3f} |")
        print_table(oracle_rows(glm, groups, lengths))


def oracle_rows(glm: dict, groups: tuple, lengths: tuple) -> list[dict]:
    """A content oracle with no length term: each side's generator quality theta_g from the GLM above (the
    judge's own, length-controlled), margin theta_chosen - theta_rejected; before and after `paired` debiasing.
    It shows what |rho| <= 0.05 costs when the better generator also writes longer."""
    theta = {g["group"]: float(np.log(g["lc_win_rate"] / (1 - g["lc_win_rate"]))) for g in glm["groups"]}
    theta[glm["baseline"]] = 0.0
    margin = np.array([theta[c] - theta[r] for c, r in zip(*groups)])
    curve = lb.fit_pair_curve(np.log1p(lengths[0]), np.log1p(lengths[1]), margin)
    curve.update(x_is="log1p_length", offset=0.0)  # offsets cancel in a margin
    debiased = margin - lb.correction(curve, *lengths, margin=True)
    return [margin_row("oracle: judge's generator quality (GLM theta)", margin, *lengths),
            margin_row("oracle, paired debiasing", debiased, *lengths)]


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(f"{v:+.3f}" if k == "rho_margin_dlen" else f"{v:.3f}" if isinstance(v, float) else v
                                for k, v in row.items()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="alpacaeval,hh-harmless")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rm", default="ensemble",
                        help="vote's --rm spec, or bt: a cross-fitted TF-IDF Bradley-Terry model (no embeddings)")
    args = parser.parse_args()
    loaders = {"alpacaeval": alpaca_variants, "hh-harmless": real_pairs.hh_harmless}
    for name in args.datasets.split(","):
        run(name, loaders[name](), args.seed, args.rm)


if __name__ == "__main__":
    main()
