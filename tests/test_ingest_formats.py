"""Each adapter, --map, labels, pairing, ties and sources (stdin, save_to_disk) on small synthetic inputs."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE_DATA, run_cli
from ingest_helpers import cli, ingest
from prefcli.formats.base import FIRST, SECOND, IngestOptions, Reject, parse_label
from prefcli.formats.detect import detect_format
from prefcli.formats.paths import get_path
from prefcli.schema import validate
from prefcli.stages.ingest import load_pairs, load_prompts


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("value,scheme,expected", [
    (1, "index", FIRST), ("2", "index", SECOND), ("A", "index", FIRST), ("b", "index", SECOND),
    ("left", "index", FIRST), ("right", "index", SECOND), ("model_b", "index", SECOND), ("tie", "index", 0),
    (1.5, "index", 0), (0, "index", 0), (1.00000024, "index", FIRST), (1.9, "index", SECOND),
    (-2, "signed", FIRST), (3, "signed", SECOND), (0, "signed", 0), ("-1", "signed", FIRST),
])
def test_parse_label(value, scheme, expected):
    assert parse_label(value, scheme) == expected


@pytest.mark.parametrize("bad", ["maybe", 7, None, [1]])
def test_parse_label_rejects(bad):
    with pytest.raises(Reject):
        parse_label(bad, "index")


def test_paths_nested_indices_and_encoded_strings():
    record = {"a": {"b": [{"c": 1}, {"c": 2}]}, "enc": json.dumps({"x": [5, 6]}), "py": "{'k': 3.5}",
              "dotted.key": {"v": "ok"}}
    assert get_path(record, "a.b.1.c") == 2
    assert get_path(record, "a.b[-1].c") == 2
    assert get_path(record, "enc.x[0]") == 5
    assert get_path(record, "py.k") == 3.5
    assert get_path(record, "dotted.key.v") == "ok"


def test_sample_data_every_format(tmp_path):
    files = ["hh_rlhf.jsonl.gz", "trl_standard.jsonl", "trl_conversational.jsonl", "pairwise.csv",
             "pairwise_signed.json", "votes.json", "multi_response.jsonl", "oasst_trees.jsonl"]
    pairs, rejects, summary = ingest(*[SAMPLE_DATA / f for f in files], "-o", tmp_path / "s.parquet")
    formats = {s["source"]: s["format"] for s in summary["per_source"]}
    assert formats == {"hh_rlhf.jsonl.gz": "hh-rlhf", "trl_standard.jsonl": "trl", "trl_conversational.jsonl": "trl",
                       "pairwise.csv": "pairwise", "pairwise_signed.json": "pairwise", "votes.json": "votes",
                       "multi_response.jsonl": "multi-response", "oasst_trees.jsonl": "oasst"}
    for s in summary["per_source"]:
        assert s["read"] == s["written"] + s["set_aside"]
    reasons = Counter(r["set_aside_reason"].split(":")[0] for r in rejects)
    # the planted bad rows (see sample_data/build.py)
    for reason in ("unparseable transcript", "history mismatch", "empty text", "identical chosen and rejected",
                   "missing field 'chosen'", "bad label", "tie", "fewer than 2 scored responses",
                   "no ranked assistant replies"):
        assert reasons[reason] >= 1, reason
    ids = Counter(p["pair_id"] for p in pairs)
    assert max(ids.values()) >= 2  # exact duplicates are kept for dedup to find
    validate(pq.read_table(tmp_path / "s.parquet"))


def test_signed_strength_and_csv_labels():
    rows = load_pairs(str(SAMPLE_DATA / "pairwise_signed.json")).to_pylist()
    raw = json.loads((SAMPLE_DATA / "pairwise_signed.json").read_text())
    kept = [r for r in raw if r["overall_preference"] != 0]
    assert [p["chosen"] for p in rows] == [r["response_1"] if r["overall_preference"] < 0 else r["response_2"]
                                           for r in kept]


def test_map_nested_and_label(tmp_path):
    rows = [{"conv": json.dumps([{"from": "human", "value": "Hi there, what is 2+2?"}]),
             "answers": [{"text": "It is 4."}, {"text": "It is 5."}], "winner": "B"},
            {"conv": json.dumps([{"from": "human", "value": "Name a colour."}]),
             "answers": [{"text": "Blue."}, {"text": "Seven."}], "winner": "A"}]
    src = write_jsonl(tmp_path / "custom.jsonl", rows)
    pairs, _, summary = ingest(src, "-o", tmp_path / "o.parquet",
                               "--map", "prompt=conv,first=answers[0].text,second=answers.1.text,label=winner")
    assert summary["per_source"][0]["format"] == "pairwise"
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("It is 5.", "It is 4."), ("Blue.", "Seven.")]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "Hi there, what is 2+2?"}]


def test_map_sample_nested_file(tmp_path):
    pairs, rejects, _ = ingest(SAMPLE_DATA / "nested_custom.json", "-o", tmp_path / "n.parquet", "--map",
                               "prompt=conversation_input,chosen=chosen.answer,rejected=reject.answer")
    raw = json.loads((SAMPLE_DATA / "nested_custom.json").read_text())["data"]
    assert len(pairs) == len(raw) - 1 and rejects[0]["set_aside_reason"] == "missing field 'reject.answer'"
    assert pairs[0]["chosen"] == raw[0]["chosen"]["answer"]
    assert json.loads(pairs[0]["meta"])["id"] == raw[0]["id"]


def test_map_multi_response_with_python_literal_scores(tmp_path):
    rows = [{"q": "Pick a fruit.", "a": "Apple.", "s": "{'overall': 4.0, 'style': 1}"},
            {"q": "Pick a fruit.", "a": "Rock.", "s": "{'overall': 1.0, 'style': 5}"},
            {"q": "Pick a fruit.", "a": "Pear.", "s": "{'overall': 4.0, 'style': 2}"}]
    src = write_jsonl(tmp_path / "long.jsonl", rows)
    pairs, rejects, summary = ingest(src, "-o", tmp_path / "o.parquet", "--map", "prompt=q,response=a,score=s")
    assert summary["per_source"][0]["format"] == "multi-response"
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == [("Apple.", "Rock."), ("Pear.", "Rock.")]
    assert [r["set_aside_reason"] for r in rejects] == ["tie"]
    style, _, _ = ingest(src, "-o", tmp_path / "s.parquet", "--map", "prompt=q,response=a,score=s.style")
    assert [(p["chosen"], p["rejected"]) for p in style if p["chosen"] == "Rock."] == [("Rock.", "Pear."),
                                                                                         ("Rock.", "Apple.")]


@pytest.mark.parametrize("pairing,expected", [("best-worst", 12 + 1), ("best-all", None), ("all", None)])
def test_multi_response_pairing(tmp_path, pairing, expected):
    raw = [json.loads(line) for line in (SAMPLE_DATA / "multi_response.jsonl").open()]
    usable = [r for r in raw if len(r["completions"]) >= 2]
    sizes = [len(r["completions"]) for r in usable]
    candidates = {"best-worst": len(usable), "best-all": sum(n - 1 for n in sizes),
                  "all": sum(n * (n - 1) // 2 for n in sizes)}[pairing]
    _, _, summary = ingest(SAMPLE_DATA / "multi_response.jsonl", "-o", tmp_path / "m.parquet", "--pairing", pairing)
    assert summary["read"] == candidates + (len(raw) - len(usable))
    if expected is not None:
        assert candidates == expected


def test_trl_implicit_and_conversational(tmp_path):
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    rows = [{"chosen": history + [{"role": "assistant", "content": "Paris."}],
             "rejected": history + [{"role": "assistant", "content": "Lyon."}]},
            {"chosen": history + [{"role": "assistant", "content": "Paris."}],
             "rejected": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "Lyon."}]}]
    pairs, rejects, _ = ingest(write_jsonl(tmp_path / "t.jsonl", rows), "-o", tmp_path / "o.parquet")
    assert pairs[0]["prompt"] == history and pairs[0]["chosen"] == "Paris."
    assert rejects[0]["set_aside_reason"].startswith("history mismatch")


def test_flat_oasst_messages(tmp_path):
    rows = [{"message_id": "r", "parent_id": None, "text": "Hello?", "role": "prompter", "rank": None},
            {"message_id": "a", "parent_id": "r", "text": "Hi! How can I help?", "role": "assistant", "rank": 0},
            {"message_id": "b", "parent_id": "r", "text": "What.", "role": "assistant", "rank": 1},
            {"message_id": "c", "parent_id": "r", "text": "Deleted one", "role": "assistant", "rank": 2,
             "deleted": True}]
    pairs, _, summary = ingest(write_jsonl(tmp_path / "flat.jsonl", rows), "-o", tmp_path / "o.parquet")
    assert summary["per_source"][0]["format"] == "oasst"
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("Hi! How can I help?", "What.")]


def test_keep_ties_writes_flag(tmp_path):
    pairs, rejects, _ = ingest(SAMPLE_DATA / "votes.json", "-o", tmp_path / "v.parquet", "--keep-ties")
    raw = json.loads((SAMPLE_DATA / "votes.json").read_text())
    assert len(pairs) == len(raw) and not rejects
    ties = [p for p in pairs if p["tie"]]
    assert len(ties) == 2 and all(p["annotator_agreement"] <= 2 / 3 for p in ties)


def test_detection_failure_names_candidates_and_columns(tmp_path):
    src = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": "x"}])
    result = cli("ingest", src, "-o", tmp_path / "o.parquet")
    assert result.exit_code == 2
    assert "columns seen: foo, bar" in result.stderr and "pairwise" in result.stderr and "--map" in result.stderr
    with pytest.raises(Exception, match="cannot detect"):
        detect_format([{"foo": 1}], "x.jsonl")


def test_stdin_to_stdout_pipe(tmp_path):
    data = (SAMPLE_DATA / "trl_standard.jsonl").read_bytes()
    proc = run_cli("ingest", "-", "-o", "-", "--rejects", str(tmp_path / "r.parquet"), "--quiet", input=data)
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(pa.BufferReader(proc.stdout))
    file_pairs, _, _ = ingest(SAMPLE_DATA / "trl_standard.jsonl", "-o", tmp_path / "f.parquet")
    assert table.column("pair_id").to_pylist() == [p["pair_id"] for p in file_pairs]
    assert set(table.column("source").to_pylist()) == {"stdin"}
    stats = run_cli("stats", "-", "--json", input=proc.stdout)
    assert json.loads(stats.stdout)["rows"] == table.num_rows


def test_hf_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"prompt": ["Say hi.", "Count to two."], "chosen": ["Hi!", "One, two."],
                                     "rejected": ["Bye.", "Three."]})
    ds.save_to_disk(str(tmp_path / "saved"))
    pairs, _, summary = ingest(tmp_path / "saved", "-o", tmp_path / "o.parquet")
    assert [p["chosen"] for p in pairs] == ["Hi!", "One, two."] and summary["per_source"][0]["format"] == "trl"


def test_load_pairs_and_prompts(tmp_path):
    table = load_pairs([str(SAMPLE_DATA / "votes.json")], keep_ties=True)
    assert table.num_rows == len(json.loads((SAMPLE_DATA / "votes.json").read_text()))
    prompts = load_prompts([str(SAMPLE_DATA / "eval_prompts.txt")])
    assert prompts[0] == [{"role": "user", "content": "How do I reverse a list in Python?"}]
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "Why is the sky blue?"}])
    assert load_prompts(str(questions)) == [[{"role": "user", "content": "Why is the sky blue?"}]]
    gz = tmp_path / "hh.jsonl.gz"
    gz.write_bytes((SAMPLE_DATA / "hh_rlhf.jsonl.gz").read_bytes())
    assert len(load_prompts(str(gz))) == load_pairs(str(gz)).num_rows


def test_options_validated():
    with pytest.raises(Exception, match="--min-margin"):
        IngestOptions(min_margin=-1)
    with pytest.raises(Exception, match="--label-source"):
        IngestOptions(label_source="robot")


def test_gzip_jsonl_roundtrip_counts(tmp_path):
    rows = [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}."}
            for i in range(10_000)]
    src = tmp_path / "many.jsonl.gz"
    src.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    pairs, _, summary = ingest(src, "-o", tmp_path / "o.parquet")  # several raw batches
    assert summary["written"] == 10_000 and pairs[-1]["chosen"] == "Good answer 9999."


def test_map_whole_conversations_as_responses(tmp_path):
    """Chatbot-Arena-like rows: each side is a whole conversation; the shared history becomes the prompt."""
    def conv(answer):
        return [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": answer}]

    rows = [{"conversation_a": conv("Dog."), "conversation_b": conv("Blue."), "winner": "model_b"},
            {"conversation_a": conv("Red."), "conversation_b": conv("Green."), "winner": "tie (bothbad)"}]
    pairs, rejects, _ = ingest(write_jsonl(tmp_path / "arena.jsonl", rows), "-o", tmp_path / "o.parquet",
                               "--map", "first=conversation_a,second=conversation_b,label=winner")
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ([{"role": "user", "content": "Name a colour."}], "Blue.", "Dog.")]
    assert [r["set_aside_reason"] for r in rejects] == ["tie"]
