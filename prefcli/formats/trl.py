"""trl: TRL's preference layouts, plus hh-rlhf transcripts (the same pair with the prompt inside).

- standard: `prompt`, `chosen`, `rejected` text;
- conversational: message lists (chosen/rejected hold the assistant turn, or continue the prompt);
- implicit prompt: no `prompt`; chosen/rejected are whole conversations (or hh-rlhf transcripts)
  sharing the history and differing in the last assistant turn.
"""

from __future__ import annotations

from .base import Adapter, Collector, Reject, as_response, optional_score, value
from .hh_rlhf import parse_transcript


class Trl(Adapter):
    name = "trl"

    def setup(self) -> None:
        fields = self.fields
        fields.require("chosen", self.name, self.file)
        fields.require("rejected", self.name, self.file)
        self.resolve_prompt(required=False)
        fields.resolve("chosen_score")
        fields.resolve("rejected_score")

    def record(self, record: dict, line: int, out: Collector) -> None:
        paths = self.fields.paths
        chosen_raw = value(record, paths["chosen"])
        rejected_raw = value(record, paths["rejected"])
        if value(record, paths.get("prompt"), required=False) is not None:
            prompt, chosen, rejected = self.with_responses(self.prompt(record), chosen_raw, rejected_raw)
        else:  # no prompt in this row: implicit, inside the responses
            prompt, chosen, rejected = split_implicit(chosen_raw, rejected_raw)
        out.pair(row=record, line=line, prompt=prompt, chosen=chosen, rejected=rejected,
                 chosen_score=optional_score(record, paths.get("chosen_score")),
                 rejected_score=optional_score(record, paths.get("rejected_score")), meta=self.meta(record, line))


def split_implicit(chosen_raw, rejected_raw) -> tuple[list[dict], str, str]:
    """Implicit prompt: the shared history of two transcripts/conversations, and their last turns."""
    if isinstance(chosen_raw, str) and isinstance(rejected_raw, str) and chosen_raw.lstrip()[:1] not in ("[", "{"):
        hist_c, chosen = parse_transcript(chosen_raw)
        hist_r, rejected = parse_transcript(rejected_raw)
    else:
        hist_c, chosen = as_response(chosen_raw)
        hist_r, rejected = as_response(rejected_raw)
        if not hist_c and not hist_r:
            raise Reject("missing field 'prompt' (and the responses carry no history)")
    if hist_c != hist_r:
        raise Reject("history mismatch: chosen and rejected have different histories")
    return hist_c or [], chosen, rejected


class HhRlhf(Trl):
    """hh-rlhf transcripts; a `prompt` column is used only when mapped explicitly."""

    name = "hh-rlhf"

    def setup(self) -> None:
        super().setup()
        if "prompt" not in self.fields.mapping:
            for role in ("prompt", "input", "system"):
                self.fields.paths.pop(role, None)
