"""pairwise: a prompt, two responses and a label naming the better one.

Labels: 1/2, A/B, a/b, left/right, first/second, model_a/model_b; 0, 1.5 or words like `tie` are ties;
AlpacaEval's weighted floats in 1..2 (below 1.5 = first better); signed strengths as in
HelpSteer2-preference (negative = first better), picked per source by `--label-scheme auto`.
"""

from __future__ import annotations

from .base import (FIRST, SECOND, Adapter, Collector, is_messages, label_scheme_for, optional_score, parse_label,
                   value)
from .paths import get_path


class Pairwise(Adapter):
    name = "pairwise"

    def setup(self) -> None:
        fields = self.fields
        first = fields.require("first", self.name, self.file)
        fields.require("second", self.name, self.file)
        # whole conversations as responses (e.g. Chatbot Arena) carry the prompt themselves
        self.resolve_prompt(required=not any(is_messages(get_path(r, first)) for r in self.sample))
        self.resolve_label()
        fields.resolve("first_score")
        fields.resolve("second_score")
        fields.resolve("agreement")

    def resolve_label(self) -> None:
        label = self.fields.require("label", self.name, self.file)
        scheme = self.options.label_scheme
        if scheme == "auto":
            scheme = label_scheme_for(get_path(r, label) for r in self.sample)
        self.scheme = scheme

    def record(self, record: dict, line: int, out: Collector) -> None:
        paths = self.fields.paths
        label_raw = value(record, paths["label"])
        verdict = parse_label(label_raw, self.scheme)
        self.emit(record, line, out, verdict, agreement=optional_score(record, paths.get("agreement")),
                  label=label_raw)

    def emit(self, record: dict, line: int, out: Collector, verdict: int, **extra) -> None:
        """Order the two responses by the verdict (FIRST, SECOND or 0 = tie) and hand the pair on."""
        paths = self.fields.paths
        prompt, first, second = self.with_responses(self.prompt(record), value(record, paths["first"]),
                                                    value(record, paths["second"]))
        scores = (optional_score(record, paths.get("first_score")), optional_score(record, paths.get("second_score")))
        order = (1, 0) if verdict == SECOND else (0, 1)
        texts = (first, second)
        names = (paths["first"], paths["second"])
        agreement = extra.pop("agreement", None)
        out.pair(row=record, line=line, prompt=prompt, chosen=texts[order[0]], rejected=texts[order[1]],
                 chosen_score=scores[order[0]], rejected_score=scores[order[1]], agreement=agreement,
                 tie=verdict not in (FIRST, SECOND),
                 meta=self.meta(record, line, chosen=names[order[0]], rejected=names[order[1]], **extra))
