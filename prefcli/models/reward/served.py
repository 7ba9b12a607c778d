"""`served:<model>,base_url=URL[,api=vllm|sglang|tei,...]`: a sequence-classification reward model behind a server.

The text sent is the one `hf:` scores: the tokenizer's chat template over (prompt + assistant response),
or the plain `role: content` fallback; the tokenizer comes from `tokenizer=PATH` (default: the model
name, as a local path or a cached hub id). The raw score (logit) is read:

- api=vllm (`vllm serve M --runner pooling`): POST /classify with `use_activation: false` (vLLM applies
  a sigmoid to one-label classifiers by default, which squashes rewards; vLLM releases before the
  rename call the flag `activation`: activation_field=activation), or endpoint=pooling: POST
  /pooling, whose `data` is the pooler output. max_length=N sends `truncate_prompt_tokens` (keep the last N tokens,
  as hf: does); without it the server's --max-model-len rejects longer inputs (counted as http_400).
- api=sglang (`--is-embedding`): POST /classify {"text": [...]}, each answer's `embedding[0]` is the reward.
- api=tei (text-embeddings-inference): POST /predict with `raw_scores: true`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from ...text import digest, render_messages
from .base import column_safe
from .hf import plain_template
from .remote import COMMON_OPTIONS, RemoteCache, RemoteClient, RemoteVoter, Transient, cached_map, parse_options

APIS = ("vllm", "sglang", "tei")
OPTIONS = dict(COMMON_OPTIONS, api="vllm", endpoint="classify", tokenizer="", template="auto", batch=16,
               max_length=0, activation_field="use_activation", name="")


class ServedRewardModel(RemoteVoter):
    """A pointwise voter: (prompt, response) -> raw reward from the server; NaN where the server failed."""

    remote = True

    def __init__(self, arg: str, *, name: str | None = None, cache_dir: str | None = None, use_cache: bool = True):
        self.model, opts = parse_options(arg, "served", OPTIONS)
        where = f"--rm served:{self.model}"
        if opts["api"] not in APIS:
            raise InputError(f"{where}: api={opts['api']!r}, expected one of {', '.join(APIS)}")
        if opts["endpoint"] not in ("classify", "pooling"):
            raise InputError(f"{where}: endpoint={opts['endpoint']!r}, expected classify or pooling")
        if opts["template"] not in ("auto", "plain"):
            raise InputError(f"{where}: template={opts['template']!r}, expected auto or plain")
        if opts["batch"] < 1:
            raise InputError(f"{where}: batch must be at least 1")
        self.opts = opts
        self.where = where
        self.name = column_safe(name or opts["name"] or Path(self.model.rstrip("/")).name)
        self.tokenizer_source = opts["tokenizer"] or self.model
        # the server's weights are out of sight: the model name, api and text rendering make the namespace
        self.model_id = (f"served:{self.model}|api={opts['api']}/{opts['endpoint']}|template={opts['template']}"
                         f"|tok={digest(str(Path(self.tokenizer_source).resolve()) if Path(self.tokenizer_source).exists() else self.tokenizer_source)[:12]}"
                         f"|max_length={opts['max_length']}")
        self.client = RemoteClient(opts["base_url"], where=where, api_key_env=opts["api_key_env"],
                                   timeout=opts["timeout"], max_retries=opts["max_retries"],
                                   concurrency=opts["concurrency"], max_requests=opts["max_requests"],
                                   backoff=opts["backoff"])
        self.cache = RemoteCache(f"rm/{self.model_id}", 1, cache_dir, use_cache)
        self._tokenizer = None
        self.failures: dict[str, int] = {}

    # -- text, as hf: renders it
    def _load_tokenizer(self):
        if self._tokenizer is None and self.opts["template"] == "auto":
            from transformers import AutoTokenizer

            from ..embed import quiet_hf

            quiet_hf()
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_source)
            except Exception as exc:
                raise InputError(f"{self.where}: cannot load tokenizer {self.tokenizer_source!r} "
                                 f"({str(exc).strip().splitlines()[0][:160]}); give tokenizer=PATH or "
                                 "template=plain") from None
        return self._tokenizer

    def render(self, prompts: Sequence[list[dict]], responses: Sequence[str]) -> tuple[list[str], bool]:
        """(texts, templated): templated texts already hold the special tokens the template puts in."""
        tok = self._load_tokenizer()
        if tok is not None and getattr(tok, "chat_template", None):
            return [tok.apply_chat_template(list(p) + [{"role": "assistant", "content": r}], tokenize=False)
                    for p, r in zip(prompts, responses)], True
        return [plain_template(p, r) for p, r in zip(prompts, responses)], False

    # -- one request per batch of texts
    def _request(self, batch: list[tuple[str, bool]]) -> np.ndarray:
        texts = [t for t, _ in batch]
        special = not batch[0][1]
        api, endpoint = self.opts["api"], self.opts["endpoint"]
        if api == "vllm":
            payload: dict[str, Any] = {"model": self.model, "input": texts, self.opts["activation_field"]: False,
                                       "add_special_tokens": special}
            if self.opts["max_length"]:  # keep the last max_length tokens, as hf: does
                payload["truncate_prompt_tokens"] = self.opts["max_length"]
            return self.client.call(f"/{endpoint}", payload, lambda body: self._parse_vllm(body, len(texts)))
        if api == "sglang":
            return self.client.call("/classify", {"model": self.model, "text": texts},
                                    lambda body: self._parse_sglang(body, len(texts)))
        return self.client.call("/predict", {"inputs": texts, "raw_scores": True, "truncate": True},
                                lambda body: self._parse_tei(body, len(texts)))

    def _parse_vllm(self, body: Any, n: int) -> np.ndarray:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != n:
            raise Transient("bad_answer", "expected one result per input in `data`")
        self.client.add_usage(body)
        out = np.zeros(n)
        for pos, item in enumerate(data):
            if not isinstance(item, dict):
                raise Transient("bad_answer", "a `data` item is not an object")
            values = item.get("probs") if "probs" in item else item.get("data")
            out[int(item.get("index", pos))] = _one_score(values)
        return out

    def _parse_sglang(self, body: Any, n: int) -> np.ndarray:
        if isinstance(body, dict):
            body = [body]
        if not isinstance(body, list) or len(body) != n:
            raise Transient("bad_answer", "expected one result per input")
        out = np.zeros(n)
        for pos, item in enumerate(body):
            if not isinstance(item, dict):
                raise Transient("bad_answer", "a result is not an object")
            out[pos] = _one_score(item.get("embedding"))
            meta = item.get("meta_info") or {}
            self.client.add_usage({"usage": {"prompt_tokens": meta.get("prompt_tokens", 0)}})
        return out

    def _parse_tei(self, body: Any, n: int) -> np.ndarray:
        if not isinstance(body, list) or len(body) != n:
            raise Transient("bad_answer", "expected one result per input")
        out = np.zeros(n)
        for pos, item in enumerate(body):
            item = item[0] if isinstance(item, list) and item else item
            out[pos] = _one_score([item.get("score")] if isinstance(item, dict) else None)
        return out

    # -- the voter interface
    def fit(self, pairs, *, seed: int) -> None:
        return None

    def score(self, prompts: Sequence[list[dict]], responses: Sequence[str]) -> np.ndarray:
        """Raw reward per item; NaN where the server gave no usable answer (counted in `failures`)."""
        prompts, responses = list(prompts), list(responses)
        keys = [digest(digest(render_messages(p)) + digest(r)) for p, r in zip(prompts, responses)]
        unique = list(dict.fromkeys(keys))
        where_first = {k: i for i, k in reversed(list(enumerate(keys)))}
        found, _ = self.cache.get(unique)
        items: list[Any] = [None] * len(unique)
        todo = [i for i in range(len(unique)) if not found[i]]
        if todo:
            rows = [where_first[unique[i]] for i in todo]
            texts, templated = self.render([prompts[r] for r in rows], [responses[r] for r in rows])
            for i, text in zip(todo, texts):
                items[i] = (text, templated)
        values, reasons = cached_map(self.client, self.cache, unique, items, self._request,
                                     batch=self.opts["batch"])
        for reason in reasons:
            if reason is not None:
                self.failures[reason] = self.failures.get(reason, 0) + 1
        position = {k: i for i, k in enumerate(unique)}
        return values[[position[k] for k in keys], 0]



def _one_score(values: Any) -> float:
    """The single reward in a result: [x] or [[x]] (pooling) or x; anything else is a bad answer."""
    while isinstance(values, list) and len(values) == 1:
        values = values[0]
    if isinstance(values, bool) or not isinstance(values, (int, float)) or not math.isfinite(values):
        raise Transient("bad_answer", "expected one finite score per input (a 1-label reward model)")
    return float(values)
