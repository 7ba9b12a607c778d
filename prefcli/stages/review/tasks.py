"""Annotation tasks from a review queue: Label Studio projects, Argilla datasets and a CSV. What
annotators see never holds the left/right mapping."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ...errors import InputError
from ...text import texts_for
from .select import float_column


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
    means = float_column(queue, "pref_mean") if "pref_mean" in queue.column_names else np.full(queue.num_rows, np.nan)
    probs = float_column(queue, "label_prob") if "label_prob" in queue.column_names else np.full(queue.num_rows, np.nan)
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
