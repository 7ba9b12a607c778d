"""Length bias before/after debiasing on every real set in ../shared/data, old default vs new default.

Sets: AlpacaEval (gpt-3.5-turbo-1106 and alpaca-7b, plain/_verbose/_concise, vs gpt4_1106_preview), HH-RLHF
harmless, PandaLM (majority of 3 annotators), LLMBar (all subsets), OASST en-100 trees and OASST2 (OpenPaws)
trees (ranked siblings, all pairs). Each set is subsampled to at most 3,000 pairs and voted ONCE with
`--rm` (default: the offline ensemble, cross-fitted on each set); the voted table is cached as Parquet
under --voted-dir so reruns only refit. Then `length-bias fit` + `apply` on that set (as a user would),
for --score pref_mean (one margin) and --score all (each RM, then vote's aggregate), reporting
before -> after (vote's pref_mean -> len_pref_mean):
  - Spearman rho(margin, dlen), dlen = chars(chosen) - chars(rejected)   (goal |rho| <= 0.05)
  - accuracy of sign(margin) against the labels    (goal: <= 1 point lost on PandaLM, LLMBar, OASST)
  - gap = accuracy on chosen-longer minus on chosen-shorter pairs   (goal |gap| <= 5 points)
for the old default (`--method paired --residual none`) and the new one (`paired`, `rank`), and a
leave-one-dataset-out pick: for each set, the (method, residual) that meets most goals on the OTHER
sets (ties: higher mean accuracy there), reported on the held-out set.
On AlpacaEval, also the length-controlled GLM on the labels and a content oracle built from it.

Run: PREFCLI_CACHE_DIR=/work/cache .venv/bin/python benchmarks/length_bias.py
     [--datasets alpacaeval,hh-harmless,pandalm,llmbar,oasst-en100,oasst2] [--voted-dir bench_out/length_bias]
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
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import real_pairs  # noqa: E402

from prefcli.models.length import LengthMeasure  # noqa: E402
from prefcli.models.reward import parse_rm_spec  # noqa: E402
from prefcli.pairs import build_pairs, user_prompt  # noqa: E402
from prefcli.stages.ingest import load_pairs  # noqa: E402
from prefcli.stages import length_bias as lb  # noqa: E402
from prefcli.stages.vote import VoteOptions, vote  # noqa: E402

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
BASELINE = "gpt4_1106_preview"
FAMILIES = ("gpt-3.5-turbo-1106", "alpaca-7b")
GENERATORS = tuple(f"{f}{v}" for f in FAMILIES for v in ("", "_verbose", "_concise"))
MAX_PAIRS = 3000
RHO_GOAL, ACC_GOAL, GAP_GOAL = 0.05, 0.01, 0.05
LENGTH_DRIVEN = ("alpacaeval", "hh-harmless")  # accuracy loss reported, not bounded
OLD, NEW = ("paired", "none"), ("dlen", "balanced")


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


def oasst_en100(data: Path = real_pairs.DATA):
    return load_pairs(str(data / "oasst-en100" / "en_100_tree.jsonl"), source_name="oasst-en100")


def oasst2(data: Path = real_pairs.DATA):
    return load_pairs(str(data / "oasst2-openpaws" / "oasst2_filtered.jsonl"), source_name="oasst2-openpaws")


LOADERS = {"alpacaeval": alpaca_variants, "hh-harmless": real_pairs.hh_harmless, "pandalm": real_pairs.pandalm,
           "llmbar": real_pairs.llmbar, "oasst-en100": oasst_en100, "oasst2": oasst2}


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


def metrics(margin: np.ndarray, len_c: np.ndarray, len_r: np.ndarray) -> dict:
    bias = lb.score_bias(margin, np.zeros_like(margin), len_c, len_r)
    return {"rho": bias["rho_margin_dlen"], "acc": bias["accuracy"], "acc_longer": bias["accuracy_chosen_longer"],
            "acc_shorter": bias["accuracy_chosen_shorter"],
            "gap": bias["accuracy_chosen_longer"] - bias["accuracy_chosen_shorter"]}


def voted(name: str, seed: int, rm_spec: str, voted_dir: Path):
    """The set's pairs (at most MAX_PAIRS, a seeded sample) with vote's columns, voted once and cached."""
    path = voted_dir / f"{name}.{rm_spec.replace(':', '_').replace('=', '_').replace(',', '_')}.parquet"
    if path.exists():
        return pq.read_table(path)
    table = LOADERS[name]()
    if table.num_rows > MAX_PAIRS:
        table = table.take(pa.array(np.sort(np.random.default_rng(seed).permutation(table.num_rows)[:MAX_PAIRS])))
    start = time.perf_counter()
    if rm_spec == "bt":  # vote aggregates the fallback BT scores as its one voter
        table, rm_spec = crossfit_bt_scores(table, seed), "bt=scores:chosen_score,rejected_score"
    scored = vote(table, [parse_rm_spec(rm_spec, cache_dir=os.environ.get("PREFCLI_CACHE_DIR"))],
                  VoteOptions(seed=seed)).out
    print(f"{name}: vote --rm {rm_spec}, {table.num_rows} pairs in {time.perf_counter() - start:.0f}s", flush=True)
    voted_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(scored, path)
    return scored


def debiased(scored, lengths, score: str, method: str, residual: str) -> np.ndarray:
    model = lb.fit(scored, lb.select_scores(scored, score), lengths, length_spec="chars", method=method,
                   residual=residual)
    return lb.apply(scored, model, lengths).out["len_pref_mean"].to_numpy()


def misses(name: str, before: dict, after: dict) -> list[str]:
    out = []
    if after["rho"] is None or abs(after["rho"]) > RHO_GOAL:
        out.append("rho")
    if name not in LENGTH_DRIVEN and before["acc"] - after["acc"] > ACC_GOAL:
        out.append("acc")
    if abs(after["gap"]) > GAP_GOAL:
        out.append("gap")
    return out


def lodo_pick(results: dict, held_out: str, score: str) -> tuple[str, str]:
    """(method, residual) chosen on every set but `held_out`: fewest goals missed, then mean accuracy."""
    others = [n for n in results if n != held_out]

    def key(config):
        missed = sum(len(misses(n, results[n]["before"], results[n][score][config])) for n in others)
        return missed, -float(np.mean([results[n][score][config]["acc"] for n in others]))

    return min(((m, r) for m in lb.METHODS for r in lb.RESIDUALS), key=key)


def summary_table(results: dict, score: str) -> None:
    print(f"\n### --score {score}: before -> old default ({OLD[0]}, residual {OLD[1]}) | new default ({NEW[0]}, residual {NEW[1]})"
          f" | leave-one-dataset-out pick\n")
    print("| set | pairs | P(chosen longer) | rho before | rho old | rho new | rho LODO | acc before | "
          "balanced acc before | acc old | acc new | acc LODO | gap before | gap old | gap new | gap LODO | LODO pick "
          "| new misses |")
    print("|" + "---|" * 18)
    for name, res in results.items():
        pick = lodo_pick(results, name, score)
        cols = [res["before"], res[score][OLD], res[score][NEW], res[score][pick]]
        missed = misses(name, res["before"], res[score][NEW])
        print(f"| {name} | {res['pairs']} | {res['p_longer']:.3f} | "
              + " | ".join(f"{c['rho']:+.3f}" for c in cols) + " | "
              + f"{cols[0]['acc']:.3f} | {res['balanced_before']:.3f} | "
              + " | ".join(f"{c['acc']:.3f}" for c in cols[1:]) + " | "
              + " | ".join(f"{100 * c['gap']:+.1f}" for c in cols)
              + f" | {pick[0]}, {pick[1]} | {', '.join(missed) or '-'} |")


def why_row(name: str, scored, lengths) -> dict:
    """Where the old default's (paired, residual none) leftover rho on --score pref_mean comes from: linear vs
    rank correlation, the score's scale, ridge shrinkage, extreme pairs, absolute lengths."""
    from scipy.stats import spearmanr

    len_c, len_r = lengths
    d, ratio = len_c - len_r, lb.log_ratio(len_c, len_r)
    margin = scored["pref_mean"].to_numpy()

    def old(m, rows=slice(None), alphas=None):
        saved = lb.RIDGE_ALPHAS
        lb.RIDGE_ALPHAS = alphas if alphas is not None else saved
        try:
            model = lb.fit(pa.table({"pref_mean": m[rows]}), ["pref_mean"], (len_c[rows], len_r[rows]),
                           length_spec="chars", method=OLD[0], residual=OLD[1])
        finally:
            lb.RIDGE_ALPHAS = saved
        curve = model["scores"]["pref_mean"]
        return m - lb.correction(curve, len_c, len_r, margin=True), curve

    def rho(a, b):
        return float(spearmanr(a, b).statistic)

    resid, curve = old(margin)
    error = np.abs(resid - curve["label_margin"])
    typical = error <= np.quantile(error, 0.98)
    long_pairs = np.log1p(len_c) + np.log1p(len_r) > np.median(np.log1p(len_c) + np.log1p(len_r))
    return {"set": name, "rho old": rho(resid, d), "rho(resid, log ratio)": rho(resid, ratio),
            "pearson(resid, log ratio)": float(np.corrcoef(resid, ratio)[0, 1]),
            "margin x10": rho(old(10 * margin)[0], d),
            "least squares (no ridge)": rho(old(margin, alphas=np.array([1e-8]))[0], d),
            "fit without 2% extreme pairs": rho(old(margin, rows=np.flatnonzero(typical))[0], d),
            "shorter half of pairs": rho(resid[~long_pairs], d[~long_pairs]),
            "longer half of pairs": rho(resid[long_pairs], d[long_pairs])}


def held_out_rows(name: str, scored) -> list[dict]:
    """Fit on the pairs of one half of the prompts, apply to the other half (and the other way round):
    --score pref_mean, old and new default; metrics on the half the fit did not see."""
    import hashlib

    half = np.array([hashlib.sha256(p.encode()).digest()[0] % 2 == 0 for p in scored["prompt_id"].to_pylist()])
    parts = scored.filter(pa.array(half)), scored.filter(pa.array(~half))
    rows = []
    for k, (seen, unseen) in enumerate((parts, parts[::-1])):
        fit_len = lb.response_lengths(seen, LengthMeasure("chars"))
        lengths = lb.response_lengths(unseen, LengthMeasure("chars"))
        row = {"set": f"{name} ({'AB'[k]} -> {'BA'[k]})", "fit pairs": seen.num_rows, "unseen pairs": unseen.num_rows}
        before = metrics(unseen["pref_mean"].to_numpy(), *lengths)
        row.update({"rho before": before["rho"]})
        for label, (method, residual) in (("old", OLD), ("new", NEW)):
            model = lb.fit(seen, ["pref_mean"], fit_len, length_spec="chars", method=method, residual=residual)
            after = metrics(lb.apply(unseen, model, lengths).out["len_pref_mean"].to_numpy(), *lengths)
            row.update({f"rho {label}": after["rho"], f"acc {label}": after["acc"], f"gap {label}": after["gap"]})
        row["acc before"] = before["acc"]
        rows.append(row)
    return rows


def run(name: str, seed: int, rm_spec: str, voted_dir: Path) -> dict:
    scored = voted(name, seed, rm_spec, voted_dir)
    lengths = lb.response_lengths(scored, LengthMeasure("chars"))
    label = lb.label_bias(*lengths)
    before = metrics(scored["pref_mean"].to_numpy(), *lengths)
    res = {"pairs": scored.num_rows, "p_longer": label["p_chosen_longer"], "before": before,
           "why": why_row(name, scored, lengths), "held_out": held_out_rows(name, scored),
           "balanced_before": (before["acc_longer"] + before["acc_shorter"]) / 2}
    for score in ("pref_mean", "all"):
        res[score] = {}
        for method in lb.METHODS:
            for residual in lb.RESIDUALS:
                res[score][(method, residual)] = metrics(debiased(scored, lengths, score, method, residual), *lengths)
    print(f"\n## {name}: {scored.num_rows} pairs, P(chosen longer) = {label['p_chosen_longer']:.3f}, "
          f"'longer wins' accuracy = {label['longer_wins_accuracy']:.3f}, balanced accuracy before "
          f"(mean of acc longer and acc shorter) = {(before['acc_longer'] + before['acc_shorter']) / 2:.3f}")
    rows = [{"fit": "vote pref_mean (before)", **before}]
    rows += [{"fit": f"--score {score} --method {m} --residual {r}", **res[score][(m, r)]}
             for score in ("pref_mean", "all") for m, r in res[score]]
    print_table(rows)
    if name == "alpacaeval":
        groups = lb.meta_groups(scored, "generator_chosen", "generator_rejected")
        glm = lb.length_glm(*lengths, groups_chosen=groups[0], groups_rejected=groups[1])
        print(f"\nGLM on the labels: length coef {glm['length_coef']:.3f} (sigma {glm['sigma']:.0f} chars), "
              f"P(1 sigma longer wins | equal quality) = {glm['p_longer_wins_at_1sigma']:.3f}")
        print(f"\n| generator | pairs | win rate vs {glm['baseline']} | length-controlled (GLM, dlen=0) |")
        print("|---|---|---|---|")
        for g in glm["groups"]:
            print(f"| {g['group']} | {g['pairs']} | {g['win_rate']:.3f} | {g['lc_win_rate']:.3f} |")
        print_table(oracle_rows(glm, groups, lengths))
    return res


def oracle_rows(glm: dict, groups: tuple, lengths: tuple) -> list[dict]:
    """A content oracle with no length term: each side's generator quality theta_g from the GLM above (the
    judge's own, length-controlled), margin theta_chosen - theta_rejected; before and after `paired` debiasing.
    It shows what |rho| <= 0.05 costs when the better generator also writes longer."""
    theta = {g["group"]: float(np.log(g["lc_win_rate"] / (1 - g["lc_win_rate"]))) for g in glm["groups"]}
    theta[glm["baseline"]] = 0.0
    margin = np.array([theta[c] - theta[r] for c, r in zip(*groups)])
    table = pa.table({"pref_mean": margin})
    rows = [{"fit": "oracle: judge's generator quality (GLM theta)", **metrics(margin, *lengths)}]
    for method, residual in (OLD, NEW):
        model = lb.fit(table, ["pref_mean"], lengths, length_spec="chars", method=method, residual=residual)
        after = margin - lb.correction(model["scores"]["pref_mean"], *lengths, margin=True)
        rows.append({"fit": f"oracle, {method} + residual {residual}", **metrics(after, *lengths)})
    return rows


def _cell(key: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and "pairs" in key:
        return str(int(value))
    signed = key in ("rho", "gap") or key.startswith(("rho", "gap", "pearson", "margin x10", "least", "fit without",
                                                      "shorter half", "longer half"))
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(_cell(k, v) for k, v in row.items()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(LOADERS))
    parser.add_argument("--voted-dir", default=str(Path(__file__).resolve().parents[1] / "bench_out" / "length_bias"),
                        help="cache of the voted tables (one Parquet per set and --rm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rm", default="ensemble",
                        help="vote's --rm spec, or bt: a cross-fitted TF-IDF Bradley-Terry model (no embeddings)")
    args = parser.parse_args()
    start = time.perf_counter()
    results = {name: run(name, args.seed, args.rm, Path(args.voted_dir)) for name in args.datasets.split(",")}
    for score in ("pref_mean", "all"):
        summary_table(results, score)
    print("\n### Where the old default's leftover rho comes from (--score pref_mean; Spearman rho with dlen "
          "unless named)\n")
    print_table([res["why"] for res in results.values()])
    print("\n### Fit on the pairs of half the prompts, apply to the other half (--score pref_mean, unseen half)\n")
    print_table([row for res in results.values() for row in res["held_out"]])
    print(f"\n{time.perf_counter() - start:.0f}s in all")


if __name__ == "__main__":
    main()
