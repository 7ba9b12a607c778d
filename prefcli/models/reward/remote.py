"""What `served:` and `judge:` share: spec options, an HTTP client with retries, bounded concurrency,
a request budget, token accounting, failure counting and a cache written as answers arrive.

- Requests go through one `httpx.Client` (connection pool = concurrency) from a thread pool.
- 429, 5xx, timeouts, connection errors and unparseable answers are retried with exponential
  backoff and jitter (tenacity), or after the server's Retry-After when longer; after the last try
  the item is counted as failed under a reason and gets NaN: the caller turns NaN into "no vote from this voter", never into a score.
- `max_requests` caps the HTTP requests sent (retries included); items past it fail as `budget`.
- Answers go to the VectorStore in small shards as they arrive (at most FLUSH_SECONDS apart), so a
  killed run resumes without re-asking; failures are never cached, so a rerun asks them again.
- The API key is read from the environment (`api_key_env`) at request time and kept nowhere else.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ...cache.vectors import VectorStore
from ...errors import InputError
from ...options import coerce, parse_key_values

FLUSH_SECONDS = 0.2
TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class AnswerError(Exception):
    """One request's answer is unusable; `reason` names the failure counter."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Transient(AnswerError):
    """Worth another try (429, 5xx, timeout, connection error, unparseable answer)."""

    def __init__(self, reason: str, detail: str = "", retry_after: float = 0.0):
        super().__init__(reason, detail)
        self.retry_after = retry_after  # the server's Retry-After, seconds (0: none)


MAX_RETRY_AFTER = 60.0


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 0), 0.0), MAX_RETRY_AFTER)
    except ValueError:  # an HTTP date: fall back to the backoff
        return 0.0


class BudgetSpent(AnswerError):
    def __init__(self):
        super().__init__("budget", "max_requests reached")


def expand_env(value: str, where: str) -> str:
    """`${NAME}` / `$NAME` from the environment, so one pipeline TOML serves laptop and cluster."""
    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            raise InputError(f"{where}: environment variable {name} is not set")
        return os.environ[name]

    return _ENV.sub(sub, value)


def parse_options(arg: str, backend: str, allowed: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`<model>,key=value,...` -> (model, options typed like the defaults in `allowed`)."""
    where = f"--rm {backend}:{arg}"
    model, *rest = [p.strip() for p in arg.split(",")]
    if not model or "=" in model:
        raise InputError(f"{where}: expected {backend}:<model>,base_url=URL[,key=value...]")
    opts = dict(allowed)
    for key, value in parse_key_values(rest, where).items():
        if key not in allowed:
            raise InputError(f"{where}: unknown option '{key}' (expected {', '.join(sorted(allowed))})")
        opts[key] = coerce(expand_env(value, where), allowed[key], where, key)
    if opts.get("base_url_env"):
        name = opts["base_url_env"]
        if not os.environ.get(name):
            raise InputError(f"{where}: environment variable {name} (base_url_env) is not set")
        opts["base_url"] = os.environ[name]
    if not opts.get("base_url"):
        raise InputError(f"{where}: needs base_url=URL (or base_url_env=NAME)")
    if not re.match(r"^https?://", opts["base_url"]):
        raise InputError(f"{where}: base_url must start with http:// or https://")
    for key in ("concurrency", "max_retries", "max_requests", "timeout"):
        if key in opts and opts[key] is not None and opts[key] < (0 if key in ("max_retries", "max_requests") else 1e-9):
            raise InputError(f"{where}: {key} must be positive, got {opts[key]}")
    return model, opts


COMMON_OPTIONS: dict[str, Any] = {
    "base_url": "", "base_url_env": "", "api_key_env": "OPENAI_API_KEY", "concurrency": 8, "timeout": 60.0,
    "max_retries": 4, "max_requests": 0, "backoff": 0.5,
}


@dataclass
class RemoteStats:
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    cache_hits: int = 0
    computed: int = 0  # items answered by the server in this run
    failed: Counter = field(default_factory=Counter)  # items given up on, by reason
    errors: Counter = field(default_factory=Counter)  # every failed attempt, by reason
    first_error: dict = field(default_factory=dict)  # reason -> the first message seen, for the summary
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "retries": self.retries, "cache_hits": self.cache_hits,
                "computed": self.computed, "failed": int(sum(self.failed.values())),
                "failed_by_reason": dict(sorted(self.failed.items())),
                "attempt_errors": dict(sorted(self.errors.items())),
                "first_error": dict(sorted(self.first_error.items())),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


class RemoteClient:
    """POST JSON with retries, a request budget and bounded concurrency; thread-safe counters."""

    def __init__(self, base_url: str, *, where: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 4, concurrency: int = 8, max_requests: int = 0, backoff: float = 0.5):
        self.base_url = base_url.rstrip("/")
        self.where = where
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = max(1, int(concurrency))
        self.max_requests = max_requests or 0
        self.backoff = backoff
        self.stats = RemoteStats()
        self._lock = threading.Lock()
        self._client = None

    def _http(self):
        if self._client is None:
            import httpx

            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            self._client = httpx.Client(timeout=httpx.Timeout(self.timeout), limits=limits)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env, "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _count(self, **inc: int) -> None:
        with self._lock:
            for key, value in inc.items():
                setattr(self.stats, key, getattr(self.stats, key) + value)

    def _post_once(self, path: str, payload: dict) -> Any:
        import httpx

        with self._lock:
            if self.max_requests and self.stats.requests >= self.max_requests:
                raise BudgetSpent()
            self.stats.requests += 1
        try:
            resp = self._http().post(f"{self.base_url}{path}", json=payload, headers=self._headers())
        except httpx.TimeoutException as exc:
            raise Transient("timeout", type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise Transient("connection", type(exc).__name__) from None
        if resp.status_code in TRANSIENT_STATUS:
            raise Transient(f"http_{resp.status_code}", retry_after=_retry_after(resp.headers.get("Retry-After")))
        if resp.status_code >= 400:  # 400/401/404...: asking again will not help
            raise AnswerError(f"http_{resp.status_code}", resp.text[:200])
        try:
            return resp.json()
        except ValueError:
            raise Transient("bad_json") from None

    def call(self, path: str, payload: dict, parse: Callable[[Any], Any]) -> Any:
        """POST and parse; transient failures (parse errors included) are retried with backoff."""
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

        def attempt():
            try:
                return parse(self._post_once(path, payload))
            except AnswerError as exc:
                with self._lock:
                    self.stats.errors[exc.reason] += 1
                    self.stats.first_error.setdefault(exc.reason, str(exc)[:200])
                raise

        def before_sleep(state):
            self._count(retries=1)

        backoff = wait_exponential(multiplier=self.backoff, max=30.0) + wait_random(0, self.backoff)

        def wait(state) -> float:  # exponential backoff, or longer when the server says so (Retry-After)
            exc = state.outcome.exception() if state.outcome else None
            return max(backoff(state), getattr(exc, "retry_after", 0.0))

        retrying = Retrying(stop=stop_after_attempt(self.max_retries + 1), reraise=True,
                            retry=retry_if_exception_type(Transient), before_sleep=before_sleep, wait=wait)
        return retrying(attempt)

    def add_usage(self, body: Any) -> None:
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict):
            self._count(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0))

    def run(self, jobs: Sequence[Any], fn: Callable[[Any], np.ndarray], on_done: Callable[[list, list], None],
            sizes: Sequence[int] | None = None) -> tuple[list[np.ndarray | None], list[str | None]]:
        """fn(job) for every job on `concurrency` threads; on_done(indices, values) is called with answers as
        they arrive (at most FLUSH_SECONDS apart). Returns (values or None, failure reason or None) per job."""
        values: list[np.ndarray | None] = [None] * len(jobs)
        reasons: list[str | None] = [None] * len(jobs)
        pending_i: list[int] = []
        pending_v: list[np.ndarray] = []
        last = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            waiting = set(futures)
            while waiting:
                done, waiting = wait(waiting, timeout=FLUSH_SECONDS, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = futures[fut]
                    try:
                        values[i] = fut.result()
                        pending_i.append(i)
                        pending_v.append(values[i])
                    except AnswerError as exc:
                        reasons[i] = exc.reason
                    except Exception as exc:  # a bug in parsing must not lose the row
                        reasons[i] = f"error_{type(exc).__name__}"
                if pending_i and (time.monotonic() - last >= FLUSH_SECONDS or not waiting):
                    on_done(pending_i, pending_v)
                    pending_i, pending_v = [], []
                    last = time.monotonic()
        except BaseException:  # Ctrl-C, or a cache write failing: keep what arrived, ask nothing more
            pool.shutdown(wait=False, cancel_futures=True)
            if pending_i:
                on_done(pending_i, pending_v)
            raise
        pool.shutdown()
        sizes = list(sizes) if sizes is not None else [1] * len(jobs)
        for size, value, reason in zip(sizes, values, reasons):
            if reason is not None:
                self.stats.failed[reason] += size
            else:
                self.stats.computed += size
        return values, reasons


class RemoteCache:
    """Answers (fixed-width float vectors) of one backend/model/template namespace, written as they arrive."""

    def __init__(self, namespace: str, dim: int, cache_dir: str | None, enabled: bool):
        self.store = VectorStore(cache_dir, namespace, dim) if enabled else None
        self.dim = dim
        self.writes = 0

    def get(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.store is None or not keys:
            return np.zeros(len(keys), bool), np.zeros((len(keys), self.dim), np.float32)
        return self.store.get(keys)

    def put(self, keys: list[str], values: list[np.ndarray]) -> None:
        if self.store is not None and keys:
            self.store.put(keys, np.asarray(values, np.float32).reshape(len(keys), self.dim))
            self.writes += 1

    def compact_if_fragmented(self, shards: int = 64) -> None:
        """Many small shards from arrival-time writes slow the next load: merge them after a run."""
        if self.store is not None and self.writes > 1 and len(self.store._listing()) > shards:
            self.store.compact()


def cached_map(client: RemoteClient, cache: RemoteCache, keys: list[str], items: list[Any],
               fn: Callable[[list[Any]], np.ndarray], batch: int = 1) -> tuple[np.ndarray, list[str | None]]:
    """(n, dim) answers per key (NaN rows where failed) and the failure reason per key (None when answered).

    Only cache misses are asked, `batch` items per request: fn(list of items) -> (len, dim) array.
    """
    found, values = cache.get(keys)
    out = values.astype(np.float64)
    client.stats.cache_hits += int(found.sum())
    missing = [i for i in range(len(keys)) if not found[i]]
    reasons: list[str | None] = [None] * len(keys)
    if not missing:
        return out, reasons
    jobs = [missing[s:s + batch] for s in range(0, len(missing), max(1, batch))]

    def on_done(done_jobs, answers):
        ks, vs = [], []
        for j, answer in zip(done_jobs, answers):
            ks.extend(keys[i] for i in jobs[j])
            vs.extend(np.asarray(answer, np.float64).reshape(len(jobs[j]), cache.dim))
        cache.put(ks, vs)

    got, why = client.run([[items[i] for i in job] for job in jobs], fn, on_done, sizes=[len(j) for j in jobs])
    for job, answer, reason in zip(jobs, got, why):
        if answer is None:
            out[job] = np.nan
            for i in job:
                reasons[i] = reason
        else:
            out[job] = np.asarray(answer, np.float64).reshape(len(job), cache.dim)
    cache.compact_if_fragmented()
    return out, reasons


class RemoteVoter:
    """What the server-backed voters share: pointwise pair scoring and the client's request accounting."""

    client: RemoteClient

    def score_pairs(self, pairs) -> tuple[np.ndarray, np.ndarray]:
        prompts = pairs.column("prompt").to_pylist()
        chosen, rejected = pairs.column("chosen").to_pylist(), pairs.column("rejected").to_pylist()
        scores = self.score(prompts + prompts, chosen + rejected)
        return scores[: len(chosen)], scores[len(chosen):]

    @property
    def computed(self) -> int:
        return self.client.stats.computed

    def remote_stats(self) -> dict[str, Any]:
        return self.client.stats.as_dict()
