"""Every ../shared/data dataset ingests with exact counts. Expected numbers are derived here from the raw
files with plain json, independently of the adapters."""

from __future__ import annotations

import ast
import gzip
import itertools
import json
from collections import Counter
from math import comb

import pytest

from ingest_helpers import ingest

ALPACA_LINES = 3000


def _last_turn(transcript: str) -> tuple[str, str]:
    history, _, last = transcript.rpartition("\n\nAssistant:")
    return history, last.strip()


def test_hh_rlhf_harmless(shared_data, tmp_path):
    path = shared_data / "hh-rlhf-harmless" / "test.jsonl.gz"
    raw = [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]
    mismatch = empty = 0
    for row in raw:
        (hc, c), (hr, r) = _last_turn(row["chosen"]), _last_turn(row["rejected"])
        if hc != hr:
            mismatch += 1
        elif not c or not r:
            empty += 1
    pairs, rejects, summary = ingest(path, "-o", tmp_path / "hh.parquet")
    assert len(raw) == 2312
    assert summary["per_source"][0]["format"] == "hh-rlhf"
    assert len(pairs) == len(raw) - mismatch - empty
    reasons = Counter(r["set_aside_reason"].split(":")[0] for r in rejects)
    assert reasons == {"history mismatch": mismatch, "empty text": empty}
    assert summary["read"] == summary["written"] + summary["set_aside"] == len(raw)
    first = pairs[0]
    assert first["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["chosen"] == _last_turn(raw[0]["chosen"])[1]
    assert first["rejected"] == _last_turn(raw[0]["rejected"])[1]
    assert first["label_source"] == "human" and first["tie"] is False
    assert {r["line"] for r in rejects} <= set(range(1, len(raw) + 1))


def test_alpaca_eval_subsample(shared_data, tmp_path):
    src = shared_data / "alpaca-eval-annotations" / "annotations_compact.jsonl.gz"
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        lines = list(itertools.islice(fh, ALPACA_LINES))
    sample = tmp_path / "alpaca.jsonl.gz"
    sample.write_bytes(gzip.compress("".join(lines).encode("utf-8")))
    expected = Counter()
    chosen_of = []
    for line in lines:
        row = json.loads(line)
        pref, a, b = row["preference"], row["output_1"], row["output_2"]
        if pref is None:
            expected["missing"] += 1
        elif not a.strip() or not b.strip():
            expected["empty"] += 1
        elif a == b:
            expected["identical"] += 1
        elif float(pref) in (0.0, 1.5):
            expected["tie"] += 1
        else:
            chosen_of.append(a if float(pref) < 1.5 else b)
    pairs, rejects, summary = ingest(sample, "-o", tmp_path / "a.parquet", "--label-source", "ai")
    assert summary["per_source"][0]["format"] == "pairwise"
    assert [p["chosen"] for p in pairs] == chosen_of
    reasons = Counter(r["set_aside_reason"] for r in rejects)
    assert reasons["missing field 'preference'"] == expected["missing"]
    assert reasons["identical chosen and rejected"] == expected["identical"]
    assert reasons["tie"] == expected["tie"]
    assert sum(v for k, v in reasons.items() if k.startswith("empty text")) == expected["empty"]
    assert summary["read"] == ALPACA_LINES == summary["written"] + summary["set_aside"]
    first = json.loads(lines[0])
    assert pairs[0]["prompt"] == [{"role": "user", "content": first["instruction"]}]
    assert pairs[0]["label_source"] == "ai"
    meta = json.loads(pairs[0]["meta"])
    assert meta["generator_1"] == first["generator_1"] and meta["annotator"] == first["annotator"]


def test_pandalm_votes(shared_data, tmp_path):
    path = shared_data / "pandalm" / "testset-v1.json"
    raw = json.loads(path.read_text())
    written, ties, empty, agreements = 0, 0, 0, []
    for row in raw:
        votes = Counter(int(row[f"annotator{i}"]) for i in (1, 2, 3))
        texts = [row["response1"], row["response2"]]
        if any(isinstance(t, str) and not t.strip() for t in texts):
            empty += 1
            continue
        top = max(votes.values())
        if list(votes.values()).count(top) > 1 or votes.most_common(1)[0][0] == 0:
            ties += 1
        else:
            written += 1
            agreements.append(top / 3)
    pairs, rejects, summary = ingest(path, "-o", tmp_path / "p.parquet")
    assert summary["per_source"][0]["format"] == "votes"
    assert len(pairs) == written and summary["per_source"][0]["reasons"] == {"empty text": empty, "tie": ties}
    assert [p["annotator_agreement"] for p in pairs] == pytest.approx(agreements)
    # record 158 (line 158) answers a true/false question with a JSON boolean: kept as the text "true"
    assert any(p["chosen"] == "true" or p["rejected"] == "true" for p in pairs)
    first = raw[0]
    assert pairs[0]["prompt"][0]["content"] == f"{first['instruction']}\n\n{first['input']}"
    assert pairs[0]["chosen"] == first["response2"]  # all three annotators said 2


def test_llmbar_all_files(shared_data, tmp_path):
    root = shared_data / "llmbar"
    files = sorted(root.rglob("dataset.json"))
    raw = {str(f.relative_to(root.parent)): json.loads(f.read_text()) for f in files}
    assert sum(len(v) for v in raw.values()) == 885
    pairs, rejects, summary = ingest(root, "-o", tmp_path / "l.parquet")
    by_source = {s["source"]: s for s in summary["per_source"]}
    assert set(by_source) == set(raw)
    for name, rows in raw.items():
        bad = sum(1 for r in rows if not r["output_1"].strip() or not r["output_2"].strip()
                  or r["output_1"] == r["output_2"])
        assert by_source[name]["written"] == len(rows) - bad, name
        assert by_source[name]["format"] == "pairwise"
    natural = raw["llmbar/LLMBar/Natural/dataset.json"][0]
    got = next(p for p in pairs if p["source"] == "llmbar/LLMBar/Natural/dataset.json")
    assert got["chosen"] == natural["output_1" if str(natural["label"]) == "1" else "output_2"]


def _ranked_groups(node, found):
    kids = [k for k in node.get("replies") or [] if not k.get("deleted")]
    ranked = [k for k in kids if k.get("rank") is not None and k.get("role") == "assistant"]
    if len(ranked) >= 2:
        found.append(ranked)
    for kid in kids:
        _ranked_groups(kid, found)
    return found


@pytest.mark.parametrize("name,root_key", [("en_100_tree.jsonl", "prompt"), ("en_100_message.jsonl", None)])
def test_oasst_en100(shared_data, tmp_path, name, root_key):
    path = shared_data / "oasst-en100" / name
    trees = [json.loads(line) for line in path.open()]
    groups = [g for t in trees for g in _ranked_groups(t[root_key] if root_key else t, [])]
    assert len(trees) == 100 and len(groups) == 212
    pairs, rejects, summary = ingest(path, "-o", tmp_path / "o.parquet")
    assert summary["per_source"][0]["format"] == "oasst"
    assert len(pairs) == sum(comb(len(g), 2) for g in groups) == 754 and not rejects
    best_worst, _, _ = ingest(path, "-o", tmp_path / "bw.parquet", "--pairing", "best-worst")
    assert len(best_worst) == 212
    root = trees[0][root_key] if root_key else trees[0]
    ranked = sorted(root["replies"], key=lambda m: m["rank"])
    first = best_worst[0]
    assert first["prompt"] == [{"role": "user", "content": root["text"]}]
    assert (first["chosen"], first["rejected"]) == (ranked[0]["text"], ranked[-1]["text"])
    assert first["chosen_score"] == -ranked[0]["rank"]


def test_oasst2_openpaws(shared_data, tmp_path):
    path = shared_data / "oasst2-openpaws" / "oasst2_filtered.jsonl"
    trees = [json.loads(line) for line in path.open()]
    per_tree = [_ranked_groups(t["prompt"], []) for t in trees]
    expected_pairs = sum(comb(len(g), 2) for groups in per_tree for g in groups)
    no_groups = sum(1 for groups in per_tree if not groups)
    pairs, rejects, summary = ingest(path, "-o", tmp_path / "o2.parquet")
    assert len(pairs) == expected_pairs == 512
    assert Counter(r["set_aside_reason"] for r in rejects) == {"no ranked assistant replies": no_groups}
    assert summary["records"] == 551
    langs = Counter(json.loads(p["meta"])["chosen_info"].get("lang") for p in pairs)
    assert len(langs) > 3  # multilingual trees are kept as they are
    assert all(p["prompt"][-1]["role"] == "user" for p in pairs)


def test_unieval_long_multi_response(shared_data, tmp_path):
    path = shared_data / "unieval-topicalchat" / "topical_chat.json"
    raw = json.loads(path.read_text())
    groups: dict[str, list[float]] = {}
    for row in raw:
        scores = ast.literal_eval(row["scores"]) if isinstance(row["scores"], str) else row["scores"]
        groups.setdefault(row["source"], []).append(scores["overall"])
    assert len(groups) == 60 and all(len(s) == 6 for s in groups.values())
    ties = sum(1 for s in groups.values() for a, b in itertools.combinations(s, 2) if a == b)
    small = sum(1 for s in groups.values() for a, b in itertools.combinations(s, 2) if 0 < abs(a - b) < 1)
    pairs, rejects, summary = ingest(path, "-o", tmp_path / "u.parquet")
    assert summary["per_source"][0]["format"] == "multi-response"
    assert summary["read"] == 60 * 15 and len(pairs) == 900 - ties
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    margin, margin_rejects, _ = ingest(path, "-o", tmp_path / "m.parquet", "--min-margin", "1")
    assert len(margin) == 900 - ties - small
    assert Counter(r["set_aside_reason"].split(":")[0] for r in margin_rejects) == {"tie": ties,
                                                                                   "below min-margin": small}
    kept_ties, _, _ = ingest(path, "-o", tmp_path / "t.parquet", "--keep-ties")
    assert sum(p["tie"] for p in kept_ties) == ties and len(kept_ties) == 900
    source = raw[0]["source"]
    scores = groups[source]
    best = next(p for p in pairs if p["prompt"][0]["content"] == source)
    assert best["chosen_score"] == max(scores)
