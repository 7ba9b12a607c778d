"""Calibration: thresholds move the right way on planted data; the CLI writes what `vote` reads."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from conftest import assert_one_line_error, run_cli, run_inproc
from prefcli import io
from prefcli.schema import with_stage_columns
from prefcli.stages.calibrate import calibrate
from prefcli.stages.vote import thresholds_from_calibration
from review_data import majority_prefers_chosen, pandalm_pairs, pandalm_records


def planted(offset: float, *, n: int = 4000, reviewed: int = 800, low_bias: float = 0.0, seed: int = 0):
    """pref_mean ~ N(0.6, 1.2); humans keep the label with P = sigmoid(2.5 μ + offset).

    `low_bias` of the reviewed pairs are drawn from μ < 0 only (as `review select` over-samples them).
    Returns (table, true P(keep) per pair).
    """
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.6, 1.2, n)
    p_keep = 1 / (1 + np.exp(-(2.5 * mu + offset)))
    n_low = int(reviewed * low_bias)
    low = rng.choice(np.flatnonzero(mu < 0), n_low, replace=False)
    rest = rng.choice(np.setdiff1d(np.arange(n), low), reviewed - n_low, replace=False)
    picked = np.concatenate([low, rest])
    verdict = np.full(n, None, dtype=object)
    verdict[picked] = np.where(rng.random(len(picked)) < p_keep[picked], "keep", "flip")
    table = pa.table({"pref_mean": mu, "review_verdict": pa.array(verdict.tolist(), pa.large_string())})
    return table, p_keep


def test_noisier_labels_move_thresholds_up():
    clean = calibrate(planted(1.0)[0])["thresholds"]
    noisy = calibrate(planted(-1.0)[0])["thresholds"]
    assert noisy["ambiguous"] > clean["ambiguous"]
    assert noisy["incorrect"] >= clean["incorrect"]
    assert noisy["strong"] >= clean["strong"]


def test_stricter_target_widens_the_ambiguous_band():
    table, _ = planted(0.0)
    loose, strict = calibrate(table, target=0.8), calibrate(table, target=0.95)
    assert strict["thresholds"]["ambiguous"] > loose["thresholds"]["ambiguous"]
    assert strict["thresholds"]["incorrect"] <= loose["thresholds"]["incorrect"]
    assert strict["kept_coverage"] < loose["kept_coverage"]
    for doc in (loose, strict):
        t = doc["thresholds"]
        assert t["incorrect"] <= t["ambiguous"] <= t["strong"]
        assert doc["kept_agreement"] >= doc["target"]


def test_biased_review_sample_still_estimates_population_agreement():
    table, p_keep = planted(0.0, low_bias=0.6, seed=2)
    doc = calibrate(table, target=0.9)
    mu = table.column("pref_mean").to_numpy()
    kept = mu >= doc["thresholds"]["ambiguous"]
    assert abs(doc["kept_coverage"] - kept.mean()) < 0.02
    assert abs(doc["kept_agreement"] - p_keep[kept].mean()) < 0.03
    flipped = mu < doc["thresholds"]["incorrect"]
    if flipped.any():
        assert 1 - p_keep[flipped].mean() > 0.85


@pytest.fixture(scope="module")
def reviewed_pandalm(shared_data, tmp_path_factory):
    """PandaLM pairs with planted votes; the annotators' majority is the human verdict."""
    table, truth = pandalm_pairs(pandalm_records(shared_data), flip_share=0.25, seed=5)
    verdicts = []
    for pair_id, chosen in zip(table.column("pair_id").to_pylist(), table.column("chosen").to_pylist()):
        right = majority_prefers_chosen(truth[pair_id], chosen)
        verdicts.append(None if math.isnan(right) else "keep" if right == 1.0 else "flip")
    table = with_stage_columns(table, "review", {"review_verdict": pa.array(verdicts, pa.large_string())})
    root = tmp_path_factory.mktemp("calibrate")
    io.write_table(table, root / "reviewed.parquet")
    return root


def test_queue_picked_by_pref_std_still_gives_unbiased_agreement():
    """Errors are likelier at high pref_std and the reviewed pairs are mostly the highest-std ones
    (as `review select`'s high-std tier picks them): the estimate must still hold for the whole input."""
    rng = np.random.default_rng(3)
    n = 4000
    mu, std = rng.normal(0.6, 1.2, n), rng.uniform(0, 1.5, n)
    p_keep = 1 / (1 + np.exp(-(2.5 * mu + 1.5 - 2.0 * std)))
    top_std = np.argsort(-std)[:500]
    picked = np.concatenate([top_std, rng.choice(np.setdiff1d(np.arange(n), top_std), 150, replace=False)])
    verdict = np.full(n, None, dtype=object)
    verdict[picked] = np.where(rng.random(len(picked)) < p_keep[picked], "keep", "flip")
    table = pa.table({"pref_mean": mu, "pref_std": std, "review_verdict": pa.array(verdict.tolist(), pa.large_string())})
    doc = calibrate(table, target=0.9)
    kept = mu >= doc["thresholds"]["ambiguous"]
    assert doc["model"]["features"] == ["pref_mean", "pref_std"] and doc["model"]["coef"][1] < 0
    assert abs(doc["kept_agreement"] - p_keep[kept].mean()) < 0.04
    naive = np.mean(verdict[picked][mu[picked] >= doc["thresholds"]["ambiguous"]] == "keep")
    assert naive < p_keep[kept].mean() - 0.05  # raw shares of the reviewed pairs would be biased


def test_cli_writes_calibration_that_vote_reads(reviewed_pandalm):
    out = reviewed_pandalm / "calib.json"
    proc = run_inproc("calibrate", str(reviewed_pandalm / "reviewed.parquet"), "-o", str(out), "--target", "0.85",
                      "--png", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(out.read_text())
    thresholds = thresholds_from_calibration(doc, where=str(out))
    assert thresholds.incorrect <= thresholds.ambiguous <= thresholds.strong
    assert doc["version"] == 1 and doc["reviewed"] > 500 and doc["by_pref_agree"]
    coverage = [row["keep_coverage"] for row in doc["coverage"]]
    assert coverage == sorted(coverage, reverse=True) and coverage[0] == 1.0
    assert (reviewed_pandalm / "calib.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(proc.stdout)["target"] == 0.85


def test_cli_refuses_too_few_reviewed_pairs(reviewed_pandalm):
    out = reviewed_pandalm / "none.json"
    proc = run_cli("calibrate", str(reviewed_pandalm / "reviewed.parquet"), "-o", str(out), "--min-reviewed",
                   "100000")
    assert_one_line_error(proc, "human-verified pairs", "need at least 100000")
    assert not out.exists()
