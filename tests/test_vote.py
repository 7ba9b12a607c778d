"""prefcli vote: aggregation maths, thresholds, actions with row accounting, the offline ensemble on real data."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, assert_one_line_error, run_cli, run_inproc
from prefcli.errors import InputError
from prefcli.models.reward import parse_rm_spec
from prefcli.models.reward.ensemble import EnsembleConfig, OfflineEnsemble
from prefcli.stages.vote import (BucketThresholds, VoteOptions, aggregate_margins, calibration_document,
                                 robust_scale, thresholds_from_calibration, vote)

sys.path.insert(0, str(ROOT / "benchmarks"))
import real_pairs  # noqa: E402


# --------------------------------------------------------------------------- maths

def test_aggregate_margins_by_hand():
    margins = np.array([[2.0, -1.0], [-2.0, -4.0], [0.5, 0.5]])
    agg = aggregate_margins(margins, BucketThresholds(incorrect=-0.5, ambiguous=0.25, strong=1.0),
                            normalise=False, uwo_lambda=1.0)
    np.testing.assert_allclose(agg["mean"], [0.5, -3.0, 0.5])
    np.testing.assert_allclose(agg["std"], [1.5, 1.0, 0.0])
    np.testing.assert_allclose(agg["agree"], [0.5, 0.0, 1.0])
    np.testing.assert_allclose(agg["wco"], [-1.0, -4.0, 0.5])
    np.testing.assert_allclose(agg["uwo"], [0.5 - 2.25, -3.0 - 1.0, 0.5])
    np.testing.assert_allclose(agg["label_prob"], 1 / (1 + np.exp(-np.array([0.5, -3.0, 0.5]))))
    np.testing.assert_allclose(agg["margin"], agg["mean"])
    assert list(agg["bucket"]) == ["normal", "incorrect", "normal"]
    weighted = aggregate_margins(margins, normalise=False, weights=[3, 1])
    np.testing.assert_allclose(weighted["mean"], [1.25, -2.5, 0.5])
    np.testing.assert_allclose(weighted["agree"], [0.75, 0.0, 1.0])


def test_scale_normalisation_keeps_sign_and_is_idempotent():
    rng = np.random.default_rng(0)
    margins = np.column_stack([rng.normal(1, 1, 500), 100 * rng.normal(1, 1, 500)])
    z = margins / robust_scale(margins)
    assert (np.sign(z) == np.sign(margins)).all()  # no centring
    np.testing.assert_allclose(np.median(np.abs(z), axis=0), 0.6744897501960817)
    np.testing.assert_allclose(robust_scale(z), 1.0)
    np.testing.assert_allclose(aggregate_margins(z)["mean"], aggregate_margins(margins)["mean"])


def test_buckets_and_ambiguous_std():
    t = BucketThresholds(incorrect=-1, ambiguous=0, strong=2, ambiguous_std=0.5)
    mean = np.array([[-2.0, -2.0], [-0.5, -0.5], [1.0, 1.0], [3.0, 3.0], [0.2, 2.2]])
    assert list(aggregate_margins(mean, t, normalise=False)["bucket"]) == [
        "incorrect", "ambiguous", "normal", "strong", "ambiguous"]
    with pytest.raises(InputError, match="incorrect <= ambiguous <= strong"):
        BucketThresholds(incorrect=1, ambiguous=0, strong=2)


def test_calibration_round_trip_and_overrides():
    t = BucketThresholds(incorrect=-0.8, ambiguous=0.1, strong=1.2, ambiguous_std=0.9)
    doc = json.loads(json.dumps(calibration_document(t, target=0.9)))
    assert thresholds_from_calibration(doc) == t
    assert thresholds_from_calibration(doc).with_overrides({"strong": "2"}).strong == 2.0
    with pytest.raises(InputError, match="version"):
        thresholds_from_calibration({"version": 9, "thresholds": doc["thresholds"]})
    with pytest.raises(InputError, match="unknown threshold"):
        t.with_overrides({"bogus": "1"})


# --------------------------------------------------------------------------- CLI on real pairs

@pytest.fixture(scope="module")
def llmbar_scored(shared_data, tmp_path_factory):
    """LLMBar pairs with a real, simple voter in the score columns: response length ("longer wins")."""
    table = real_pairs.llmbar(shared_data).slice(0, 300)
    lengths = {side: pa.array([float(len(t)) for t in table.column(side).to_pylist()]) for side in ("chosen", "rejected")}
    table = table.set_column(table.column_names.index("chosen_score"), "chosen_score", lengths["chosen"])
    table = table.set_column(table.column_names.index("rejected_score"), "rejected_score", lengths["rejected"])
    path = tmp_path_factory.mktemp("vote") / "llmbar.parquet"
    pq.write_table(table, path)
    return path, table


def _vote_cli(src, out, *extra):
    proc = run_inproc("vote", str(src), "-o", str(out), "--rm", "len=scores:chosen_score,rejected_score",
                      "--thresholds", "incorrect=-0.5,ambiguous=0.2,strong=1.5", "--json", *extra)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout), pq.read_table(out)


def test_actions_flip_drop_soft_keep_row_accounting(llmbar_scored, tmp_path):
    src, table = llmbar_scored
    n = table.num_rows
    stats, none = _vote_cli(src, tmp_path / "none.parquet")
    incorrect = np.asarray(none.column("pref_bucket").to_pylist()) == "incorrect"
    assert 0 < incorrect.sum() < n and stats["buckets"]["incorrect"] == incorrect.sum()
    assert (none.column("pref_mean").to_numpy()[incorrect] < -0.5).all()
    for col in ("rm_len_chosen", "rm_len_rejected", "rm_len_margin", "pref_std", "pref_agree", "pref_wco",
                "pref_uwo", "margin", "label_prob"):
        assert col in none.column_names

    stats, flipped = _vote_cli(src, tmp_path / "flip.parquet", "--action", "flip")
    assert flipped.num_rows == n and stats["flipped"] == incorrect.sum()
    assert flipped.column("pref_flipped").to_pylist() == incorrect.tolist()
    old_c, old_r = table.column("chosen").to_pylist(), table.column("rejected").to_pylist()
    new_c, new_r = flipped.column("chosen").to_pylist(), flipped.column("rejected").to_pylist()
    for i in range(n):
        assert (new_c[i], new_r[i]) == ((old_r[i], old_c[i]) if incorrect[i] else (old_c[i], old_r[i]))
    assert flipped.column("pair_id").to_pylist() == table.column("pair_id").to_pylist()
    assert (flipped.column("pref_mean").to_numpy()[incorrect] > 0).all()  # now agrees with the swapped label

    side = tmp_path / "dropped.parquet"
    stats, kept = _vote_cli(src, tmp_path / "drop.parquet", "--action", "drop", "--set-aside", str(side))
    dropped = pq.read_table(side)
    assert kept.num_rows + dropped.num_rows == n and dropped.num_rows == incorrect.sum()
    assert stats["rows_set_aside"] == dropped.num_rows
    assert set(dropped.column("set_aside_reason").to_pylist()) == {"vote: incorrect label (pref_mean below -0.5)"}
    assert set(dropped.column("pair_id").to_pylist()).isdisjoint(kept.column("pair_id").to_pylist())

    stats, soft = _vote_cli(src, tmp_path / "soft.parquet", "--action", "soft")
    assert soft.num_rows == n and soft.column("chosen").to_pylist() == old_c
    probs = soft.column("label_prob").to_numpy()
    assert (probs[incorrect] < 0.5).all() and (probs[~incorrect] > probs[incorrect].max()).all()


def test_projected_columns_give_the_whole_table_outputs(llmbar_scored, tmp_path, monkeypatch):
    """Past one stream batch the local engine hands vote only the pairs, the side scores and the columns a
    `scores:` voter names; the other columns come back as rows are written: the same tables as a whole-table
    run, for every action (flip swaps projected columns; drop sets rows aside)."""
    from prefcli.engines import project, stream

    _, table = llmbar_scored
    judge = np.random.default_rng(0).normal(size=(table.num_rows, 2))
    table = table.append_column("judge_chosen", pa.array(judge[:, 0])).append_column("judge_rejected",
                                                                                      pa.array(judge[:, 1]))
    src = tmp_path / "in.parquet"
    pq.write_table(table, src)
    extra = ["--rm", "j=scores:judge_chosen,judge_rejected"]
    whole = {a: _vote_cli(src, tmp_path / f"whole-{a}.parquet", "--action", a, *extra)[1]
             for a in ("none", "flip", "drop")}
    seen = []
    real = project.run_projected
    monkeypatch.setattr(stream, "STREAM_BATCH_ROWS", 16)
    monkeypatch.setattr(project, "run_projected", lambda st, source, ctx: seen.append(source.table.column_names)
                        or real(st, source, ctx))
    for action, expected in whole.items():
        _, got = _vote_cli(src, tmp_path / f"projected-{action}.parquet", "--action", action, *extra)
        assert got.equals(expected), action
    side = [pq.read_table(tmp_path / f"{kind}-drop.rejects.parquet") for kind in ("whole", "projected")]
    assert side[0].num_rows and side[1].equals(side[0])
    assert len(seen) == 3 and {"judge_chosen", "judge_rejected", "chosen_score"} <= set(seen[0])
    assert "meta" not in seen[0] and "source" not in seen[0]


def test_bad_rm_spec_and_options_one_line_errors(llmbar_scored, tmp_path):
    src, _ = llmbar_scored
    out = tmp_path / "x.parquet"
    assert_one_line_error(run_inproc("vote", str(src), "-o", str(out), "--rm", "bogus:model"),
                          "unknown backend 'bogus'")
    assert_one_line_error(run_inproc("vote", str(src), "-o", str(out), "--rm", "scores:chosen_score"), "scores:")
    assert_one_line_error(run_inproc("vote", str(src), "-o", str(out), "--rm", "ensemble:k=x"), "k=")
    assert_one_line_error(run_inproc("vote", str(src), "-o", str(out), "--rm", "scores:a,b"), "no column 'a'")
    assert_one_line_error(run_inproc("vote", str(src), "-o", str(out), "--rm", "scores:chosen_score,rejected_score",
                                     "--thresholds", "incorrect=x"), "--thresholds", "incorrect")
    assert_one_line_error(run_inproc("vote", str(src), "-o", str(out), "--rm", "hf:/nonexistent/model"),
                          "hf:/nonexistent/model", "cannot load")
    bad = tmp_path / "calib.json"
    bad.write_text('{"version": 1}')
    assert_one_line_error(run_inproc("vote", str(src), "-o", str(out), "--rm", "scores:chosen_score,rejected_score",
                                     "--calibration", str(bad)), str(bad), "thresholds")
    assert not out.exists()


def test_calibration_file_sets_buckets(llmbar_scored, tmp_path):
    src, table = llmbar_scored
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps(calibration_document(BucketThresholds(incorrect=-100, ambiguous=-99, strong=100))))
    base = ("vote", str(src), "--rm", "scores:chosen_score,rejected_score", "--calibration", str(calib), "--json")
    proc = run_cli(*base, "-o", str(tmp_path / "c.parquet"))
    assert json.loads(proc.stdout)["buckets"]["normal"] == table.num_rows
    proc = run_cli(*base, "-o", str(tmp_path / "d.parquet"), "--thresholds", "strong=-99")  # overrides the file
    stats = json.loads(proc.stdout)
    assert stats["thresholds"] == {"incorrect": -100, "ambiguous": -99, "strong": -99, "ambiguous_std": None}
    assert stats["buckets"]["strong"] == table.num_rows


# --------------------------------------------------------------------------- the offline ensemble on real data

@pytest.fixture(scope="module")
def alpaca_noisy(shared_data):
    table = real_pairs.alpaca_eval(shared_data, n=240, seed=1)
    return real_pairs.inject_flips(table, 0.2, seed=3)


@pytest.fixture(scope="module")
def fitted(alpaca_noisy, session_cache):
    """fitted(rows, max_train): an ensemble (repeats=1, folds=4) fitted with seed 0 on the first `rows` noisy
    pairs, fitted once per module; tests that compare two fits of their own still make both themselves."""
    fits = {}

    def get(rows: int, max_train: int | None = None) -> OfflineEnsemble:
        if (rows, max_train) not in fits:
            extra = {} if max_train is None else {"max_train": max_train}
            ens = OfflineEnsemble(EnsembleConfig(repeats=1, folds=4, **extra), device="cpu",
                                  cache_dir=str(session_cache))
            ens.fit(alpaca_noisy[0].slice(0, rows), seed=0)
            fits[rows, max_train] = ens
        return fits[rows, max_train]

    return get


@pytest.mark.slow
def test_ensemble_ranks_injected_flips_high_and_is_deterministic(alpaca_noisy, session_cache):
    from sklearn.metrics import roc_auc_score

    noisy, flipped = alpaca_noisy
    config = EnsembleConfig(repeats=1, folds=4)
    first = OfflineEnsemble(config, device="cpu", cache_dir=str(session_cache))
    out = vote(noisy, [first], VoteOptions(seed=7)).out
    mean = out.column("pref_mean").to_numpy()
    assert roc_auc_score(flipped, -mean) > 0.75
    assert len(first.members) == 2 and out.num_rows == noisy.num_rows
    assert "rm_ens_emb0_margin" in out.column_names and "rm_ens_lex0_margin" in out.column_names
    incorrect = np.asarray(out.column("pref_bucket").to_pylist()) == "incorrect"
    assert flipped[incorrect].mean() > 2 * flipped.mean()  # flagged pairs are mostly the injected flips

    again = OfflineEnsemble(config, device="cpu", cache_dir=str(session_cache))
    out2 = vote(noisy, [again], VoteOptions(seed=7)).out
    assert again.computed == 0  # every embedding came from the cache
    assert out2.equals(out)
    other = vote(noisy, [OfflineEnsemble(config, device="cpu", cache_dir=str(session_cache))], VoteOptions(seed=8)).out
    assert not np.array_equal(other.column("pref_mean").to_numpy(), mean)  # the seed picks the fold split


@pytest.mark.slow
def test_ensemble_members_never_score_their_training_pairs(alpaca_noisy, session_cache, fitted):
    """Cross-fitting: relabelling pairs of one fold must not move any score of that fold except
    the relabelled pairs' own (exactly negated) margins: no model that scores a fold saw its labels."""
    noisy = alpaca_noisy[0].slice(0, 120)
    config = EnsembleConfig(repeats=1, folds=4)
    a = fitted(120)
    fold0 = a.members[0].fold == 0
    mask = fold0 & (np.arange(noisy.num_rows) % 2 == 0)
    from prefcli.stages.vote import swap_sides

    b = OfflineEnsemble(config, device="cpu", cache_dir=str(session_cache))
    b.fit(swap_sides(noisy, mask), seed=0)
    for ma, mb in zip(a.members, b.members):
        np.testing.assert_allclose(mb.chosen[fold0 & ~mask], ma.chosen[fold0 & ~mask], atol=1e-9)
        np.testing.assert_allclose(mb.chosen[mask], ma.rejected[mask], atol=1e-9)
        np.testing.assert_allclose(mb.rejected[mask], ma.chosen[mask], atol=1e-9)
        assert not np.allclose(mb.chosen[~fold0], ma.chosen[~fold0])  # other folds did train on the change


@pytest.mark.slow
def test_folds_fitted_on_threads_are_the_folds_fitted_one_after_another(alpaca_noisy, session_cache, monkeypatch):
    """Without Context.tasks the folds run on a thread per usable core; each fold is a pure function of its
    pairs, so the weights and scores are bit for bit those of fitting the folds one after another."""
    import threading

    from prefcli.models.reward import ensemble

    noisy = alpaca_noisy[0].slice(0, 120)
    threads = set()
    train_fold = ensemble.train_fold

    def spy(shared, job):
        threads.add(threading.current_thread().name)
        return train_fold(shared, job)

    monkeypatch.setattr(ensemble, "usable_cores", lambda: 3)
    monkeypatch.setattr(ensemble, "train_fold", spy)
    threaded = OfflineEnsemble(EnsembleConfig(repeats=1, folds=4), device="cpu", cache_dir=str(session_cache))
    threaded.fit(noisy, seed=0)
    assert len(threads) >= 2 and all(name.startswith("prefcli-fold") for name in threads)
    one_by_one = OfflineEnsemble(EnsembleConfig(repeats=1, folds=4), device="cpu", cache_dir=str(session_cache),
                                 tasks=lambda fn, shared, items: [fn(shared, item) for item in items])
    one_by_one.fit(noisy, seed=0)
    for a, b in zip(one_by_one.members, threaded.members):
        assert np.array_equal(a.weights, b.weights) and np.array_equal(a.fold, b.fold)
        assert np.array_equal(a.chosen, b.chosen) and np.array_equal(a.rejected, b.rejected)
    # on a sample of a larger input the folds' memory comes on top of the input's: one at a time unless asked
    for config, expected in ((EnsembleConfig(repeats=1, folds=4, max_train=100), {"MainThread"}),
                             (EnsembleConfig(repeats=1, folds=4, max_train=100, jobs=2), None)):
        threads.clear()
        OfflineEnsemble(config, device="cpu", cache_dir=str(session_cache)).fit(noisy, seed=0)
        if expected:
            assert threads == expected
        else:
            assert len(threads) == 2 and all(name.startswith("prefcli-fold") for name in threads)


@pytest.mark.slow
def test_lex_transforms_in_worker_processes_give_the_same_scores(alpaca_noisy, session_cache, monkeypatch):
    """From TRANSFORM_POOL_MIN_PAIRS pairs on, the lex view's TF-IDF transforms run in worker processes, on
    contiguous shares of the responses: the same matrix, so the same weights and scores bit for bit. The
    workers are gone after the fit, and a worker that dies midway leaves the rest to the caller, same scores."""
    from prefcli.memory import helper_peaks_kb
    from prefcli.models.reward import ensemble, lex_worker

    noisy = alpaca_noisy[0].slice(0, 120)
    shares, procs = [], []
    transform = lex_worker.LexWorkers.transform

    def spy(self, responses):
        shares.append((self.workers, len(responses)))
        procs.extend(self._procs)
        return transform(self, responses)

    monkeypatch.setattr(ensemble, "TRANSFORM_POOL_MIN_PAIRS", 100)
    monkeypatch.setattr(ensemble, "TRANSFORM_SHARE_MIN", 8)
    monkeypatch.setattr(lex_worker, "SHARE_ROWS", 30)  # 200 responses: 7 shares, 4 rounds over 2 workers
    monkeypatch.setattr(lex_worker.LexWorkers, "transform", spy)
    config = EnsembleConfig(repeats=1, folds=4, max_train=100, jobs=2)
    pooled = OfflineEnsemble(config, device="cpu", cache_dir=str(session_cache))
    helper_peaks_kb(reset=True)
    pooled.fit(noisy, seed=0)
    # Δφ of the 100-pair sample, its held-out scores, and the 20 pairs outside it
    assert shares == [(2, 200), (2, 200), (2, 40)]
    assert pooled._features["lex"].pool is None and all(proc.poll() == 0 for proc in procs)
    assert helper_peaks_kb(reset=True) > 2 * 20_000  # both workers' peaks, for the stage's figure
    alone = OfflineEnsemble(replace(config, jobs=1), device="cpu", cache_dir=str(session_cache))
    alone.fit(noisy, seed=0)
    assert len(shares) == 3  # the jobs=1 fit transformed every response itself
    for a, b in zip(alone.members, pooled.members):
        assert np.array_equal(a.weights, b.weights)
        assert np.array_equal(a.chosen, b.chosen) and np.array_equal(a.rejected, b.rejected)

    def dies(self, responses):
        shares.append("died")
        self._procs[0].kill()
        self._procs[0].wait()
        return transform(self, responses)

    monkeypatch.setattr(lex_worker.LexWorkers, "transform", dies)
    survivor = OfflineEnsemble(config, device="cpu", cache_dir=str(session_cache))
    survivor.fit(noisy, seed=0)
    assert shares[3:] == ["died"] and survivor._features["lex"].pool is None  # one try, then all in the caller
    for a, b in zip(alone.members, survivor.members):
        assert np.array_equal(a.chosen, b.chosen) and np.array_equal(a.rejected, b.rejected)


def test_parse_rm_spec_names_and_options():
    ens = parse_rm_spec("big=ensemble:k=4,folds=3,views=emb+lex,drop=0.1")
    assert ens.name == "big" and ens.config.repeats == 2 and ens.config.folds == 3 and ens.config.drop == 0.1
    assert parse_rm_spec("scores:a,b").name == "a"
    with pytest.raises(InputError, match="unknown view"):
        parse_rm_spec("ensemble:views=emb+nope")


def test_bradley_terry_fit_one_row_per_pair_is_the_stacked_fit(alpaca_noisy):
    """_fit_bt gives each pair one row (alternating signs) instead of stacking +Δ and −Δ: the same objective, so
    the same weights up to the solver's tolerance, on the lex view of real pairs, with and without zero weights."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    from prefcli.models.reward.ensemble import _Features, _fit_bt

    pairs = alpaca_noisy[0]
    chosen, rejected = pairs.column("chosen").to_pylist(), pairs.column("rejected").to_pylist()
    features = _Features("lex").fit(chosen + rejected, None)
    delta = features.transform(chosen, None, None, None) - features.transform(rejected, None, None, None)
    weights = np.ones(delta.shape[0])
    weights[::7] = 0.0  # round two's dropped pairs
    for w in (np.ones(delta.shape[0]), weights):
        stacked = LogisticRegression(C=0.5, fit_intercept=False, solver="liblinear", tol=1e-4, max_iter=200,
                                     random_state=0)
        stacked.fit(sp.vstack([delta, -delta]).tocsr(), np.r_[np.ones(len(w)), np.zeros(len(w))],
                    sample_weight=np.r_[w, w])
        ours = _fit_bt(delta, np.arange(delta.shape[0]), w, 1.0)
        assert ours.shape == stacked.coef_[0].shape and np.abs(ours).max() > 0
        assert np.corrcoef(ours, stacked.coef_[0])[0, 1] > 0.9999
        np.testing.assert_allclose(np.linalg.norm(ours), np.linalg.norm(stacked.coef_[0]), rtol=1e-2)
        margins = delta @ ours
        assert np.mean(margins > 0) > 0.5  # the weights favour the chosen side, as the labels say


# --------------------------------------------------------------------------- the ensemble at scale (max_train)

@pytest.mark.slow
def test_max_train_at_or_above_n_is_todays_fit(alpaca_noisy, session_cache, fitted):
    noisy = alpaca_noisy[0].slice(0, 120)
    today = fitted(120)
    for cap in (120, 10_000):
        capped = OfflineEnsemble(EnsembleConfig(repeats=1, folds=4, max_train=cap), device="cpu",
                                 cache_dir=str(session_cache))
        capped.fit(noisy, seed=0)
        for ma, mb in zip(today.members, capped.members):
            assert np.array_equal(ma.chosen, mb.chosen) and np.array_equal(ma.rejected, mb.rejected)
            assert np.array_equal(ma.weights, mb.weights) and np.array_equal(ma.fold, mb.fold)


@pytest.mark.slow
def test_scores_computed_a_chunk_at_a_time_are_the_whole_sample_scores(alpaca_noisy, session_cache, fitted,
                                                                        monkeypatch):
    """Δφ is built a few pairs at a time (the same fold weights, bit for bit), the folds fit on it alone, and
    each side's features are computed again a few pairs at a time to score the held-out pairs (and the pairs
    outside the sample): the same scores as one chunk, to rounding."""
    noisy = alpaca_noisy[0]
    whole = fitted(noisy.num_rows, 100)
    monkeypatch.setattr(OfflineEnsemble, "score_chunk", 7)
    chunked = OfflineEnsemble(EnsembleConfig(repeats=1, folds=4, max_train=100), device="cpu",
                              cache_dir=str(session_cache))
    chunked.fit(noisy, seed=0)
    for ma, mb in zip(whole.members, chunked.members):
        np.testing.assert_allclose(mb.chosen, ma.chosen, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mb.rejected, ma.rejected, rtol=1e-12, atol=1e-12)
        assert np.array_equal(mb.weights, ma.weights) and np.array_equal(mb.fold, ma.fold)
    assert not np.allclose(whole.members[0].chosen, whole.members[1].chosen)  # two views, two scorings


@pytest.mark.slow
def test_max_train_sample_is_seeded_and_scores_every_pair(alpaca_noisy, session_cache, fitted):
    noisy = alpaca_noisy[0]
    config = EnsembleConfig(repeats=1, folds=4, max_train=100)

    def fit(seed):
        ens = OfflineEnsemble(config, device="cpu", cache_dir=str(session_cache))
        ens.fit(noisy, seed=seed)
        return ens

    a, b, c = fitted(noisy.num_rows, 100), fit(0), fit(1)  # b: a second fit of its own, to compare with a
    inside = a.members[0].fold >= 0
    assert inside.sum() == 100 and np.array_equal(np.flatnonzero(inside), a.train_sample(noisy.num_rows, 0))
    for ma, mb in zip(a.members, b.members):
        assert np.array_equal(ma.chosen, mb.chosen) and np.array_equal(ma.rejected, mb.rejected)
        assert ma.chosen.shape == (noisy.num_rows,) and np.isfinite(ma.chosen).all()
    assert not np.array_equal(c.members[0].fold >= 0, inside)  # the seed picks the sample
    out = vote(noisy, [OfflineEnsemble(config, device="cpu", cache_dir=str(session_cache))], VoteOptions(seed=0)).out
    assert out.num_rows == noisy.num_rows
    margin = out.column("rm_ens_emb0_margin").to_numpy()  # scaled by vote: same signs, one positive factor
    raw = a.members[0].chosen - a.members[0].rejected
    np.testing.assert_allclose(margin, raw * (margin[0] / raw[0]), rtol=1e-9)
    # pairs outside the sample are scored by the fold-averaged models, as new responses would be
    rest = np.flatnonzero(~inside)
    part = noisy.take(rest)
    prompts = part.column("prompt").to_pylist()
    rewards = a._rewards(prompts, part.column("chosen").to_pylist())
    for j, m in enumerate(a.members):
        np.testing.assert_allclose(m.chosen[rest], rewards[:, j], rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_max_train_pairs_outside_the_sample_never_train_a_model(alpaca_noisy, session_cache, fitted):
    """Relabelling pairs outside the training sample changes nothing but their own (negated) margins."""
    from prefcli.stages.vote import swap_sides

    noisy = alpaca_noisy[0]
    config = EnsembleConfig(repeats=1, folds=4, max_train=100)
    a = fitted(noisy.num_rows, 100)
    outside = a.members[0].fold < 0
    mask = outside & (np.arange(noisy.num_rows) % 2 == 0)
    b = OfflineEnsemble(config, device="cpu", cache_dir=str(session_cache))
    b.fit(swap_sides(noisy, mask), seed=0)
    for ma, mb in zip(a.members, b.members):
        np.testing.assert_array_equal(mb.weights, ma.weights)
        np.testing.assert_allclose(mb.chosen[~mask], ma.chosen[~mask], atol=1e-9)
        np.testing.assert_allclose(mb.chosen[mask], ma.rejected[mask], atol=1e-9)
        np.testing.assert_allclose(mb.rejected[mask], ma.chosen[mask], atol=1e-9)


def test_max_train_option_parses_and_checks():
    assert parse_rm_spec("ensemble:max_train=2000").config.max_train == 2000
    assert parse_rm_spec("ensemble:jobs=3").config.jobs == 3 and EnsembleConfig().jobs == 0
    with pytest.raises(InputError, match="jobs must be >= 0"):
        parse_rm_spec("ensemble:jobs=-1")
    assert EnsembleConfig().max_train == 50_000
    with pytest.raises(InputError, match="max_train"):
        parse_rm_spec("ensemble:folds=5,max_train=9")
