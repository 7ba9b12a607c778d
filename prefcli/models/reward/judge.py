"""`judge:<model>,base_url=URL[,mode=pairwise|pointwise,template=FILE,both_orders=true,...]`: an LLM judge
over the OpenAI chat-completions protocol (vLLM, SGLang, TGI, hosted APIs).

- pairwise (default): the prompt and two responses as A and B; the verdict is `[[A]]`, `[[B]]` or `[[C]]`
  (tie), MT-Bench style. With both_orders (default) every pair is also asked with A and B swapped;
  verdicts that disagree count as a tie and are reported as inconsistent (position bias).
  The margin (chosen over rejected) is P(A) - P(B) of the verdict token when the server returns
  logprobs, averaged over both orders; otherwise +1 / -1 / 0 from the verdicts.
- pointwise: a 1-10 rating per response, UltraFeedback style, read from `[[N]]`.
- template=FILE: the user message with {question}, {answer_a}, {answer_b} (pairwise) or {question},
  {answer} (pointwise); lines above a line `---` are the system message.
- choices=true (vLLM): constrain the answer to the verdicts (`structured_outputs: {"choice": [...]}`), so a
  small judge always answers in the format and the logprobs are a distribution over the verdicts.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from ...text import digest, render_messages
from .base import column_safe
from .remote import COMMON_OPTIONS, RemoteCache, RemoteClient, RemoteVoter, Transient, cached_map, parse_options

PAIRWISE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. Choose the assistant that follows the user's instructions and "
    "answers the user's question better, considering helpfulness, relevance, accuracy, depth and harmlessness. "
    "Do not let the order in which the responses were presented, their length or the assistants' names "
    "influence your decision. Be as objective as possible. Output only your final verdict, strictly in this "
    'format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.')
PAIRWISE_USER = ("[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n"
                 "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
                 "[The End of Assistant B's Answer]")
POINTWISE_SYSTEM = (
    "Please act as an impartial judge and rate the response of an AI assistant to the user question below "
    "for overall quality: helpfulness, honesty, instruction following and truthfulness. Output only your "
    'rating on a scale of 1 to 10, strictly in this format: "[[5]]".')
POINTWISE_USER = ("[User Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
                  "[The End of Assistant's Answer]")
VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
OPTIONS = dict(COMMON_OPTIONS, mode="pairwise", template="", both_orders=True, logprobs=True, top_logprobs=5,
               max_tokens=512, temperature=0.0, choices=False, name="")
CODE = {"A": 1.0, "B": -1.0, "C": 0.0}


def load_template(path: str, mode: str, where: str) -> tuple[str, str]:
    """(system, user) messages; the built-in MT-Bench / UltraFeedback-style ones when no file is given."""
    if not path:
        return (PAIRWISE_SYSTEM, PAIRWISE_USER) if mode == "pairwise" else (POINTWISE_SYSTEM, POINTWISE_USER)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: template {path}: unreadable ({exc.__class__.__name__})") from None
    system, sep, user = text.partition("\n---\n")
    if not sep:
        system, user = "", text
    need = ("{question}", "{answer_a}", "{answer_b}") if mode == "pairwise" else ("{question}", "{answer}")
    missing = [n for n in need if n not in user]
    if missing:
        raise InputError(f"{where}: template {path}: the user message lacks {missing[0]}")
    return system.strip(), user.strip()


class JudgeModel(RemoteVoter):
    """An LLM judge as a voter: pairwise (pair -> margin) or pointwise (response -> 1..10 rating)."""

    remote = True

    def __init__(self, arg: str, *, name: str | None = None, cache_dir: str | None = None, use_cache: bool = True):
        self.model, opts = parse_options(arg, "judge", OPTIONS)
        where = f"--rm judge:{self.model}"
        if opts["mode"] not in ("pairwise", "pointwise"):
            raise InputError(f"{where}: mode={opts['mode']!r}, expected pairwise or pointwise")
        self.opts, self.where = opts, where
        self.mode = opts["mode"]
        self.pairwise = self.mode == "pairwise"
        self.system, self.user = load_template(opts["template"], self.mode, where)
        self.name = column_safe(name or opts["name"] or f"judge_{Path(self.model.rstrip('/')).name}")
        template = digest(f"{self.system}\x00{self.user}\x00{opts['max_tokens']}\x00{opts['temperature']}")[:12]
        self.model_id = (f"judge:{self.model}|{self.mode}|template={template}|logprobs={opts['logprobs']}"
                         f"|choices={opts['choices']}")
        self.client = RemoteClient(opts["base_url"], where=where, api_key_env=opts["api_key_env"],
                                   timeout=opts["timeout"], max_retries=opts["max_retries"],
                                   concurrency=opts["concurrency"], max_requests=opts["max_requests"],
                                   backoff=opts["backoff"])
        # pairwise: per (prompt, A, B) the verdict code and P(A) - P(B) (NaN without logprobs)
        self.cache = RemoteCache(f"judge/{self.model_id}", 2 if self.pairwise else 1, cache_dir, use_cache)
        self.failures: dict[str, int] = {}
        self.inconsistent: np.ndarray | None = None  # per pair of the last margin_pairs call; NaN: not judged

    # -- requests
    def _messages(self, question: str, answers: dict[str, str]) -> list[dict]:
        user = self.user.replace("{question}", question)
        for key, value in answers.items():  # responses last, so braces inside them stay as written
            user = user.replace("{" + key + "}", value)
        return ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": user}]

    def _chat(self, messages: list[dict], parse) -> np.ndarray:
        payload: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.opts["temperature"],
                                   "max_tokens": self.opts["max_tokens"]}
        if self.opts["logprobs"]:
            payload.update(logprobs=True, top_logprobs=self.opts["top_logprobs"])
        if self.opts["choices"]:  # vLLM structured outputs: the answer can only be one of the verdicts
            verdicts = ["[[A]]", "[[B]]", "[[C]]"] if self.pairwise else [f"[[{k}]]" for k in range(1, 11)]
            payload["structured_outputs"] = {"choice": verdicts}

        def read(body):
            try:
                choice = body["choices"][0]
                content = choice["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise Transient("bad_answer", "no choices[0].message.content") from None
            value = parse(content, choice.get("logprobs"))
            self.client.add_usage(body)
            return value

        return self.client.call("/chat/completions", payload, read)

    def _ask_pair(self, item) -> np.ndarray:
        question, a, b = item[0]
        return self._chat(self._messages(question, {"answer_a": a, "answer_b": b}), _parse_verdict)[None, :]

    def _ask_rating(self, item) -> np.ndarray:
        question, answer = item[0]
        return self._chat(self._messages(question, {"answer": answer}), _parse_rating)[None, :]

    def _map(self, keys: list[str], items: list, fn) -> np.ndarray:
        unique = list(dict.fromkeys(keys))
        first = {k: items[i] for i, k in reversed(list(enumerate(keys)))}
        values, reasons = cached_map(self.client, self.cache, unique, [first[k] for k in unique], fn, batch=1)
        for reason in reasons:
            if reason is not None:
                self.failures[reason] = self.failures.get(reason, 0) + 1
        position = {k: i for i, k in enumerate(unique)}
        return values[[position[k] for k in keys]]

    # -- pairwise voter
    def margin_pairs(self, prompts: Sequence[list[dict]], first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """Margin of `first` over `second` per pair, in [-1, 1]; NaN where the judge gave no usable verdict."""
        questions = [render_messages(p) for p in prompts]
        qh = [digest(q) for q in questions]
        fh, sh = [digest(x) for x in first], [digest(x) for x in second]
        orders = [(questions, first, second, qh, fh, sh)]
        if self.opts["both_orders"]:
            orders.append((questions, second, first, qh, sh, fh))
        per_order = [([digest(x + y + z) for x, y, z in zip(hq, ha, hb)], list(zip(q, a, b)))
                     for q, a, b, hq, ha, hb in orders]
        # both orders of a pair side by side, so a budget cut or a kill leaves whole pairs answered
        keys = [k for ks in zip(*(o[0] for o in per_order)) for k in ks]
        items = [it for its in zip(*(o[1] for o in per_order)) for it in its]
        step = len(per_order)
        answers = self._map(keys, items, self._ask_pair)
        answers = np.concatenate([answers[i::step] for i in range(step)])
        n = len(first)
        verdict1, lp1 = answers[:n, 0], answers[:n, 1]
        if not self.opts["both_orders"]:
            self.inconsistent = np.full(n, np.nan)
            return np.where(np.isfinite(lp1), lp1, verdict1)
        verdict2, lp2 = -answers[n:, 0], -answers[n:, 1]  # swapped back: + means `first` is better
        answered = np.isfinite(verdict1) & np.isfinite(verdict2)
        inconsistent = answered & (verdict1 != verdict2)
        with np.errstate(invalid="ignore"):
            soft = np.isfinite(lp1) & np.isfinite(lp2)
            margin = np.where(soft, (lp1 + lp2) / 2, verdict1)
        margin = np.where(inconsistent, 0.0, margin)
        margin[~answered] = np.nan
        self.inconsistent = np.where(answered, inconsistent.astype(np.float64), np.nan)
        return margin

    # -- pointwise voter
    def score(self, prompts: Sequence[list[dict]], responses: Sequence[str]) -> np.ndarray:
        if self.pairwise:
            raise InputError(f"{self.where}: a pairwise judge compares two responses; use mode=pointwise to "
                             "score single responses")
        questions = [render_messages(p) for p in prompts]
        keys = [digest(digest(q) + digest(r)) for q, r in zip(questions, responses)]
        return self._map(keys, list(zip(questions, responses)), self._ask_rating)[:, 0]

    def fit(self, pairs, *, seed: int) -> None:
        return None

    def score_pairs(self, pairs) -> tuple[np.ndarray, np.ndarray]:
        if not self.pairwise:
            return super().score_pairs(pairs)
        # the two columns of a pairwise voter are +-margin/2, so chosen - rejected = margin
        margin = self.margin_pairs(pairs.column("prompt").to_pylist(), pairs.column("chosen").to_pylist(),
                                   pairs.column("rejected").to_pylist())
        return margin / 2, -margin / 2


def _verdict_probs(logprobs: Any, content: str, match: re.Match) -> float:
    """P(A) - P(B) at the verdict token, from chat-completions `logprobs.content[i].top_logprobs`; NaN if absent."""
    items = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(items, list):
        return math.nan
    offset, target = 0, match.start(1)
    for item in items:
        token = item.get("token", "") if isinstance(item, dict) else ""
        if offset <= target < offset + len(token):
            if token.strip() != match.group(1):
                return math.nan  # the letter shares a token with other text: no clean distribution
            probs = {"A": 0.0, "B": 0.0}
            for alt in item.get("top_logprobs") or []:
                letter = str(alt.get("token", "")).strip()
                if letter in probs and isinstance(alt.get("logprob"), (int, float)):
                    probs[letter] += math.exp(alt["logprob"])
            return probs["A"] - probs["B"]
        offset += len(token)
    return math.nan


def _parse_verdict(content: str, logprobs: Any) -> np.ndarray:
    matches = list(VERDICT.finditer(content))
    if not matches:
        raise Transient("unparseable", "no [[A]], [[B]] or [[C]] verdict")
    last = matches[-1]
    return np.array([CODE[last.group(1)], _verdict_probs(logprobs, content, last)])


def _parse_rating(content: str, logprobs: Any) -> np.ndarray:
    matches = RATING.findall(content)
    if not matches or not 1 <= float(matches[-1]) <= 10:
        raise Transient("unparseable", "no [[N]] rating from 1 to 10")
    return np.array([float(matches[-1])])
