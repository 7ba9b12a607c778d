"""Memoise a vector-valued function of keyed items in a VectorStore: the embedding cache and the reward-score
cache are both this."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .vectors import VectorStore


def memoised(keys: Sequence[str], store: VectorStore | None, compute: Callable[[list[int]], np.ndarray], *,
             width: Callable[[], int], dtype: type = np.float32) -> tuple[np.ndarray, int]:
    """One row of values per key, and how many keys had to be computed.

    A repeated key is looked up and computed once; keys found in `store` are read from it; the rest are
    computed by `compute(rows)` (rows: the first position of each missing key, returning one row each)
    and written back. Without a store every key is computed; `width()` is asked only then.
    """
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    unique = list(first)
    if store is None:  # every key computed: the computed rows are the values (no second copy)
        missing = np.arange(len(unique))
        values = (np.asarray(compute([first[k] for k in unique]), dtype).reshape(len(unique), -1) if unique
                  else np.zeros((0, width()), dtype))
    else:
        found, values = store.get(unique)
        values = values.astype(dtype, copy=False)
        missing = np.flatnonzero(~found)
        if len(missing):
            fresh = np.asarray(compute([first[unique[i]] for i in missing]), dtype).reshape(len(missing), -1)
            values[missing] = fresh
            store.put([unique[i] for i in missing], fresh)
    if len(unique) == len(keys):  # no repeated key: `unique` is `keys`, in order
        return values, len(missing)
    position = {k: i for i, k in enumerate(unique)}
    return values[[position[k] for k in keys]], len(missing)
