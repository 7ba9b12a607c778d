"""Human verdicts back onto the pairs: parse Label Studio / Argilla / CSV results, map left/right back to
chosen/rejected, take the majority of several annotators, and apply it (flips swap the sides; ties and
both-bad are set aside)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import InputError
from ...pairs import swap_sides
from ...report import StageResult, mark_set_aside
from ...schema import with_stage_columns
from .select import QUEUE_COLUMNS, STAGE

VERDICTS = ("keep", "flip", "tie", "both-bad")
CHOICES = ("left", "right", "tie", "both-bad")
SET_ASIDE_REASONS = {
    "tie": "review: humans judged a tie",
    "both-bad": "review: humans judged both responses bad",
    "split": "review: annotators split evenly",
}


@dataclass(frozen=True)
class Judgement:
    """One annotator's answer to one task, with where it came from (for error messages)."""

    task_id: str
    annotator: str
    choice: str  # left | right | tie | both-bad
    justification: str
    where: str


_CHOICE_WORDS = {
    "left": "left", "a": "left", "1": "left", "response a": "left", "left is better": "left",
    "right": "right", "b": "right", "2": "right", "response b": "right", "right is better": "right",
    "tie": "tie", "0": "tie", "equal": "tie", "same": "tie",
    "both-bad": "both-bad", "both bad": "both-bad", "both_bad": "both-bad", "neither": "both-bad", "bad": "both-bad",
}


def _choice(value: Any, where: str) -> str:
    word = str(value).strip().lower()
    if word.endswith(".0"):
        word = word[:-2]
    if word not in _CHOICE_WORDS:
        raise InputError(f"{where}: verdict '{value}' is not one of left, right, tie, both-bad")
    return _CHOICE_WORDS[word]


def detect_format(records: Sequence[dict], where: str) -> str:
    if not records:
        raise InputError(f"{where}: no records")
    first = records[0]
    if "annotations" in first and "data" in first:
        return "label-studio"
    if "responses" in first or "preference.responses" in first or ("fields" in first and "id" in first):
        return "argilla"
    if "verdict" in first and "task_id" in first:
        return "csv"
    raise InputError(f"{where}: not a Label Studio export, Argilla records or review CSV "
                     f"(first record has keys {', '.join(sorted(first)[:6])})")


def parse_verdicts(records: Sequence[dict], where: str, *, fmt: str = "auto",
                   lines: Sequence[int] | None = None) -> list[Judgement]:
    """Judgements from one verdict file's records; a malformed record raises InputError naming it."""
    fmt = detect_format(records, where) if fmt == "auto" else fmt
    parser = {"label-studio": _parse_label_studio, "argilla": _parse_argilla, "csv": _parse_csv}.get(fmt)
    if parser is None:
        raise InputError(f"--format: expected auto, label-studio, argilla or csv, got '{fmt}'")
    lines = list(lines) if lines else list(range(1, len(records) + 1))
    out: list[Judgement] = []
    for record, line in zip(records, lines):
        out.extend(parser(record, f"{where}: record {line}" if fmt != "csv" else f"{where}: line {line}"))
    return out


def _require(record: dict, key: str, where: str, kind: type | tuple = object):
    if key not in record or record[key] is None:
        raise InputError(f"{where}: missing '{key}'")
    if not isinstance(record[key], kind):
        raise InputError(f"{where}: '{key}' has the wrong type ({type(record[key]).__name__})")
    return record[key]


def _parse_label_studio(record: dict, where: str) -> list[Judgement]:
    data = _require(record, "data", where, dict)
    tid = str(_require(data, "task_id", f"{where}: data", (str, int)))
    out = []
    for n, annotation in enumerate(_require(record, "annotations", where, list), start=1):
        at = f"{where} annotation {n}"
        if not isinstance(annotation, dict):
            raise InputError(f"{at}: expected an object")
        if annotation.get("was_cancelled"):
            continue
        who = annotation.get("completed_by")
        if isinstance(who, dict):
            who = who.get("email") or who.get("id")
        if who is None:
            raise InputError(f"{at}: missing 'completed_by' (the annotator)")
        pairwise, extra, text = None, None, ""
        for item in _require(annotation, "result", at, list):
            kind = item.get("type") if isinstance(item, dict) else None
            value = (item.get("value") or {}) if isinstance(item, dict) else {}
            if kind == "pairwise":
                pairwise = value.get("selected")
            elif kind == "choices" and value.get("choices"):
                extra = value["choices"][0]
            elif kind == "textarea":
                text = " ".join(value.get("text") or [])
        choice = extra if extra is not None else pairwise
        if choice is None:
            raise InputError(f"{at}: no pairwise selection and no tie/both-bad choice")
        out.append(Judgement(tid, str(who), _choice(choice, at), text, at))
    return out


ARGILLA_NO_STATUS = ("the Argilla response has no status (the nested records.json of `Dataset.to_disk` or "
                     "`records.to_json` drops it), so a draft cannot be told from a submitted answer; export with "
                     "`json.dump(dataset.records.to_list(flatten=True), f)` and import that file")


def _parse_argilla(record: dict, where: str) -> list[Judgement]:
    tid = str(_require(record, "id", where, (str, int)))
    responses = record.get("responses")
    if isinstance(responses, dict):  # nested: Record.to_dict / records.json from Dataset.to_disk
        answers = responses.get("preference") or []
        notes = {r.get("user_id"): r.get("value") for r in responses.get("justification") or [] if isinstance(r, dict)}
    else:  # flattened: records.to_list(flatten=True)
        values = record.get("preference.responses") or []
        users = record.get("preference.responses.users") or [None] * len(values)
        status = record.get("preference.responses.status") or [None] * len(values)
        answers = [{"value": v, "user_id": u, "status": s} for v, u, s in zip(values, users, status)]
        notes = dict(zip(record.get("justification.responses.users") or [],
                         record.get("justification.responses") or []))
    if not isinstance(answers, list):
        raise InputError(f"{where}: 'preference' responses must be a list")
    out = []
    for n, answer in enumerate(answers, start=1):
        at = f"{where} response {n}"
        if not isinstance(answer, dict) or "value" not in answer:
            raise InputError(f"{at}: expected an object with 'value'")
        if answer.get("status") is None:
            raise InputError(f"{at}: {ARGILLA_NO_STATUS}")
        if answer["status"] != "submitted":
            continue  # drafts and discarded responses are not verdicts
        who = answer.get("user_id")
        if who is None:
            raise InputError(f"{at}: missing 'user_id' (the annotator)")
        out.append(Judgement(tid, str(who), _choice(answer["value"], at), str(notes.get(who) or ""), at))
    return out


def _parse_csv(record: dict, where: str) -> list[Judgement]:
    tid = record.get("task_id")
    if tid in (None, ""):
        raise InputError(f"{where}: empty 'task_id'")
    verdict = record.get("verdict")
    if verdict in (None, ""):
        return []  # not reviewed yet
    who = record.get("annotator") or "csv"
    return [Judgement(str(tid), str(who), _choice(verdict, where), str(record.get("justification") or ""), where)]


def applied_task_ids(table: pa.Table) -> set[str]:
    """Task ids whose verdicts `table` already carries (an earlier `review import` output)."""
    if "review_task_id" not in table.column_names:
        return set()
    return set(pc.drop_null(table.column("review_task_id")).to_pylist())


def skip_applied(judgements: Sequence[Judgement], applied: set[str]) -> tuple[list[Judgement], int]:
    """Judgements of tasks not applied yet, and how many tasks were skipped as already applied.

    Label Studio's export holds every annotation so far: a later round's export repeats the earlier tasks.
    """
    fresh = [j for j in judgements if j.task_id not in applied]
    return fresh, len({j.task_id for j in judgements if j.task_id in applied})


def _verdict(choice: str, left_is_chosen: bool) -> str:
    if choice in ("tie", "both-bad"):
        return choice
    return "keep" if (choice == "left") == left_is_chosen else "flip"


@dataclass
class TaskOutcome:
    pair_id: str
    task_id: str
    verdict: str  # keep | flip | tie | both-bad
    agreement: float
    annotators: int
    votes: str
    justification: str
    split: bool


def aggregate(judgements: Iterable[Judgement], queue: pa.Table) -> list[TaskOutcome]:
    """Map left/right back through the queue, reject unknown tasks and duplicates, majority per task."""
    tasks = {t: (p, bool(s)) for t, p, s in zip(queue.column("review_task_id").to_pylist(),
                                                 queue.column("pair_id").to_pylist(),
                                                 queue.column("review_left_is_chosen").to_pylist())}
    seen: dict[tuple[str, str], str] = {}
    by_task: dict[str, list[tuple[str, Judgement]]] = {}
    for j in judgements:
        if j.task_id not in tasks:
            raise InputError(f"{j.where}: unknown task id '{j.task_id}' (not in the review queue)")
        key = (j.task_id, j.annotator)
        if key in seen:
            raise InputError(f"{j.where}: duplicate verdict for task '{j.task_id}' by annotator '{j.annotator}' "
                             f"(first at {seen[key]})")
        seen[key] = j.where
        by_task.setdefault(j.task_id, []).append((_verdict(j.choice, tasks[j.task_id][1]), j))
    outcomes = []
    for tid in sorted(by_task):
        votes = Counter(v for v, _ in by_task[tid])
        ranked = votes.most_common()
        top, count = ranked[0]
        split = len(ranked) > 1 and ranked[1][1] == count
        notes = " | ".join(f"{j.annotator}: {j.justification}" for _, j in by_task[tid] if j.justification)
        outcomes.append(TaskOutcome(
            pair_id=tasks[tid][0], task_id=tid, verdict="tie" if split else top,
            agreement=count / sum(votes.values()), annotators=sum(votes.values()),
            votes=json.dumps(dict(sorted(votes.items())), sort_keys=True), justification=notes, split=split))
    return outcomes


def apply_verdicts(table: pa.Table, outcomes: Sequence[TaskOutcome], *, queue_task_ids: Iterable[str] = (),
                   already_applied: int = 0) -> StageResult:
    """Apply human verdicts: flips swap chosen/rejected, ties and both-bad are set aside with a reason.

    Rows not reviewed this round keep any `review_*` values from earlier rounds (the gold set grows).
    Every reviewed pair must be in `table`, unless `table` is an earlier import of the same queue
    (`queue_task_ids`): then a missing pair was set aside (tie, both-bad) or removed since, and its
    verdict is skipped and counted (`not_in_input`). Otherwise nothing is applied.
    """
    applied = applied_task_ids(table)
    same_queue = bool(applied & (set(queue_task_ids) | {o.task_id for o in outcomes}))
    reviewed_ids = [o.pair_id for o in outcomes]
    position = pc.index_in(table.column("pair_id"), value_set=pa.array(reviewed_ids, pa.large_string()))
    found = set(pc.unique(pc.drop_null(position)).to_pylist()) if table.num_rows else set()
    lost = [o for i, o in enumerate(outcomes) if i not in found]
    if lost and not same_queue:
        raise InputError(f"--into: reviewed pair '{lost[0].pair_id}' (task '{lost[0].task_id}') is not in the "
                         "input, which holds no earlier verdicts of this queue; was the queue selected from a "
                         "different file?")
    if lost:  # keep the outcomes that have a row; positions index the kept list
        outcomes = [o for i, o in enumerate(outcomes) if i in found]
        position = pc.index_in(table.column("pair_id"),
                               value_set=pa.array([o.pair_id for o in outcomes], pa.large_string()))
    hit = pc.is_valid(position)

    def per_row(values: list, arrow_type: pa.DataType) -> pa.ChunkedArray:
        return pc.take(pa.array(values, arrow_type), position)

    if "review_task_id" in table.column_names:  # importing the same verdicts twice would flip twice
        again = pc.fill_null(pc.equal(table.column("review_task_id"),
                                      per_row([o.task_id for o in outcomes], pa.large_string())), False)
        if pc.any(again).as_py():
            row = pc.index(again, True).as_py()
            raise InputError(f"--into: row {row}: task '{table.column('review_task_id')[row].as_py()}' "
                             "was already applied (review_task_id); nothing applied")

    verdict = per_row([o.verdict for o in outcomes], pa.large_string())
    flip = pc.fill_null(pc.equal(verdict, "flip"), False)
    agreement = per_row([o.agreement for o in outcomes], pa.float64())
    split = pc.fill_null(per_row([o.split for o in outcomes], pa.bool_()), False)

    out = swap_sides(table, np.asarray(flip.to_numpy(zero_copy_only=False), bool))
    human = pa.scalar("human", pa.large_string())
    core = {
        "label_source": pc.if_else(hit, human, table.column("label_source")),
        "annotator_agreement": pc.if_else(hit, agreement, table.column("annotator_agreement")),
    }
    for name, values in core.items():
        out = out.set_column(out.column_names.index(name), name, values)

    fresh = {
        "review_task_id": per_row([o.task_id for o in outcomes], pa.large_string()),
        "review_verdict": verdict,
        "review_agreement": agreement,
        "review_annotators": per_row([o.annotators for o in outcomes], pa.int64()),
        "review_votes": per_row([o.votes for o in outcomes], pa.large_string()),
        "review_justification": per_row([o.justification for o in outcomes], pa.large_string()),
        "review_flipped": pc.if_else(hit, flip, pa.scalar(None, pa.bool_())),
        "review_prev_label_source": pc.if_else(hit, table.column("label_source"), pa.scalar(None, pa.large_string())),
    }
    for name in ("pref_mean", "pref_std", "pref_agree", "margin"):  # the vote as humans saw it (calibrate, export)
        if name in table.column_names:
            fresh[f"review_{name}"] = pc.if_else(hit, table.column(name).cast(pa.float64()),
                                                 pa.scalar(None, pa.float64()))
    columns = {}
    for name, values in fresh.items():
        if name in table.column_names:  # rows not reviewed this round keep earlier rounds' values
            values = pc.if_else(hit, values, table.column(name).cast(values.type))
        columns[name] = values
    out = with_stage_columns(out, STAGE, columns)
    out = out.drop_columns([c for c in QUEUE_COLUMNS if c in out.column_names and c != "review_task_id"])

    aside_mask = pc.fill_null(pc.is_in(verdict, value_set=pa.array(["tie", "both-bad"], pa.large_string())), False)
    aside = out.filter(aside_mask)
    reasons = [SET_ASIDE_REASONS["split" if s else v]
               for v, s in zip(pc.filter(verdict, aside_mask).to_pylist(), pc.filter(split, aside_mask).to_pylist())]
    counts = Counter(o.verdict for o in outcomes)
    stats = {
        "rows_in": table.num_rows, "rows_out": table.num_rows - aside.num_rows, "set_aside": aside.num_rows,
        "tasks_reviewed": len(outcomes), "already_applied": already_applied, "not_in_input": len(lost),
        "rows_reviewed": int(pc.sum(hit.cast(pa.int64())).as_py() or 0),
        "keep": counts.get("keep", 0), "flip": counts.get("flip", 0), "tie": counts.get("tie", 0),
        "both_bad": counts.get("both-bad", 0), "split": sum(o.split for o in outcomes),
        "mean_agreement": round(float(np.mean([o.agreement for o in outcomes])), 4) if outcomes else None,
    }
    return StageResult(out=out.filter(pc.invert(aside_mask)),
                       set_aside=mark_set_aside(aside, reasons, STAGE), stats=stats)
