"""`hf:<local-path-or-hub-id>`: a transformers sequence-classification reward model with one output.

- The model's chat template renders (prompt messages + assistant response); a plain
  `role: content` template is the fallback when the tokenizer has none.
- Items are sorted by token length and padded per batch (dynamic padding), so a batch costs
  what its longest member costs; scores come back in input order.
- bf16 on CUDA, fp32 on CPU. Sequences over `max_length` tokens keep their last `max_length`
  tokens (the end of the response, where the reward is read) and are counted in `truncated`.
- Safetensors only; `trust_remote_code` stays off unless asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import InputError
from ...text import digest
from ..embed import quiet_hf, resolve_device
from .base import PointwiseRewardModel, column_safe

DEFAULT_MAX_LENGTH = 4096
DEFAULT_BATCH_SIZE = 8


def _fingerprint(source: str) -> str:
    """Names, sizes and mtimes of a local model's weight files: new weights mean a new cache namespace."""
    root = Path(source)
    if not root.is_dir():
        return "hub"
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(root.glob("*.safetensors"))]
    return digest("|".join(parts))[:12]


def plain_template(prompt: Sequence[dict], response: str) -> str:
    """Fallback rendering when the tokenizer has no chat template."""
    turns = list(prompt) + [{"role": "assistant", "content": response}]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in turns)


class HFRewardModel(PointwiseRewardModel):
    def __init__(self, source: str, *, name: str | None = None, device: str = "auto",
                 max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = DEFAULT_BATCH_SIZE,
                 trust_remote_code: bool = False, cache_dir: str | None = None, use_cache: bool = True):
        super().__init__(cache_dir=cache_dir, use_cache=use_cache)
        if not source:
            raise InputError("--rm hf: expected hf:<local-path-or-hub-id>")
        if max_length < 8:
            raise InputError(f"--max-length: expected at least 8 tokens, got {max_length}")
        if batch_size < 1:
            raise InputError(f"--batch-size: expected at least 1, got {batch_size}")
        self.source = source
        self.device = resolve_device(device)
        self.max_length = max_length
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.name = column_safe(name or Path(source.rstrip("/")).name)
        dtype = "bf16" if self.device == "cuda" else "fp32"
        self.model_id = f"hf:{os.path.abspath(source) if Path(source).exists() else source}" \
                        f"|{_fingerprint(source)}|max_length={max_length}|{dtype}"
        self.truncated = 0
        self.tokens = 0
        self._model = None
        self._tokenizer = None

    # -- loading
    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        quiet_hf()
        where = f"--rm hf:{self.source}"
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.source, trust_remote_code=self.trust_remote_code)
            model = AutoModelForSequenceClassification.from_pretrained(
                self.source, trust_remote_code=self.trust_remote_code, use_safetensors=True,
                dtype=torch.bfloat16 if self.device == "cuda" else torch.float32)
        except Exception as exc:  # missing files, no safetensors, remote code refused, hub offline
            raise InputError(f"{where}: cannot load ({str(exc).strip().splitlines()[0][:200]})") from None
        if model.config.num_labels != 1:
            raise InputError(f"{where}: expected a reward model with 1 output, it has {model.config.num_labels}")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        model.config.pad_token_id = tokenizer.pad_token_id
        self._tokenizer, self._model = tokenizer, model.to(self.device).eval()

    # -- tokenising
    def encode(self, prompts: Sequence[list[dict]], responses: Sequence[str]) -> list[list[int]]:
        """Token ids per item, chat template (or plain fallback) applied, truncated to max_length."""
        self._load()
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            texts = [tok.apply_chat_template(list(p) + [{"role": "assistant", "content": r}], tokenize=False)
                     for p, r in zip(prompts, responses)]
            ids = tok(texts, add_special_tokens=False)["input_ids"]
        else:
            ids = tok([plain_template(p, r) for p, r in zip(prompts, responses)])["input_ids"]
        out = []
        for seq in ids:
            if len(seq) > self.max_length:
                self.truncated += 1
                seq = seq[-self.max_length:]
            out.append(list(seq))
        return out

    # -- scoring
    def _score_uncached(self, prompts: Sequence[list[dict]], responses: Sequence[str]) -> np.ndarray:
        import torch

        ids = self.encode(prompts, responses)
        order = np.argsort([-len(s) for s in ids], kind="stable")
        scores = np.zeros(len(ids), dtype=np.float64)
        pad = self._tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                    mask[row, :len(ids[i])] = 1
                self.tokens += int(mask.sum())
                logits = self._model(input_ids=input_ids.to(self.device),
                                     attention_mask=mask.to(self.device)).logits
                scores[batch] = logits[:, 0].float().cpu().numpy()
        return scores
