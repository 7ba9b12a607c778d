"""Human review loop: pick pairs worth a human look, build annotation tasks, apply the verdicts back.

Three steps, each a plain function over Arrow tables (no I/O here):

- `select_for_review`: a review queue of at most `budget` pairs. First a random audit slice (so that
  calibration sees an unbiased sample), then priority tiers that take turns: the vote's `incorrect`
  bucket (lowest pref_mean first), embedding neighbours of gold pairs the AI got wrong (error-driven
  retrieval), the `ambiguous` bucket and high RM disagreement (highest pref_std first). Within a tier,
  picks go round-robin over topic groups (k-means on embeddings, or `dedup_cluster`) so the budget is
  not spent on one topic. Each task
  shows the two responses in a random left/right order; the mapping stays in the queue only.
- `label_studio_project`, `argilla_dataset`, `csv_tasks`: what annotators see (never the mapping).
- `parse_verdicts` + `apply_verdicts`: read Label Studio / Argilla / CSV results, map left/right back
  to chosen/rejected, take the majority of several annotators, and apply it.

Core-column changes: only `apply_verdicts` (human verdicts) rewrites core columns. It sets
`label_source=human` and `annotator_agreement` on reviewed rows and, on a `flip` verdict, swaps
chosen/rejected (and their scores; `pair_id` keeps naming the original pair, as in `vote --action flip`).
The previous label source stays in `review_prev_label_source`, the swap in `review_flipped`. Columns of other stages
(`pref_*`, `margin`, ...) are left as they were scored: re-run `prefcli vote` after flips.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..report import StageResult, mark_set_aside
from ..schema import with_stage_columns
from ..text import digest, texts_for
from ..pairs import swap_sides

STAGE = "review"
VERDICTS = ("keep", "flip", "tie", "both-bad")
CHOICES = ("left", "right", "tie", "both-bad")
PRIORITIES = ("incorrect", "near-error", "ambiguous", "high-std")
AUDIT = "audit"
SELECT_REQUIRES = {
    "pref_mean": "run `prefcli vote` first",
    "pref_std": "run `prefcli vote` first",
    "pref_bucket": "run `prefcli vote` first",
}
# Queue-only columns: they describe the task, not the pair, and are not copied back on import.
QUEUE_COLUMNS = ("review_task_id", "review_reason", "review_left_is_chosen", "review_rank", "review_group")
SET_ASIDE_REASONS = {
    "tie": "review: humans judged a tie",
    "both-bad": "review: humans judged both responses bad",
    "split": "review: annotators split evenly",
}
KMEANS_FULL_MAX = 50_000  # above this many pairs, topic groups use mini-batch k-means


# --------------------------------------------------------------------------- selection

def select_for_review(
    table: pa.Table,
    budget: int,
    *,
    embedder=None,
    gold: pa.Table | None = None,
    audit_share: float = 0.1,
    groups: str = "auto",
    neighbours: int = 10,
    min_similarity: float = 0.5,
    std_quantile: float = 0.9,
    on: str = "prompt",
    index_device: str = "auto",
    seed: int = 0,
) -> StageResult:
    """A review queue: at most `budget` distinct pairs with `review_*` task columns.

    `groups`: auto (k-means when an embedder is given, else dedup_cluster, else none), kmeans, dedup, none.
    `gold`: an earlier `review import` output; its pairs the AI got wrong seed the error-driven retrieval.
    """
    if budget < 1:
        raise InputError(f"--budget: must be at least 1, got {budget}")
    if not 0.0 <= audit_share <= 1.0:
        raise InputError(f"--audit-share: must be within 0..1, got {audit_share}")
    rng = np.random.default_rng(seed)
    pair_ids = table.column("pair_id").to_numpy(zero_copy_only=False).astype(object)
    _, first = np.unique(pair_ids.astype(str), return_index=True)
    eligible = np.zeros(table.num_rows, bool)
    eligible[first] = True  # one task per distinct pair
    if "review_verdict" in table.column_names:  # humans already judged these (an earlier round's output)
        eligible &= np.asarray(table.column("review_verdict").is_null().to_numpy(zero_copy_only=False), bool)
    budget = min(budget, int(eligible.sum()))

    group_mode = _group_mode(groups, table, embedder)
    vectors = None
    if group_mode == "kmeans" or gold is not None:
        if embedder is None:
            raise InputError("review select: an embedder is needed for k-means groups and --gold retrieval")
        vectors = embedder.encode(texts_for(table, on))
    group = _groups(table, group_mode, vectors, budget, seed)

    taken = ~eligible
    # The audit slice first: uniform over all eligible pairs, so calibration is unbiased.
    n_audit = min(budget, int(round(budget * audit_share)))
    picked = list(rng.permutation(np.flatnonzero(eligible))[:n_audit])
    reasons = [AUDIT] * len(picked)
    taken[picked] = True

    stats: dict[str, Any] = {"rows_in": table.num_rows, "eligible": int(eligible.sum()), "budget": budget,
                             "groups": group_mode,
                             "n_groups": int(len(np.unique(group)))}
    mean = _floats(table, "pref_mean")
    std = _floats(table, "pref_std")
    bucket = np.asarray(table.column("pref_bucket").to_pylist(), dtype=object)
    tiers: dict[str, tuple[np.ndarray, np.ndarray]] = {  # reason -> (candidate rows, sort key: lower first)
        "incorrect": (np.flatnonzero(bucket == "incorrect"), np.nan_to_num(mean, nan=np.inf)),
        "ambiguous": (np.flatnonzero(bucket == "ambiguous"), -np.nan_to_num(std, nan=0.0)),
    }
    if gold is not None:
        candidates, similarity, stats["gold_errors"] = _near_gold_errors(
            table, vectors, gold, embedder, on, neighbours, min_similarity, index_device)
        tiers["near-error"] = (candidates, -similarity)
    if np.isfinite(std).any():
        cut = np.nanquantile(std, std_quantile)
        tiers["high-std"] = (np.flatnonzero(np.nan_to_num(std, nan=-np.inf) >= cut), -np.nan_to_num(std, nan=0.0))
    # Each tier in its own best-first, group round-robin order; tiers take turns, so one huge bucket
    # (25% of a dataset can be `incorrect`) cannot crowd out the others.
    queues = {r: deque(_round_robin(tiers[r][0], tiers[r][1][tiers[r][0]], group[tiers[r][0]]).tolist())
              for r in PRIORITIES if r in tiers}
    while len(picked) < budget and any(queues.values()):
        for reason, rows in queues.items():
            while rows and taken[rows[0]]:
                rows.popleft()
            if rows and len(picked) < budget:
                row = rows.popleft()
                taken[row] = True
                picked.append(row)
                reasons.append(reason)
    # Whatever budget the priorities left goes to more random audit.
    rest = list(rng.permutation(np.flatnonzero(~taken))[:budget - len(picked)])
    picked += rest
    reasons += [AUDIT] * len(rest)

    rows = np.asarray(picked, dtype=np.int64)
    queue = table.take(pa.array(rows))
    queue_ids = [str(p) for p in pair_ids[rows]]
    columns = {
        "review_task_id": pa.array([task_id(p, seed) for p in queue_ids], pa.large_string()),
        "review_reason": pa.array(reasons, pa.large_string()),
        "review_left_is_chosen": pa.array([_left_is_chosen(p, seed) for p in queue_ids], pa.bool_()),
        "review_rank": pa.array(np.arange(len(rows)), pa.int64()),
        "review_group": pa.array(group[rows], pa.int64()),
    }
    queue = with_stage_columns(queue, STAGE, columns)
    stats["selected"] = queue.num_rows
    stats["by_reason"] = dict(Counter(reasons))
    return StageResult(out=queue, stats=stats)


def task_id(pair_id: str, seed: int) -> str:
    return digest(f"task:{seed}:{pair_id}")[:16]


def _left_is_chosen(pair_id: str, seed: int) -> bool:
    # Derived from the pair, not from the selection order: the same pair keeps its sides at any budget.
    return int(digest(f"side:{seed}:{pair_id}")[:8], 16) % 2 == 0


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _group_mode(groups: str, table: pa.Table, embedder) -> str:
    if groups not in ("auto", "kmeans", "dedup", "none"):
        raise InputError(f"--groups: expected auto, kmeans, dedup or none, got '{groups}'")
    if groups == "dedup" and "dedup_cluster" not in table.column_names:
        raise InputError("--groups dedup: input has no 'dedup_cluster' column (run `prefcli dedup` first)")
    if groups != "auto":
        return groups
    if embedder is not None:
        return "kmeans"
    return "dedup" if "dedup_cluster" in table.column_names else "none"


def _groups(table: pa.Table, mode: str, vectors: np.ndarray | None, budget: int, seed: int) -> np.ndarray:
    n = table.num_rows
    if mode == "none" or n == 0:
        return np.zeros(n, np.int64)
    if mode == "dedup":
        values = table.column("dedup_cluster").to_pylist()
        _, inverse = np.unique(np.asarray([str(v) for v in values]), return_inverse=True)
        return inverse.astype(np.int64)
    k = int(min(n, max(2, min(budget, round(math.sqrt(n))))))
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if n <= KMEANS_FULL_MAX:
        model = KMeans(n_clusters=k, n_init=1, random_state=seed)
    else:  # millions of pairs: mini-batches keep it to seconds
        model = MiniBatchKMeans(n_clusters=k, n_init=1, batch_size=4096, random_state=seed)
    return model.fit_predict(vectors).astype(np.int64)


def _round_robin(candidates: np.ndarray, key: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Best-first within each group, one group at a time: the r-th pick of every group before any (r+1)-th."""
    order = np.lexsort((candidates, key))  # by key, ties by row number: deterministic
    candidates, group = candidates[order], group[order]
    rank_in_group = np.zeros(len(candidates), np.int64)
    seen: Counter = Counter()
    for i, g in enumerate(group.tolist()):
        rank_in_group[i] = seen[g]
        seen[g] += 1
    final = np.lexsort((np.arange(len(candidates)), rank_in_group))
    return candidates[final]


def gold_errors(gold: pa.Table) -> np.ndarray:
    """Gold rows the AI got wrong: humans flipped the label, or the RM vote's sign disagreed with humans."""
    if "review_verdict" not in gold.column_names:
        raise InputError("--gold: missing column 'review_verdict' (use a `prefcli review import` output)")
    verdict = np.asarray(gold.column("review_verdict").to_pylist(), dtype=object)
    wrong = verdict == "flip"
    if "pref_mean" in gold.column_names:
        mean = _floats(gold, "pref_mean")
        rm_says_flip = np.nan_to_num(mean, nan=0.0) < 0
        wrong |= ((verdict == "keep") & rm_says_flip) | ((verdict == "flip") & ~rm_says_flip)
    return np.flatnonzero(wrong)


def _near_gold_errors(table, vectors, gold, embedder, on, neighbours, min_similarity, device):
    """Rows of `table` most similar to gold errors (not themselves gold): (rows, best similarity, n errors)."""
    from ..models.index import NeighbourIndex

    errors = gold_errors(gold)
    if not len(errors) or table.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros(table.num_rows), len(errors)
    queries = embedder.encode(texts_for(gold.take(pa.array(errors)), on))
    sims, ids = NeighbourIndex(vectors, device=device).search(queries, neighbours)
    best = np.full(table.num_rows, -np.inf)
    for sim_row, id_row in zip(sims, ids):
        valid = id_row >= 0
        np.maximum.at(best, id_row[valid], sim_row[valid])
    in_gold = pc.is_in(table.column("pair_id"), value_set=gold.column("pair_id").combine_chunks())
    best[np.asarray(in_gold.to_numpy(zero_copy_only=False), bool)] = -np.inf
    rows = np.flatnonzero(best >= min_similarity)
    return rows, best, len(errors)


# --------------------------------------------------------------------------- task export

@dataclass
class Task:
    """One annotation task: the prompt and the two responses in display order, plus the RM's view."""

    task_id: str
    prompt: str
    left: str
    right: str
    rm_prefers: str | None  # "left" / "right" / None when the queue has no vote
    rm_score: float | None  # confidence of that preference, 0.5..1


def tasks_from_queue(queue: pa.Table) -> list[Task]:
    missing = [c for c in ("review_task_id", "review_left_is_chosen") if c not in queue.column_names]
    if missing:
        raise InputError(f"queue: missing column '{missing[0]}' (use a `prefcli review select` output)")
    prompts = texts_for(queue, "prompt")
    chosen, rejected = queue.column("chosen").to_pylist(), queue.column("rejected").to_pylist()
    left_is_chosen = queue.column("review_left_is_chosen").to_pylist()
    ids = queue.column("review_task_id").to_pylist()
    means = _floats(queue, "pref_mean") if "pref_mean" in queue.column_names else np.full(queue.num_rows, np.nan)
    probs = _floats(queue, "label_prob") if "label_prob" in queue.column_names else np.full(queue.num_rows, np.nan)
    tasks = []
    for i in range(queue.num_rows):
        left, right = (chosen[i], rejected[i]) if left_is_chosen[i] else (rejected[i], chosen[i])
        prefers, score = None, None
        if np.isfinite(means[i]):
            prob_chosen = probs[i] if np.isfinite(probs[i]) else 1.0 / (1.0 + math.exp(-means[i]))
            rm_chosen = prob_chosen >= 0.5
            prefers = "left" if rm_chosen == bool(left_is_chosen[i]) else "right"
            score = round(float(max(prob_chosen, 1.0 - prob_chosen)), 4)
        tasks.append(Task(ids[i], prompts[i], left, right, prefers, score))
    return tasks


LABEL_STUDIO_CONFIG = """<View>
  <Header value="Which response is better? (order is random)"/>
  <Text name="prompt" value="$prompt"/>
  <View style="display: flex; gap: 1em;">
    <View style="flex: 1;"><Header value="Left"/><Text name="left" value="$left"/></View>
    <View style="flex: 1;"><Header value="Right"/><Text name="right" value="$right"/></View>
  </View>
  <Pairwise name="preference" toName="left,right"/>
  <Choices name="judgement" toName="prompt" choice="single" showInline="true">
    <Choice value="tie" hint="Both equally good"/>
    <Choice value="both-bad" hint="Neither is acceptable"/>
  </Choices>
  <TextArea name="justification" toName="prompt" rows="3" placeholder="Why? (optional)"/>
</View>
"""


def label_studio_project(tasks: Sequence[Task]) -> dict[str, Any]:
    """{'config.xml': text, 'tasks.json': [{'data': {...}}]}: import tasks.json into a project using config.xml."""
    return {
        "config.xml": LABEL_STUDIO_CONFIG,
        "tasks.json": [{"data": {"task_id": t.task_id, "prompt": t.prompt, "left": t.left, "right": t.right}}
                       for t in tasks],
    }


ARGILLA_LABELS = {"left": "Left is better", "right": "Right is better", "tie": "Tie", "both-bad": "Both bad"}


def argilla_dataset(tasks: Sequence[Task], *, name: str = "prefcli-review", agent: str = "prefcli-vote") -> dict[str, Any]:
    """The `rg.Dataset.to_disk` layout (script-free): `.argilla/settings.json`, `.argilla/dataset.json`, `records.json`.

    Load with `rg.Dataset.from_disk(DIR, client=...)`. The RM vote is a suggestion on `preference`.
    """
    def text_field(field: str, title: str) -> dict:
        return {"name": field, "title": title, "required": True, "settings": {"type": "text", "use_markdown": False}}

    settings = {
        "guidelines": "Pick the better response. Left/right order is random. Use tie or both-bad when neither wins.",
        "allow_extra_metadata": True,
        "distribution": {"strategy": "overlap", "min_submitted": 1},
        "fields": [text_field("prompt", "Prompt"), text_field("left", "Left response"),
                   text_field("right", "Right response")],
        "questions": [
            {"name": "preference", "title": "Which response is better?", "required": True,
             "settings": {"type": "label_selection",
                          "options": [{"value": k, "text": v, "description": None} for k, v in ARGILLA_LABELS.items()],
                          "visible_options": None}},
            {"name": "justification", "title": "Why? (optional)", "required": False,
             "settings": {"type": "text", "use_markdown": False}},
        ],
        "vectors": [],
        "metadata": [],
    }
    records = []
    for t in tasks:
        suggestions = {}
        if t.rm_prefers is not None:
            suggestions["preference"] = {"value": t.rm_prefers, "score": t.rm_score, "agent": agent}
        records.append({"id": t.task_id, "fields": {"prompt": t.prompt, "left": t.left, "right": t.right},
                        "metadata": {}, "suggestions": suggestions, "responses": {}, "vectors": {},
                        "_server_id": None})
    dataset = {"name": name, "guidelines": settings["guidelines"], "allow_extra_metadata": True,
               "distribution": settings["distribution"]}
    return {".argilla/settings.json": settings, ".argilla/dataset.json": dataset, "records.json": records}


CSV_COLUMNS = ("task_id", "prompt", "left", "right", "verdict", "annotator", "justification")


def csv_tasks(tasks: Sequence[Task]) -> list[dict[str, str]]:
    """Rows for spreadsheet reviewers: fill `verdict` with left, right, tie or both-bad, and `annotator`."""
    return [{"task_id": t.task_id, "prompt": t.prompt, "left": t.left, "right": t.right,
             "verdict": "", "annotator": "", "justification": ""} for t in tasks]


def csv_text(rows: list[dict], columns: Sequence[str]) -> str:
    """CSV text with a header row; fields are quoted as needed (newlines inside cells survive)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --------------------------------------------------------------------------- verdict import

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
