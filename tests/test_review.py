"""Review loop on real PandaLM pairs: select -> export -> simulated annotators -> import, per tool."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import assert_one_line_error, run_cli, run_inproc
from prefcli import io
from prefcli.errors import InputError
from prefcli.outputs import write_files_into
from prefcli.stages import review
from prefcli.text import texts_for
from review_data import majority_prefers_chosen, pandalm_pairs, pandalm_records, simulated_choice

BUDGET = 60


@pytest.fixture(scope="module")
def pairs(shared_data):
    return pandalm_pairs(pandalm_records(shared_data), n=240, flip_share=0.3, seed=1)


@pytest.fixture(scope="module")
def queue(pairs, embedder):
    table, _ = pairs
    return review.select_for_review(table, BUDGET, embedder=embedder, seed=3).out


@pytest.fixture(scope="module")
def files(pairs, queue, tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    io.write_table(pairs[0], root / "in.parquet")
    io.write_table(queue, root / "queue.parquet")
    return root


def _tasks(queue):
    return {t.task_id: t for t in review.tasks_from_queue(queue)}


def _truth_for_task(queue, truth):
    return dict(zip(queue.column("review_task_id").to_pylist(), (truth[p] for p in queue.column("pair_id").to_pylist())))


def _check_import(files, out_name, pairs, queue, skip=()):
    """Every reviewed pair now carries the annotators' majority; nothing else changed; rows accounted for."""
    table, truth = pairs
    out = io.read_pairs(files / out_name)
    aside = io.read_table(files / out_name.replace(".parquet", ".rejects.parquet"))
    assert out.num_rows + aside.num_rows == table.num_rows
    reviewed = dict(zip(queue.column("pair_id").to_pylist(), queue.column("chosen").to_pylist()))
    rows_out = {p: i for i, p in enumerate(out.column("pair_id").to_pylist())}
    aside_ids = set(aside.column("pair_id").to_pylist())
    verdicts = {"keep": 0, "flip": 0, "tie": 0}
    for pair_id, chosen in reviewed.items():
        if pair_id in skip:
            continue
        expected = majority_prefers_chosen(truth[pair_id], chosen)
        if math.isnan(expected):
            assert pair_id in aside_ids
            verdicts["tie"] += 1
            continue
        row = rows_out[pair_id]
        majority_text = chosen if expected == 1.0 else next(
            t for t in (truth[pair_id]["r1"], truth[pair_id]["r2"]) if t != chosen)
        assert out.column("chosen")[row].as_py() == majority_text
        assert out.column("label_source")[row].as_py() == "human"
        assert out.column("review_prev_label_source")[row].as_py() == "ai"
        verdict = out.column("review_verdict")[row].as_py()
        assert verdict == ("keep" if expected == 1.0 else "flip")
        assert out.column("review_flipped")[row].as_py() == (verdict == "flip")
        verdicts[verdict] += 1
    assert min(verdicts.values()) > 0, verdicts  # the sample exercises keep, flip and tie
    reasons = set(aside.column("set_aside_reason").to_pylist())
    assert reasons <= set(review.SET_ASIDE_REASONS.values()) and reasons
    untouched = [p for p in table.column("pair_id").to_pylist() if p not in reviewed]
    index_in = {p: i for i, p in enumerate(table.column("pair_id").to_pylist())}
    for pair_id in untouched[:50]:
        row = rows_out[pair_id]
        assert out.column("chosen")[row].as_py() == table.column("chosen")[index_in[pair_id]].as_py()
        assert out.column("label_source")[row].as_py() == "ai"
        assert out.column("review_verdict")[row].as_py() is None
    return out


def test_select_priorities_sides_and_determinism(pairs, queue, embedder):
    table, _ = pairs
    reasons = queue.column("review_reason").to_pylist()
    assert queue.num_rows == BUDGET
    assert reasons.count("audit") == round(BUDGET * 0.1)
    buckets = dict(zip(table.column("pair_id").to_pylist(), table.column("pref_bucket").to_pylist()))
    stds = dict(zip(table.column("pair_id").to_pylist(), table.column("pref_std").to_pylist()))
    std_cut = np.quantile(list(stds.values()), 0.9)
    # Each tier picks from its own bucket; the tiers take turns after the audit slice.
    for pair_id, reason in zip(queue.column("pair_id").to_pylist(), reasons):
        if reason in ("incorrect", "ambiguous"):
            assert buckets[pair_id] == reason
        elif reason == "high-std":
            assert stds[pair_id] >= std_cut - 1e-12
    assert reasons[6:9] == ["incorrect", "ambiguous", "high-std"]
    n_incorrect = sum(b == "incorrect" for b in buckets.values())
    assert reasons.count("incorrect") >= min(n_incorrect, (BUDGET - 6) // 3)
    # The most confidently wrong pairs (lowest pref_mean) are reviewed first within their tier.
    means = dict(zip(table.column("pair_id").to_pylist(), table.column("pref_mean").to_pylist()))
    lowest = min((p for p, b in buckets.items() if b == "incorrect"), key=means.get)
    assert lowest in queue.column("pair_id").to_pylist()
    # Randomised sides, unique tasks.
    sides = np.asarray(queue.column("review_left_is_chosen").to_pylist())
    assert 0.25 < sides.mean() < 0.75
    assert len(set(queue.column("review_task_id").to_pylist())) == BUDGET
    again = review.select_for_review(table, BUDGET, embedder=embedder, seed=3).out
    assert again.column("review_task_id").to_pylist() == queue.column("review_task_id").to_pylist()
    other = review.select_for_review(table, BUDGET, embedder=embedder, seed=4).out
    assert other.column("review_task_id").to_pylist() != queue.column("review_task_id").to_pylist()


def test_select_round_robins_over_topic_groups(pairs, embedder):
    table, _ = pairs
    small = review.select_for_review(table, 12, embedder=embedder, audit_share=0.0, seed=3)
    assert small.stats["n_groups"] >= 8
    picks = list(zip(small.out.column("review_reason").to_pylist(), small.out.column("review_group").to_pylist()))
    for reason in ("incorrect", "ambiguous"):
        groups = [g for r, g in picks if r == reason]
        assert len(groups) >= 3 and len(set(groups)) == len(groups), (reason, groups)


def test_label_studio_round_trip(pairs, queue, files):
    proc = run_cli("review", "export", str(files / "queue.parquet"), "--to", "label-studio", "-o", str(files / "ls"))
    assert proc.returncode == 0, proc.stderr.decode()
    config = (files / "ls" / "config.xml").read_text()
    assert "<Pairwise" in config and 'toName="left,right"' in config and "<TextArea" in config
    tasks = json.loads((files / "ls" / "tasks.json").read_text())
    assert len(tasks) == BUDGET and set(tasks[0]) == {"data"}
    assert "chosen" not in json.dumps(tasks[0])  # the mapping never leaves the queue
    truth = _truth_for_task(queue, pairs[1])
    exported = []
    for number, task in enumerate(tasks, start=1):
        row = truth[task["data"]["task_id"]]
        annotations = [{"completed_by": 99, "was_cancelled": True, "result": []}]
        for k in range(3):
            click = simulated_choice(row, k, task["data"]["left"])
            result = ([{"from_name": "judgement", "to_name": "prompt", "type": "choices", "value": {"choices": ["tie"]}}]
                      if click == "tie" else
                      [{"from_name": "preference", "to_name": ["left", "right"], "type": "pairwise",
                        "value": {"selected": click}}])
            result.append({"from_name": "justification", "type": "textarea", "value": {"text": [f"reason {k}"]}})
            annotations.append({"id": number * 10 + k, "completed_by": {"id": k, "email": f"a{k}@lab"},
                                "was_cancelled": False, "result": result})
        exported.append({"id": number, "data": task["data"], "annotations": annotations, "predictions": []})
    (files / "ls_export.json").write_text(json.dumps(exported))
    proc = run_inproc("review", "import", str(files / "ls_export.json"), "--into", str(files / "in.parquet"),
                      "--queue", str(files / "queue.parquet"), "-o", str(files / "ls_out.parquet"), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    stats = json.loads(proc.stdout)
    assert stats["tasks_reviewed"] == BUDGET and stats["flip"] > 0
    out = _check_import(files, "ls_out.parquet", pairs, queue)
    notes = [n for n in out.column("review_justification").to_pylist() if n]
    assert notes and "a0@lab: reason 0" in notes[0]
    agreement = [a for a in out.column("review_agreement").to_pylist() if a is not None]
    assert set(agreement) <= {1 / 3, 2 / 3, 1.0} and min(agreement) < 1.0


def test_argilla_round_trip(pairs, queue, files):
    tasks = review.tasks_from_queue(queue)
    layout = review.argilla_dataset(tasks)
    settings = layout[".argilla/settings.json"]
    assert [q["settings"]["type"] for q in settings["questions"]] == ["label_selection", "text"]
    records = layout["records.json"]
    suggested = [r["suggestions"]["preference"] for r in records]
    assert all(s["value"] in ("left", "right") and 0.5 <= s["score"] <= 1 and s["agent"] for s in suggested)
    # The suggestion points at the side the vote prefers: the chosen side when pref_mean > 0.
    sides = dict(zip(queue.column("review_task_id").to_pylist(), queue.column("review_left_is_chosen").to_pylist()))
    means = dict(zip(queue.column("review_task_id").to_pylist(), queue.column("pref_mean").to_pylist()))
    for record in records:
        chosen_side = "left" if sides[record["id"]] else "right"
        assert (record["suggestions"]["preference"]["value"] == chosen_side) == (means[record["id"]] >= 0)
    truth = _truth_for_task(queue, pairs[1])
    for record in records:
        row = truth[record["id"]]
        record["responses"] = {
            "preference": [{"value": simulated_choice(row, k, record["fields"]["left"]), "user_id": f"user-{k}",
                            "status": "submitted"} for k in range(3)]
            + [{"value": "right", "user_id": "user-draft", "status": "draft"}],
            "justification": [{"value": "looked fine", "user_id": "user-0"}],
        }
    layout["records.json"] = records
    write_files_into(files / "argilla", layout)
    proc = run_inproc("review", "import", str(files / "argilla"), "--into", str(files / "in.parquet"),
                      "--queue", str(files / "queue.parquet"), "-o", str(files / "arg_out.parquet"), "--quiet")
    assert proc.returncode == 0 and not proc.stderr, proc.stderr.decode()
    out = _check_import(files, "arg_out.parquet", pairs, queue)
    assert max(a for a in out.column("review_annotators").to_pylist() if a is not None) == 3  # draft ignored


def test_csv_round_trip_with_one_file_per_annotator(pairs, queue, files):
    (files / "csv").mkdir(exist_ok=True)
    io.write_text(review.csv_text(review.csv_tasks(review.tasks_from_queue(queue)), review.CSV_COLUMNS),
                  files / "csv" / "tasks.csv")
    truth = _truth_for_task(queue, pairs[1])
    words = {"left": "A", "right": "B", "tie": "Tie"}
    paths = []
    for k in range(3):
        with open(files / "csv" / "tasks.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows[:-1] if k == 2 else rows:  # annotator 2 leaves the last row blank
            row["verdict"] = words[simulated_choice(truth[row["task_id"]], k, row["left"])]
            row["annotator"] = f"reviewer{k}"
        path = files / "csv" / f"reviewer{k}.csv"
        io.write_text(review.csv_text(rows, review.CSV_COLUMNS), path)
        paths.append(str(path))
    proc = run_inproc("review", "import", *paths, "--into", str(files / "in.parquet"),
                      "--queue", str(files / "queue.parquet"), "-o", str(files / "csv_out.parquet"), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["tasks_reviewed"] == BUDGET
    last_task = queue.column("review_task_id")[BUDGET - 1].as_py()
    _check_import(files, "csv_out.parquet", pairs, queue, skip={queue.column("pair_id")[BUDGET - 1].as_py()})
    out = io.read_table(files / "csv_out.parquet")
    aside = io.read_table(files / "csv_out.rejects.parquet")
    both = pa.concat_tables([out.select(["review_task_id", "review_annotators"]),
                             aside.select(["review_task_id", "review_annotators"])])
    counts = dict(zip(both.column("review_task_id").to_pylist(), both.column("review_annotators").to_pylist()))
    assert counts[last_task] == 2
    tasks = _tasks(queue)
    first = tasks[queue.column("review_task_id")[0].as_py()]
    assert first.left and first.right and first.prompt


def test_bad_verdict_files_fail_with_one_line_and_write_nothing(pairs, queue, files):
    task = queue.column("review_task_id")[0].as_py()
    (files / "bad").mkdir(exist_ok=True)
    dup = [{"task_id": task, "verdict": "left", "annotator": "x"}]
    io.write_text(review.csv_text(dup, review.CSV_COLUMNS), files / "bad" / "one.csv")
    io.write_text(review.csv_text(dup, review.CSV_COLUMNS), files / "bad" / "two.csv")
    out = files / "bad" / "out.parquet"
    common = ["--into", str(files / "in.parquet"), "--queue", str(files / "queue.parquet"), "-o", str(out)]
    proc = run_inproc("review", "import", str(files / "bad" / "one.csv"), str(files / "bad" / "two.csv"), *common)
    assert_one_line_error(proc, "two.csv", "duplicate verdict", task)
    (files / "bad" / "broken.json").write_text('[{"data": {"task_id": "x"}, "annotations": [')
    proc = run_inproc("review", "import", str(files / "bad" / "broken.json"), *common)
    assert_one_line_error(proc, "broken.json", "malformed JSON")
    assert not out.exists() and not (files / "bad" / "out.rejects.parquet").exists()


def test_parse_errors_name_the_record(queue):
    with pytest.raises(InputError, match="record 1 annotation 1: unknown task id 'nope'"):
        review.aggregate(review.parse_verdicts(
            [{"data": {"task_id": "nope"}, "annotations": [{"completed_by": 1, "result": [
                {"type": "pairwise", "value": {"selected": "left"}}]}]}], "ls.json"), queue)
    with pytest.raises(InputError, match="line 2: verdict 'maybe' is not one of"):
        review.parse_verdicts([{"task_id": "t", "verdict": "maybe"}], "r.csv", lines=[2])
    with pytest.raises(InputError, match="record 1 annotation 1: no pairwise selection"):
        review.parse_verdicts([{"data": {"task_id": "t"}, "annotations": [{"completed_by": 1, "result": []}]}], "x")
    with pytest.raises(InputError, match="not a Label Studio export, Argilla records or review CSV"):
        review.parse_verdicts([{"foo": 1}], "x.json")


def test_reimport_and_gold_retrieval(pairs, queue, files, embedder):
    table, truth = pairs
    reviewed = io.read_pairs(files / "ls_out.parquet")
    # The same verdicts again would flip twice: refused, nothing applied.
    done = reviewed.filter(pc.is_valid(reviewed.column("review_task_id")))
    outcomes = [review.TaskOutcome(done.column("pair_id")[0].as_py(), done.column("review_task_id")[0].as_py(),
                                   "keep", 1.0, 1, "{}", "", False)]
    with pytest.raises(InputError, match="already applied"):
        review.apply_verdicts(reviewed, outcomes)
    # A later round never re-queues pairs humans already judged.
    later = review.select_for_review(reviewed, 40, groups="none", seed=3)
    assert later.stats["eligible"] == reviewed.num_rows - done.num_rows
    assert set(later.out.column("review_verdict").to_pylist()) == {None}
    # Error-driven retrieval: unreviewed neighbours of the pairs the AI got wrong.
    errors = review.gold_errors(reviewed)
    assert len(errors) > 0
    result = review.select_for_review(table, 30, embedder=embedder, gold=reviewed, audit_share=0.0,
                                      min_similarity=0.4, seed=3)
    near = result.out.filter(pc.equal(result.out.column("review_reason"), "near-error"))
    assert near.num_rows > 0 and result.stats["gold_errors"] == len(errors)
    gold_ids = set(reviewed.column("pair_id").to_pylist())
    assert not gold_ids & set(near.column("pair_id").to_pylist())
    similarity = embedder.encode(texts_for(near, "prompt")) @ embedder.encode(
        texts_for(reviewed.take(pa.array(errors)), "prompt")).T
    assert (similarity.max(axis=1) >= 0.4 - 1e-5).all()


def test_select_past_one_batch_reads_only_the_columns_it_needs(files, session_cache, monkeypatch):
    """Past one stream batch the local engine hands `review select` only vote's columns, pair_id, verdicts,
    clusters and the embedded text; the queue's other columns come back from the input: the same queue file as
    a whole-table read. A missing vote column is still a one-line error naming the file."""
    import pyarrow.parquet as pq

    from prefcli.engines import project, stream

    args = ["review", "select", files / "in.parquet", "--budget", "25", "--model", "minilm", "--seed", "3",
            "--cache-dir", session_cache]
    whole = run_inproc(*args, "-o", files / "queue-whole.parquet")
    assert whole.returncode == 0, whole.stderr.decode()
    seen = []
    real = project.run_projected
    monkeypatch.setattr(stream, "STREAM_BATCH_ROWS", 16)
    monkeypatch.setattr(project, "run_projected", lambda st, source, ctx: seen.append(source.table.column_names)
                        or real(st, source, ctx))
    projected = run_inproc(*args, "-o", files / "queue-projected.parquet")
    assert projected.returncode == 0, projected.stderr.decode()
    assert len(seen) == 1 and {"pair_id", "prompt", "pref_mean", "pref_bucket"} <= set(seen[0])
    assert not {"chosen", "rejected", "meta", "source"} & set(seen[0])
    assert (files / "queue-projected.parquet").read_bytes() == (files / "queue-whole.parquet").read_bytes()
    assert pq.read_table(files / "queue-projected.parquet").num_rows == 25

    pq.write_table(pq.read_table(files / "in.parquet").drop_columns(["pref_mean"]), files / "no-vote.parquet")
    proc = run_inproc("review", "select", files / "no-vote.parquet", "-o", files / "q.parquet", "--budget", "5")
    assert_one_line_error(proc, "no-vote.parquet", "pref_mean", "prefcli vote")
    assert not (files / "q.parquet").exists()


# --------------------------------------------------------------------------- later rounds, real export shapes

def _ls_annotation(task_number: int, k: int, click: str, *, cancelled: bool = False) -> dict:
    """One annotation as Label Studio 1.x's JSON export writes it (completed_by is the user's integer id)."""
    if cancelled:  # "Skip" in the labeling UI
        result = []
    elif click == "tie":
        result = [{"id": f"j{task_number}{k}", "from_name": "judgement", "to_name": "prompt", "type": "choices",
                   "origin": "manual", "value": {"choices": ["tie"]}}]
    else:
        result = [{"id": f"p{task_number}{k}", "from_name": "preference", "to_name": "left", "type": "pairwise",
                   "origin": "manual", "value": {"selected": click}}]
    return {"id": task_number * 10 + k, "completed_by": k + 1, "result": result, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": "2026-11-30T10:00:00Z", "updated_at": "2026-11-30T10:00:00Z",
            "draft_created_at": None, "lead_time": 8.5, "prediction": {}, "result_count": len(result),
            "unique_id": f"u{task_number}{k}", "import_id": None, "last_action": None, "bulk_created": False,
            "task": task_number, "project": 1, "updated_by": k + 1, "parent_prediction": None,
            "parent_annotation": None, "last_created_by": None}


def _ls_task(number: int, data: dict, annotations: list[dict]) -> dict:
    return {"id": number, "annotations": annotations, "file_upload": "tasks.json", "drafts": [], "predictions": [],
            "data": data, "meta": {}, "created_at": "2026-11-30T09:00:00Z", "updated_at": "2026-11-30T10:00:00Z",
            "inner_id": number, "total_annotations": sum(not a["was_cancelled"] for a in annotations),
            "cancelled_annotations": sum(a["was_cancelled"] for a in annotations), "total_predictions": 0,
            "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 1,
            "updated_by": 1, "comment_authors": []}


def test_label_studio_second_round_imports_the_cumulative_export(pairs, queue, files):
    """Round 1 annotates half the tasks (one skipped); round 2's export repeats them and adds the rest."""
    tasks = [t["data"] for t in review.label_studio_project(review.tasks_from_queue(queue))["tasks.json"]]
    truth = _truth_for_task(queue, pairs[1])
    first, skipped = range(0, BUDGET // 2), BUDGET // 2 - 1  # the last round-1 task is skipped by its annotator

    def annotations(i, rounds):
        out = []
        if 1 in rounds:
            if i == skipped:
                out.append(_ls_annotation(i + 1, 0, "", cancelled=True))
            elif i in first:
                out += [_ls_annotation(i + 1, k, simulated_choice(truth[tasks[i]["task_id"]], k, tasks[i]["left"]))
                        for k in range(3)]
        if 2 in rounds and (i not in first or i == skipped):
            out += [_ls_annotation(i + 1, k, simulated_choice(truth[tasks[i]["task_id"]], k, tasks[i]["left"]))
                    for k in range(3) if not (i == skipped and k == 0)]
        return out

    for name, rounds in (("round1.json", {1}), ("round2.json", {1, 2})):
        (files / name).write_text(json.dumps([_ls_task(i + 1, tasks[i], annotations(i, rounds))
                                              for i in range(BUDGET)]))
    common = ["--queue", str(files / "queue.parquet"), "--json"]
    proc = run_inproc("review", "import", str(files / "round1.json"), "--into", str(files / "in.parquet"),
                      "-o", str(files / "r1.parquet"), *common)
    assert proc.returncode == 0, proc.stderr.decode()
    one = json.loads(proc.stdout)
    assert one["tasks_reviewed"] == BUDGET // 2 - 1 and one["already_applied"] == 0 and one["tie"] > 0
    proc = run_inproc("review", "import", str(files / "round2.json"), "--into", str(files / "r1.parquet"),
                      "-o", str(files / "r2.parquet"), *common)
    assert proc.returncode == 0, proc.stderr.decode()
    two = json.loads(proc.stdout)
    assert two["already_applied"] == one["tasks_reviewed"] - one["tie"] - one["both_bad"]
    assert two["not_in_input"] == one["set_aside"]  # round 1's ties went to its rejects file
    assert two["tasks_reviewed"] == BUDGET - BUDGET // 2 + 1 and two["rows_in"] == one["rows_out"]
    assert "not in --into" in proc.stderr.decode()
    # Both rounds together: every task applied once, every row accounted for.
    r1, r2 = io.read_pairs(files / "r1.parquet"), io.read_pairs(files / "r2.parquet")
    aside = [io.read_table(files / f"r{k}.rejects.parquet") for k in (1, 2)]
    assert r2.num_rows + sum(a.num_rows for a in aside) == pairs[0].num_rows
    done = [t for t in r2.column("review_task_id").to_pylist() if t] + \
        [t for a in aside for t in a.column("review_task_id").to_pylist()]
    assert sorted(done) == sorted(queue.column("review_task_id").to_pylist())
    before = dict(zip(r1.column("pair_id").to_pylist(), r1.column("chosen").to_pylist()))
    for pair_id, chosen, task in zip(r2.column("pair_id").to_pylist(), r2.column("chosen").to_pylist(),
                                     r2.column("review_task_id").to_pylist()):
        if task in {tasks[i]["task_id"] for i in first if i != skipped}:
            assert chosen == before[pair_id]  # applied in round 1: not flipped twice
    both = pa.concat_tables([t.select(["review_task_id", "review_annotators"]) for t in (r2, aside[1])])
    annotators = dict(zip(both.column("review_task_id").to_pylist(), both.column("review_annotators").to_pylist()))
    assert annotators[tasks[skipped]["task_id"]] == 2  # round 1's skip is not a verdict; round 2's two are
    # The same cumulative export once more: nothing new, nothing changed.
    proc = run_inproc("review", "import", str(files / "round2.json"), "--into", str(files / "r2.parquet"),
                      "-o", str(files / "r3.parquet"), *common)
    assert proc.returncode == 0, proc.stderr.decode()
    three = json.loads(proc.stdout)
    assert three["tasks_reviewed"] == 0 and three["rows_out"] == r2.num_rows
    assert io.read_pairs(files / "r3.parquet").column("chosen").to_pylist() == r2.column("chosen").to_pylist()


def test_a_pair_missing_from_an_unrelated_input_still_fails(pairs, queue, files):
    table, _ = pairs
    outcome = review.TaskOutcome("not-a-pair", queue.column("review_task_id")[0].as_py(), "keep", 1.0, 1, "{}", "",
                                 False)
    with pytest.raises(InputError, match="holds no earlier verdicts of this queue"):
        review.apply_verdicts(table, [outcome], queue_task_ids=queue.column("review_task_id").to_pylist())


def test_argilla_drafts_never_count_in_either_export_form(pairs, queue, files):
    tasks = review.tasks_from_queue(queue)[:6]
    truth = _truth_for_task(queue, pairs[1])
    flat, nested = [], []
    for t in tasks:
        submitted = [simulated_choice(truth[t.task_id], k, t.left) for k in range(2)]
        draft = "right" if submitted[0] == "left" else "left"  # a draft that would change the majority
        values, users = submitted + [draft], ["u0", "u1", "u-draft"]
        # records.to_list(flatten=True): one list per question, users and status aligned
        flat.append({"id": t.task_id, "status": "completed", "_server_id": "0000", "prompt": t.prompt, "left": t.left,
                     "right": t.right, "preference.responses": values, "preference.responses.users": users,
                     "preference.responses.status": ["submitted", "submitted", "draft"],
                     "preference.suggestion": "left", "preference.suggestion.score": 0.7,
                     "preference.suggestion.agent": "prefcli-vote"})
        # Dataset.to_disk / records.to_json: Record.to_dict, whose responses carry no status
        nested.append({"id": t.task_id, "fields": {"prompt": t.prompt, "left": t.left, "right": t.right},
                       "metadata": {}, "suggestions": {}, "vectors": {}, "_server_id": "0000",
                       "responses": {"preference": [{"value": v, "user_id": u} for v, u in zip(values, users)]}})
    (files / "flat.json").write_text(json.dumps(flat))
    judgements = review.parse_verdicts(flat, "flat.json")
    assert len(judgements) == 2 * len(tasks) and {j.annotator for j in judgements} == {"u0", "u1"}
    (files / "nested").mkdir(exist_ok=True)
    (files / "nested" / "records.json").write_text(json.dumps(nested))
    out = files / "nested_out.parquet"
    proc = run_inproc("review", "import", str(files / "nested"), "--into", str(files / "in.parquet"),
                      "--queue", str(files / "queue.parquet"), "-o", str(out))
    assert_one_line_error(proc, "nested: record 1 response 1", "no status", "to_list(flatten=True)")
    assert not out.exists()
    proc = run_inproc("review", "import", str(files / "flat.json"), "--into", str(files / "in.parquet"),
                      "--queue", str(files / "queue.parquet"), "-o", str(files / "flat_out.parquet"), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["tasks_reviewed"] == len(tasks)
    # A flattened export without the status column is refused the same way.
    bare = [{k: v for k, v in r.items() if k != "preference.responses.status"} for r in flat]
    with pytest.raises(InputError, match="no status"):
        review.parse_verdicts(bare, "bare.json")
