"""multi-response: one prompt with N rated responses, expanded into pairs by `--pairing` and `--min-margin`.

- wide: one row per prompt with a list of responses, e.g. UltraFeedback `completions: [{response,
  overall_score}, ...]`, or a list of texts with a parallel list of scores;
- long: one row per response (e.g. HelpSteer2, UniEval), grouped by prompt (or `--map group=PATH`).
  Long sources are grouped in memory: only the responses are kept, not the raw rows.
"""

from __future__ import annotations

import json
from typing import Any

from .base import Adapter, Collector, Reject, Fields, as_response, as_score, sample_columns, value
from .expand import Scored, emit_expanded, scalar_info
from .paths import get_path


class MultiResponse(Adapter):
    name = "multi-response"
    expands = True

    def setup(self) -> None:
        fields = self.fields
        self.resolve_prompt()
        responses = fields.resolve("responses")
        listed = responses is not None and any(isinstance(get_path(r, responses), list) for r in self.sample)
        self.wide = listed
        if self.wide:
            items = [i for r in self.sample for i in (get_path(r, responses) or []) if isinstance(i, dict)]
            self.item_fields = Fields({k: v for k, v in fields.mapping.items() if k in ("response", "score")},
                                      sample_columns(items))
            if items:
                self.item_fields.require("response", self.name, f"{self.file}: items of '{responses}'")
            self.item_fields.resolve("score")
            if self.item_fields.paths.get("score") is None:  # texts with a parallel list of scores
                fields.require("score", self.name, self.file)
        else:
            fields.paths.pop("responses", None)
            fields.require("response", self.name, self.file)
            fields.require("score", self.name, self.file)
            fields.resolve("group")
            self.groups: dict[str, dict[str, Any]] = {}

    def record(self, record: dict, line: int, out: Collector) -> None:
        if self.wide:
            self.record_wide(record, line, out)
        else:
            self.record_long(record, line, out)

    def record_wide(self, record: dict, line: int, out: Collector) -> None:
        prompt = self.prompt(record)
        items = value(record, self.fields.paths["responses"])
        if not isinstance(items, list):
            raise Reject(f"wrong type: '{self.fields.paths['responses']}' is {type(items).__name__}, expected a list")
        parallel = self.fields.paths.get("score")
        scores = value(record, parallel) if parallel and self.item_fields.paths.get("score") is None else None
        text_path, score_path = self.item_fields.paths.get("response"), self.item_fields.paths.get("score")
        usable = []
        for i, item in enumerate(items):
            try:
                if isinstance(scores, list):
                    raw_score = scores[i] if i < len(scores) else None
                else:
                    raw_score = value(item, score_path) if isinstance(item, dict) else None
                if raw_score is None:
                    raise Reject(f"missing field '{score_path or parallel}'")
                score = as_score(raw_score, score_path or parallel)
                _, text = as_response(item if isinstance(item, str) else value(item, text_path))
                if not text.strip():
                    raise Reject("empty text: response")
            except Reject as problem:
                out.reject(item, line, str(problem))
                continue
            usable.append(Scored(text, score, {"index": i, **scalar_info(item, {text_path, score_path})}))
        if len(usable) < 2:
            out.reject(record, line, "fewer than 2 scored responses")
        else:
            emit_expanded(out, prompt=prompt, responses=usable, line=line, meta=self.meta(record, line), fmt=self.name)

    def record_long(self, record: dict, line: int, out: Collector) -> None:
        paths = self.fields.paths
        prompt = self.prompt(record)
        _, text = as_response(value(record, paths["response"]))
        if not text.strip():
            raise Reject(f"empty text: {paths['response']}")
        score = as_score(value(record, paths["score"]), paths["score"])
        group_path = paths.get("group")
        key = json.dumps([prompt, value(record, group_path) if group_path else None], sort_keys=True, default=str)
        group = self.groups.setdefault(key, {"prompt": prompt, "line": line, "responses": [], "first_row": record})
        info = {"line": line, **{k: v for k, v in record.items() if k not in self.fields.consumed()}}
        group["responses"].append(Scored(text, score, info))

    def finish(self, out: Collector) -> None:
        if self.wide:
            return
        for group in self.groups.values():
            meta = {"_ingest": {"line": group["line"], "responses": len(group["responses"])}}
            if len(group["responses"]) < 2:
                out.reject(group["first_row"], group["line"], "fewer than 2 scored responses")
            else:
                emit_expanded(out, prompt=group["prompt"], responses=group["responses"], line=group["line"],
                              meta=meta, fmt=self.name)
        self.groups = {}
