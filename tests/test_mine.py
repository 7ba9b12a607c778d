"""`prefcli mine` on real data: OASST trees and AlpacaEval from ../shared/data."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefcli.pairs import build_pairs, user_prompt
from prefcli.schema import core_columns, with_stage_columns
from prefcli.stages.ingest import load_pairs
from prefcli.stages.mine import DEFAULT_RMS, STATUS_STATS, MineOptions, mine, score_candidates
from prefcli.stages.vote import robust_scale
from prefcli.text import normalize, render_messages

from conftest import assert_one_line_error, run_cli, run_inproc
from dedup_data import VARIANTS

OASST = "oasst-en100/en_100_tree.jsonl"
ALPACA = "alpaca-eval-annotations/annotations_compact.jsonl.gz"


class LengthRM:
    """Stand-in reward model: longer answers score higher."""

    name = model_id = "length"

    def fit(self, pairs, *, seed):
        pass

    def score(self, prompts, responses):
        return np.log1p([len(r) for r in responses])


class RelevanceRM:
    """Stand-in reward model: embedding similarity of the response to the prompt."""

    name = model_id = "relevance"

    def __init__(self, embedder):
        self.embedder = embedder

    def fit(self, pairs, *, seed):
        pass

    def score(self, prompts, responses):
        a = self.embedder.encode([render_messages(p) for p in prompts])
        return (a * self.embedder.encode(list(responses))).sum(axis=1).astype(np.float64)


def first_prompts(table: pa.Table, k: int) -> pa.Table:
    """The rows of the first k distinct prompts (keeps the tests' embedding work small)."""
    keep = list(dict.fromkeys(table.column("prompt_id").to_pylist()))[:k]
    return table.filter(pa.compute.is_in(table.column("prompt_id"), pa.array(keep, pa.large_string())))


@pytest.fixture(scope="module")
def oasst(shared_data):
    """(best-vs-worst pairs, all ranked pairs) of 40 prompts: the middle-ranked replies are unlabelled candidates."""
    path = str(shared_data / OASST)
    return first_prompts(load_pairs(path, pairing="best-worst"), 40), first_prompts(load_pairs(path, pairing="all"), 40)


@pytest.fixture(scope="module")
def alpaca(shared_data):
    """8 AlpacaEval instructions, 10 models each, judged by alpaca_eval_gpt4 against text_davinci_003."""
    rows = {}
    with gzip.open(shared_data / ALPACA, "rt") as fh:
        for line in fh:
            r = json.loads(line)
            if r["annotator"] == "alpaca_eval_gpt4" and r["preference"] in (1, 2, 1.0, 2.0):
                rows.setdefault(r["instruction"], {}).setdefault(r["generator_2"], r)
    prompts, chosen, rejected = [], [], []
    for instruction in sorted(rows)[:8]:
        for model in sorted(rows[instruction])[:10]:
            r = rows[instruction][model]
            model_won = r["preference"] == 2
            prompts.append(user_prompt(instruction))
            chosen.append(r["output_2"] if model_won else r["output_1"])
            rejected.append(r["output_1"] if model_won else r["output_2"])
    return build_pairs(prompts, chosen, rejected, source="alpaca_eval", label_source="ai")


def mined_rows(table: pa.Table) -> pa.Table:
    return table.filter(pa.compute.equal(table.column("neg_origin"), "mined"))


@pytest.mark.slow
def test_guards_hold_on_oasst(oasst, embedder):
    pairs, pool = oasst
    rms = [LengthRM(), RelevanceRM(embedder)]
    params = MineOptions(strategy="both", per_pair=2, neighbours=3, device="cpu")
    result = mine(pairs, embedder, rms, params, pool=pool)
    out = mined_rows(result.out)
    assert out.num_rows > 20, result.stats
    assert set(out.column("neg_candidate_source").to_pylist()) == {"same-prompt", "neighbor-prompt"}
    prompts = [render_messages(p) for p in out.column("prompt").to_pylist()]
    chosen, rejected = out.column("chosen").to_pylist(), out.column("rejected").to_pylist()
    p, c, r = embedder.encode(prompts), embedder.encode(chosen), embedder.encode(rejected)
    sim_rc, sim_rp, sim_cp = (r * c).sum(1), (r * p).sum(1), (c * p).sum(1)
    # TopK-PercPos and near-duplicate guards, recomputed from the embeddings
    assert (sim_rp < params.perc_pos * sim_cp + 1e-5).all()
    assert (sim_rc < params.dup_threshold).all()
    assert np.allclose(out.column("neg_sim_chosen").to_numpy(), sim_rc, atol=1e-4)
    # reward-model guard, recomputed independently: mean of per-RM margins / vote's robust scale
    in_prompts = pairs.column("prompt").to_pylist()
    margins = []
    for rm in rms:
        scale = robust_scale(rm.score(in_prompts, pairs.column("chosen").to_pylist())
                             - rm.score(in_prompts, pairs.column("rejected").to_pylist()))[0]
        margins.append((rm.score(out.column("prompt").to_pylist(), chosen)
                        - rm.score(out.column("prompt").to_pylist(), rejected)) / scale)
    margins = np.stack(margins, axis=1)
    assert np.allclose(out.column("neg_margin").to_numpy(), margins.mean(axis=1), atol=1e-4)
    assert (margins.mean(axis=1) >= params.min_margin - 1e-9).all()
    assert ((margins > 0).mean(axis=1) >= params.min_agree).all()
    # never the chosen itself, never an existing pair, never a reply humans ranked above the chosen
    assert all(normalize(a) != normalize(b) for a, b in zip(chosen, rejected))
    ranked = {(pid, normalize(a), normalize(b)) for pid, a, b in zip(
        pool.column("prompt_id").to_pylist(), pool.column("chosen").to_pylist(), pool.column("rejected").to_pylist())}
    for pid, a, b in zip(out.column("prompt_id").to_pylist(), chosen, rejected):
        assert (pid, normalize(b), normalize(a)) not in ranked
    assert not set(out.column("pair_id").to_pylist()) & set(pairs.column("pair_id").to_pylist())


@pytest.mark.slow
def test_unguarded_mining_breaks_the_guards(oasst, embedder):
    """The same run with --no-guard mines negatives the guard blocks (so the guard test can fail)."""
    pairs, pool = oasst
    rms = [LengthRM(), RelevanceRM(embedder)]
    guarded = mine(pairs, embedder, rms, MineOptions(strategy="both", neighbours=3, device="cpu"), pool=pool)
    loose = mine(pairs, embedder, rms, MineOptions(strategy="both", neighbours=3, device="cpu", guard=False), pool=pool)
    g, u = mined_rows(guarded.out), mined_rows(loose.out)
    assert u.num_rows > g.num_rows
    assert np.nanmin(u.column("neg_margin").to_numpy(zero_copy_only=False)) < 0  # RM ranks some above the chosen
    assert np.mean(u.column("neg_sim_chosen").to_numpy()) > np.mean(g.column("neg_sim_chosen").to_numpy())


def near_duplicates(text: str, rng: random.Random) -> list[str]:
    """The dedup tests' constructed variants (case, whitespace, punctuation, dropped/swapped word, prefix, typo)."""
    return [vary(text, rng) for vary in VARIANTS.values()]


@pytest.mark.slow
def test_near_duplicates_of_the_chosen_are_never_mined(alpaca, embedder):
    """Planted variants of each chosen (as an unlabelled pool) are blocked by the guard, however the RMs score them."""
    rng = random.Random(0)
    planted_prompts, planted, variants_of = [], [], {}
    for prompt, chosen in list(zip(alpaca.column("prompt").to_pylist(), alpaca.column("chosen").to_pylist()))[::3]:
        for variant in near_duplicates(chosen, rng):
            planted_prompts.append(prompt)
            planted.append(variant)
            variants_of.setdefault(chosen, set()).add(variant)
    pool = build_pairs(planted_prompts, planted, planted[1:] + planted[:1], source="planted")
    # the planted variants really are near-duplicates by the dedup definition (cosine >= 0.92 or same normalised text)
    anchors = [c for c, vs in variants_of.items() for _ in vs]
    sims = (embedder.encode(anchors) * embedder.encode([v for vs in variants_of.values() for v in vs])).sum(axis=1)
    assert (sims >= 0.92).mean() > 0.9

    def own_variants(table):
        return [r for c, r in zip(table.column("chosen").to_pylist(), table.column("rejected").to_pylist())
                if r in variants_of.get(c, ())]

    # only the near-duplicate guard is active: RM and perc-pos guards are opened wide
    params = MineOptions(per_pair=3, min_margin=0.0, min_agree=0.0, perc_pos=1.0, device="cpu")
    result = mine(alpaca, embedder, [LengthRM()], params, pool=pool)
    out = mined_rows(result.out)
    assert out.num_rows > 0
    assert own_variants(out) == []
    assert (out.column("neg_sim_chosen").to_numpy() < 0.92).all()
    assert result.stats["blocked_near_duplicate"] + result.stats["excluded_same_as_chosen"] >= 0.9 * len(planted)
    # without the guard the edited variants are the "hardest" negatives; exact (normalised) copies still stay out
    loose = mined_rows(mine(alpaca, embedder, [LengthRM()], MineOptions(per_pair=3, guard=False, device="cpu"),
                            pool=pool).out)
    assert len(own_variants(loose)) >= len(variants_of)
    assert all(normalize(c) != normalize(r) for c, r in zip(loose.column("chosen").to_pylist(),
                                                             loose.column("rejected").to_pylist()))


def test_provenance_columns_and_originals(alpaca, embedder):
    params = MineOptions(strategy="both", per_pair=2, neighbours=2, device="cpu")
    result = mine(alpaca, embedder, [LengthRM(), RelevanceRM(embedder)], params)
    out = result.out
    assert out.num_rows == alpaca.num_rows + result.stats["mined"] and result.set_aside is None
    originals = out.slice(0, alpaca.num_rows)
    assert originals.select(core_columns()).equals(alpaca)
    assert set(originals.column("neg_origin").to_pylist()) == {"original"}
    mined = mined_rows(out)
    assert mined.num_rows == result.stats["mined"] > 0
    for col in ("neg_source_pair_id", "neg_candidate_source", "neg_sim_chosen", "neg_margin", "neg_agree",
                "neg_hardness", "neg_strategy"):
        assert mined.column(col).null_count == 0, col
    assert set(mined.column("label_source").to_pylist()) == {"rm"}
    assert set(mined.column("neg_strategy").to_pylist()) == {"both/hardest"}
    by_id = {r["pair_id"]: r for r in alpaca.to_pylist()}
    for row in mined.to_pylist():
        source = by_id[row["neg_source_pair_id"]]
        assert row["prompt"] == source["prompt"] and row["chosen"] == source["chosen"]
        answered_same_prompt = any(row["rejected"] in (r["chosen"], r["rejected"])
                                   for r in alpaca.to_pylist() if r["prompt_id"] == row["prompt_id"])
        assert answered_same_prompt == (row["neg_candidate_source"] == "same-prompt")
    assert len(set(out.column("pair_id").to_pylist())) == out.num_rows


def test_score_candidates_exposes_the_pool_mine_picks_from(alpaca, embedder):
    """The candidate table: guard statuses match the features, mine's picks are the top-hardness qualified ones,
    and the hardness ranking prefers high similarity to the chosen and a small margin."""
    rms = [LengthRM(), RelevanceRM(embedder)]
    params = MineOptions(per_pair=2, device="cpu")
    cands = score_candidates(alpaca, embedder, rms, params).to_pandas()
    result = mine(alpaca, embedder, rms, params)
    status = cands["status"]
    for name, key in STATUS_STATS.items():
        assert (status == name).sum() == result.stats[key], name
    assert (status == "qualified").sum() == result.stats["qualified"] > 0
    ok = status == "qualified"
    assert (cands.sim_prompt[ok] < params.perc_pos * cands.sim_prompt_chosen[ok]).all()
    blocked = status == "perc-pos"
    assert (cands.sim_prompt[blocked] >= params.perc_pos * cands.sim_prompt_chosen[blocked]).all()
    assert (cands.sim_chosen[status == "near-duplicate"] >= params.dup_threshold).all()
    assert (cands.sim_chosen[ok] < params.dup_threshold).all()
    assert (cands.margin[ok] >= params.min_margin).all() and (cands.agree[ok] >= params.min_agree).all()
    assert (cands.margin[status == "margin"] < params.min_margin).all()
    assert cands.hardness[ok].notna().all() and cands.hardness[~ok].isna().all()
    # picks: the per_pair highest-hardness qualified candidates of each source pair, in rank order
    picks = cands[cands.pick_rank.notna()]
    assert len(picks) > 10 and (picks.status == "qualified").all()
    for pair_id, pool in cands[ok].groupby("source_pair_id"):
        top = pool.sort_values("hardness", ascending=False, kind="stable").head(params.per_pair)
        assert list(top.pick_rank) == list(range(1, len(top) + 1)), pair_id
        # no candidate that is at least as similar and has a smaller-or-equal margin ranks below another
        sim, margin, hard = (pool[c].to_numpy() for c in ("sim_chosen", "margin", "hardness"))
        dominates = (sim[:, None] >= sim[None, :]) & (margin[:, None] <= margin[None, :])
        assert (hard[:, None] >= hard[None, :] - 1e-12)[dominates].all(), pair_id
    # mine writes exactly these picks (each distinct pair once)
    mined = mined_rows(result.out)
    chosen_of = dict(zip(alpaca.column("pair_id").to_pylist(), alpaca.column("chosen").to_pylist()))
    assert set(zip(mined.column("chosen").to_pylist(), mined.column("rejected").to_pylist())) == {
        (chosen_of[p], c) for p, c in zip(picks.source_pair_id, picks.candidate)}
    # against the pool it picks from: more similar to the chosen, smaller consensus margin
    pools = cands[ok].groupby("source_pair_id")
    first = picks[picks.pick_rank == 1].set_index("source_pair_id")
    assert (first.sim_chosen - pools.sim_chosen.mean()[first.index]).mean() > 0
    assert (first.margin - pools.margin.mean()[first.index]).mean() < 0


def test_mu_2sigma_picks_lower_rewards_than_hardest(alpaca, embedder):
    rms = [LengthRM(), RelevanceRM(embedder)]
    hardest = mined_rows(mine(alpaca, embedder, rms, MineOptions(device="cpu")).out)
    sweet = mine(alpaca, embedder, rms, MineOptions(selection="mu-2sigma", device="cpu"))
    picked = mined_rows(sweet.out)
    # prompts with fewer than 4 scored responses fall back to hardest; most have enough here
    assert picked.num_rows > 0 and sweet.stats["mu2sigma_fallback"] < picked.num_rows / 2
    # the mu - 2 sigma target sits in the low tail: larger margins than the hardest choice
    assert np.mean(picked.column("neg_margin").to_numpy()) > np.mean(hardest.column("neg_margin").to_numpy())


def test_cli_replace_easy_keeps_row_accounting(alpaca, tmp_path, session_cache):
    """vote (real offline ensemble) -> mine --mode replace-easy: rows in = out, replaced originals set aside."""
    src, voted, out = tmp_path / "in.parquet", tmp_path / "voted.parquet", tmp_path / "mined.parquet"
    pq.write_table(alpaca, src)
    proc = run_inproc("vote", str(src), "-o", str(voted), "--rm", "ensemble:views=emb,repeats=1",
                      "--thresholds", "strong=0.8", "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    proc = run_inproc("mine", str(voted), "-o", str(out), "--mode", "replace-easy", "--json", "--device", "cpu",
                      "--rm", "a=ensemble:views=emb,repeats=1", "--rm", "b=ensemble:views=emb,repeats=1,drop=0")
    assert proc.returncode == 0, proc.stderr.decode()
    stats = json.loads(proc.stdout)
    table, before = pq.read_table(out), pq.read_table(voted)
    aside = pq.read_table(tmp_path / "mined.rejects.parquet")
    assert stats["replaced"] > 0 and stats["mined"] == 0
    assert table.num_rows == before.num_rows == stats["rows_out"]
    assert aside.num_rows == stats["replaced"] == stats["rows_set_aside"]
    assert set(aside.column("set_aside_reason").to_pylist()) == {"replaced-easy"}
    assert set(aside.column("pref_bucket").to_pylist()) == {"strong"}
    replaced = table.filter(pa.compute.equal(table.column("neg_origin"), "replaced"))
    old = {r["pair_id"]: r for r in aside.to_pylist()}
    assert set(replaced.column("neg_source_pair_id").to_pylist()) == set(old)
    for row in replaced.to_pylist():
        original = old[row["neg_source_pair_id"]]
        assert row["neg_replaced_rejected"] == original["rejected"] != row["rejected"]
        assert row["chosen"] == original["chosen"] and row["pref_mean"] is None  # vote columns described the old pair
    kept = table.filter(pa.compute.equal(table.column("neg_origin"), "original"))
    assert kept.num_rows + replaced.num_rows == before.num_rows
    # every original row is either still there unchanged or set aside
    assert set(kept.column("pair_id").to_pylist()) | set(old) == set(before.column("pair_id").to_pylist())


def test_cli_output_is_deterministic(alpaca, tmp_path, session_cache):
    src = tmp_path / "in.parquet"
    pq.write_table(alpaca, src)
    outputs = []
    # the second run spells the option the old way: a hidden alias that only adds a deprecation note
    for name, flag in (("a", "--neighbours"), ("b", "--neighbors")):
        path = tmp_path / f"{name}.parquet"
        proc = run_inproc("mine", str(src), "-o", str(path), "--strategy", "both", "--per-pair", "2", flag, "2",
                          "--rm", "ensemble:views=emb,repeats=1", "--seed", "7", "--device", "cpu", "-q")
        note = b"" if flag == "--neighbours" else b"prefcli: note: --neighbors is deprecated; use --neighbours\n"
        assert proc.returncode == 0 and proc.stderr == note, proc.stderr.decode()
        outputs.append(pq.read_table(path))
    assert outputs[0].equals(outputs[1])
    assert outputs[0].num_rows > alpaca.num_rows


def test_default_reward_models_are_two_voters():
    from prefcli.models.reward import parse_rm_spec

    assert [parse_rm_spec(spec).name for spec in DEFAULT_RMS] == ["emb", "lex"]


def test_cli_errors_are_one_line(alpaca, tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(with_stage_columns(alpaca, "dedup", {"dedup_cluster": pa.array(range(alpaca.num_rows))}), src)
    assert_one_line_error(run_cli("mine", str(src), "-o", str(tmp_path / "o.parquet"), "--mode", "replace-easy"),
                          "pref_bucket", "prefcli vote")
    assert_one_line_error(run_cli("mine", str(src), "-o", str(tmp_path / "o.parquet"), "--strategy", "nearby"),
                          "--strategy")
    assert not (tmp_path / "o.parquet").exists()
