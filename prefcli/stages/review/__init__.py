"""Human review loop: pick pairs worth a human look, build annotation tasks, apply the verdicts back.

Three steps, each a plain function over Arrow tables (no I/O here), one module each:

- `select`: `select_for_review`, a review queue of at most `budget` pairs (audit slice, then priority
  tiers round-robin over topic groups); each task shows the responses in a random left/right order.
- `tasks`: `label_studio_project`, `argilla_dataset`, `csv_tasks`: what annotators see (never the mapping).
- `verdicts`: `parse_verdicts` + `aggregate` + `apply_verdicts`: read Label Studio / Argilla / CSV results,
  map left/right back to chosen/rejected, take the majority of several annotators, and apply it.

Core-column changes: only `apply_verdicts` (human verdicts) rewrites core columns. It sets
`label_source=human` and `annotator_agreement` on reviewed rows and, on a `flip` verdict, swaps
chosen/rejected (and their scores; `pair_id` keeps naming the original pair, as in `vote --action flip`).
The previous label source stays in `review_prev_label_source`, the swap in `review_flipped`. Columns of other stages
(`pref_*`, `margin`, ...) are left as they were scored: re-run `prefcli vote` after flips.

The public names of the three modules are re-exported here: `from prefcli.stages.review import X`.
"""

from .select import (AUDIT, KMEANS_FULL_MAX, PRIORITIES, QUEUE_COLUMNS, SELECT_REQUIRES, STAGE, gold_errors,
                     select_for_review, task_id)
from .tasks import (ARGILLA_LABELS, CSV_COLUMNS, LABEL_STUDIO_CONFIG, Task, argilla_dataset, csv_tasks, csv_text,
                    label_studio_project, tasks_from_queue)
from .verdicts import (ARGILLA_NO_STATUS, CHOICES, SET_ASIDE_REASONS, VERDICTS, Judgement, TaskOutcome, aggregate,
                       applied_task_ids, apply_verdicts, detect_format, parse_verdicts, skip_applied)

__all__ = [
    "AUDIT", "KMEANS_FULL_MAX", "PRIORITIES", "QUEUE_COLUMNS", "SELECT_REQUIRES", "STAGE", "gold_errors",
    "select_for_review", "task_id",
    "ARGILLA_LABELS", "CSV_COLUMNS", "LABEL_STUDIO_CONFIG", "Task", "argilla_dataset", "csv_tasks", "csv_text",
    "label_studio_project", "tasks_from_queue",
    "ARGILLA_NO_STATUS", "CHOICES", "SET_ASIDE_REASONS", "VERDICTS", "Judgement", "TaskOutcome", "aggregate",
    "applied_task_ids", "apply_verdicts", "detect_format", "parse_verdicts", "skip_applied",
]
