"""Length measures for responses: characters, whitespace words, or tokens of a local tokenizer (offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError

TOKEN_BATCH = 1024
KINDS = ("chars", "words", "tokens:<tokenizer-dir>")


class LengthMeasure:
    """`measure(texts)` -> float64 lengths. `spec` is how it is named on the command line and in model files."""

    def __init__(self, spec: str):
        kind, _, path = spec.partition(":")
        if kind in ("chars", "words") and not path:
            self._tokenizer = None
        elif kind == "tokens" and path:
            self._tokenizer = _load_tokenizer(path)
        else:
            raise InputError(f"--length: expected one of {', '.join(KINDS)}, got '{spec}'")
        self.spec = spec
        self.kind = kind

    def __call__(self, texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
        if self.kind == "chars":
            return pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.float64)
        if self.kind == "words":
            words = pc.list_value_length(pc.utf8_split_whitespace(texts))
            return words.to_numpy(zero_copy_only=False).astype(np.float64)
        values = texts.to_pylist()
        out = np.empty(len(values), dtype=np.float64)
        for start in range(0, len(values), TOKEN_BATCH):
            ids = self._tokenizer(values[start:start + TOKEN_BATCH], add_special_tokens=False,
                                  return_attention_mask=False, verbose=False)["input_ids"]
            out[start:start + len(ids)] = [len(x) for x in ids]
        return out


def _load_tokenizer(path: str):
    if not Path(path).is_dir():
        raise InputError(f"--length tokens:{path}: no such tokenizer directory (give a local path; nothing is downloaded)")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--length tokens:{path}: cannot load a tokenizer there ({first[:160]})") from None
