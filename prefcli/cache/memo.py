"""Memoise a vector-valued function of keyed items in a VectorStore: the embedding cache and the reward-score
cache are both this."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..models.index import SpilledVectors
from .vectors import VectorStore


def memoised(keys: Sequence[str], store: VectorStore | None, compute: Callable[[list[int]], np.ndarray], *,
             width: Callable[[], int], dtype: type = np.float32) -> tuple[np.ndarray, int]:
    """One row of values per key, and how many keys had to be computed.

    A repeated key is looked up and computed once; keys found in `store` are read from it; the rest are
    computed by `compute(rows)` (rows: the first position of each missing key, returning one row each)
    and written back. Without a store every key is computed; `width()` is asked only then.
    """
    values, row_of, computed = memoised_distinct(keys, store, compute, width=width, dtype=dtype)
    if len(values) == len(keys):  # no repeated key: the distinct keys are `keys`, in order
        return values, computed
    return values[row_of], computed


def memoised_distinct(keys: Sequence[str], store: VectorStore | None, compute: Callable[[list[int]], np.ndarray], *,
                      width: Callable[[], int], dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray, int]:
    """memoised without the repeats: (one row per distinct key in first-seen order, each key's row in it,
    how many keys had to be computed). A million texts with repeats never cost a second copy of their vectors."""
    row_of_key: dict[str, int] = {}
    first: list[int] = []  # the first position of each distinct key
    row_of = np.empty(len(keys), np.int64)
    for i, key in enumerate(keys):
        row = row_of_key.setdefault(key, len(first))
        if row == len(first):
            first.append(i)
        row_of[i] = row
    if store is None:  # every key computed: the computed rows are the values (no second copy)
        computed = len(first)
        if not first:
            return np.zeros((0, width()), dtype), row_of, computed
        values = compute(first)  # an array, or rows held elsewhere (a SpilledVectors: rows read back on demand)
        if not isinstance(values, SpilledVectors):
            values = np.asarray(values, dtype).reshape(len(first), -1)
        return values, row_of, computed
    unique = list(row_of_key)
    found, values = store.get(unique)
    values = values.astype(dtype, copy=False)
    missing = np.flatnonzero(~found)
    if len(missing):
        fresh = np.asarray(compute([first[i] for i in missing]), dtype).reshape(len(missing), -1)
        values[missing] = fresh
        store.put([unique[i] for i in missing], fresh)
    return values, row_of, len(missing)
