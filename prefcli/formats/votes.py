"""votes: two responses judged by several annotators (columns like annotator1..N, or a `votes` list).

The majority side wins only with a strict plurality over the other side and over tie votes;
otherwise the pair is a tie. `annotator_agreement` is the winning share of all valid votes.
"""

from __future__ import annotations

import re

from ..errors import InputError
from .base import FIRST, SECOND, Collector, Reject, label_scheme_for, parse_label
from .pairwise import Pairwise
from .paths import MISSING, get_path

VOTE_COLUMN = re.compile(r"^(annotator|rater|judge|vote|worker|labeler|annotation|human)[ _-]?\d+$", re.I)


def vote_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if VOTE_COLUMN.match(c)]


class Votes(Pairwise):
    name = "votes"

    def resolve_label(self) -> None:
        mapped = self.fields.mapping.get("votes")
        if mapped:
            self.vote_paths = [p for p in mapped.split("+") if p]
        else:
            self.vote_paths = vote_columns(self.fields.columns)
            if not self.vote_paths:
                listed = self.fields.resolve("votes")
                self.vote_paths = [listed] if listed else []
        if not self.vote_paths:
            raise InputError(f"{self.file}: format 'votes' needs two or more annotator columns (annotator1, "
                             f"annotator2, ...), a 'votes' list, or --map votes=COL1+COL2+...; "
                             f"columns seen: {', '.join(self.fields.columns[:20])}")
        for i, path in enumerate(self.vote_paths):
            self.fields.paths[f"vote{i}"] = path
        scheme = self.options.label_scheme
        if scheme == "auto":
            scheme = label_scheme_for(v for r in self.sample for v in self.raw_votes(r))
        self.scheme = scheme

    def raw_votes(self, record: dict) -> list:
        found = []
        for path in self.vote_paths:
            v = get_path(record, path)
            if isinstance(v, (list, tuple)):
                found.extend(v)
            elif v is not MISSING and v is not None and v != "":
                found.append(v)
        return found

    def record(self, record: dict, line: int, out: Collector) -> None:
        votes = [parse_label(v, self.scheme) for v in self.raw_votes(record)]
        if not votes:
            raise Reject(f"missing field '{self.vote_paths[0]}' (no votes)")
        counts = {side: votes.count(side) for side in (FIRST, SECOND, 0)}
        top = max(counts.values())
        winners = [side for side, n in counts.items() if n == top]
        verdict = winners[0] if len(winners) == 1 else 0
        self.emit(record, line, out, verdict, agreement=top / len(votes), votes=[counts[FIRST], counts[SECOND],
                                                                                   counts[0]])
