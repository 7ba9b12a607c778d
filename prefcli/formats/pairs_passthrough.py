"""pairs: an existing canonical pairs file (e.g. an earlier ingest) merged with new raw data.

Core columns are kept as they are (ids are recomputed from the same content, so they match);
stage columns (dedup_, rm_, ...) are dropped, since the merged set must be re-curated.
"""

from __future__ import annotations

from ..schema import core_columns
from .base import Adapter, Collector, Reject, as_messages, value


def looks_like_pairs(columns: list[str]) -> bool:
    return set(core_columns()) <= set(columns)


class Pairs(Adapter):
    name = "pairs"

    def record(self, record: dict, line: int, out: Collector) -> None:
        label_source = value(record, "label_source")
        if label_source not in ("human", "ai", "rm"):
            raise Reject(f"bad label_source: {label_source!r}")
        out.pair(row=record, line=line, prompt=as_messages(value(record, "prompt")), chosen=value(record, "chosen"),
                 rejected=value(record, "rejected"), chosen_score=record.get("chosen_score"),
                 rejected_score=record.get("rejected_score"), agreement=record.get("annotator_agreement"),
                 tie=bool(record.get("tie")), meta=record.get("meta") or "{}", label_source=label_source,
                 source=value(record, "source"))
