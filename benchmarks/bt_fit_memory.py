"""Peak memory of one Bradley-Terry fold fit of the ensemble's TF-IDF (lex) view, three ways, each in its own
process: liblinear on the stacked ±Δ (the fit before 2026-12-01), one row per pair with alternating signs, and
the current `_fit_bt` (one row per pair, copied once as float64 and signed in place). Also checks that the last
two give bit-identical weights.

    .venv/bin/python benchmarks/bt_fit_memory.py [--pairs 50000] [--fold 40000]

Data: benchmarks/million.py's synthetic pairs (realistic lengths); the fold is a seeded sample of them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("stacked", "alternating", "current")


def fit_once(variant: str, raw: str, pairs: int, fold: int, out: str) -> None:
    """In a fresh process: features, then one fit; writes the peak RSS during the fit and the weights."""
    import numpy as np
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    from prefcli.models.reward.ensemble import _Features, _fit_bt

    rows = [json.loads(line) for _, line in zip(range(pairs), open(raw, encoding="utf-8"))]
    chosen, rejected = [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    features = _Features("lex").fit(chosen + rejected, None)
    delta = features.transform(chosen, None, None, None) - features.transform(rejected, None, None, None)
    del features, rows, chosen, rejected
    train = np.sort(np.random.default_rng(0).permutation(pairs)[:fold])
    weights = np.ones(len(train))
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # peak from here on
    solver = dict(fit_intercept=False, solver="liblinear", tol=1e-4, max_iter=200, random_state=0)
    if variant == "stacked":
        part = delta[train]
        model = LogisticRegression(C=0.5, **solver).fit(sp.vstack([part, -part]).tocsr(),
                                                        np.r_[np.ones(fold), np.zeros(fold)],
                                                        sample_weight=np.r_[weights, weights])
        coef = model.coef_[0]
    elif variant == "alternating":
        sign = np.where(np.arange(fold) % 2 == 0, 1.0, -1.0)
        signed = delta[train].multiply(sign[:, None]).tocsr()
        coef = LogisticRegression(C=1.0, **solver).fit(signed, (sign > 0).astype(float), sample_weight=weights).coef_[0]
    else:
        coef = _fit_bt(delta, train, weights, 1.0)
    peak = next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
    np.save(out, coef)
    print(json.dumps({"variant": variant, "peak_mb": peak, "fold_nnz": int(delta[train].nnz)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50_000)
    parser.add_argument("--fold", type=int, default=40_000)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--raw", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        fit_once(args.variant, args.raw, args.pairs, args.fold, args.out)
        return
    import numpy as np

    import million

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "pairs.jsonl"
        million.generate(raw, args.pairs)
        results, coefs = {}, {}
        for variant in VARIANTS:
            out = str(Path(tmp) / f"{variant}.npy")
            proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--raw", str(raw), "--out", out,
                                   "--pairs", str(args.pairs), "--fold", str(args.fold)],
                                  capture_output=True, text=True, check=True)
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            coefs[variant] = np.load(out)
    print(f"{args.fold:,}-pair fold of {args.pairs:,} synthetic pairs, lex view, "
          f"{results['current']['fold_nnz']:,} non-zeros")
    for variant in VARIANTS:
        ratio = results[variant]["peak_mb"] / results["stacked"]["peak_mb"]
        print(f"  {variant:12s} peak {results[variant]['peak_mb']:6,} MB  ({ratio:.2f}x stacked)")
    same = np.array_equal(coefs["alternating"], coefs["current"])
    corr = float(np.corrcoef(coefs["stacked"], coefs["current"])[0, 1])
    print(f"  current == alternating bit for bit: {same}; corr(current, stacked) = {corr:.7f}")


if __name__ == "__main__":
    main()
