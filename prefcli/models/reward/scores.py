"""`scores:<col_chosen>,<col_rejected>`: existing score columns (e.g. ratings from ingest) as one voter."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import InputError
from .base import column_safe


class ColumnScores:
    """Reads the two score columns of the table being voted on; it cannot score free-standing responses."""

    def __init__(self, chosen_column: str, rejected_column: str, *, name: str | None = None):
        self.chosen_column = chosen_column
        self.rejected_column = rejected_column
        self.name = column_safe(name or (chosen_column if chosen_column != "chosen_score" else "scores"))
        self.model_id = f"scores:{chosen_column},{rejected_column}"

    def fit(self, pairs: pa.Table, *, seed: int) -> None:
        return None

    def score(self, prompts: Sequence[list[dict]], responses: Sequence[str]) -> np.ndarray:
        raise InputError(f"--rm {self.model_id}: score columns can only vote on the table that holds them")

    def score_pairs(self, pairs: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for col in (self.chosen_column, self.rejected_column):
            if col not in pairs.column_names:
                raise InputError(f"--rm {self.model_id}: input has no column '{col}'")
            values = pairs.column(col)
            if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
                raise InputError(f"--rm {self.model_id}: column '{col}' has type {values.type}, expected numbers")
            if values.null_count:
                row = pc.index(pc.is_null(values), True).as_py()
                raise InputError(f"--rm {self.model_id}: row {row}: column '{col}' is null")
            out.append(values.to_numpy().astype(np.float64))
        return out[0], out[1]
