"""Reward models behind one interface (see base.RewardModel), built from `--rm` specs.

Specs: `hf:<local-path-or-hub-id>`, `ensemble[:k=5,folds=5,...]`, `scores:<col_chosen>,<col_rejected>`,
`served:<model>,base_url=URL[,...]` (a reward model behind vLLM / SGLang / TEI) and
`judge:<model>,base_url=URL[,...]` (an LLM judge over OpenAI chat completions), each optionally prefixed
with `NAME=` to choose the column name (rm_NAME_*). A new backend is one more module with a class and
one more entry in BACKENDS.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from ...errors import InputError
from .base import PairwiseRewardModel, PointwiseRewardModel, RewardModel, ScoreCache, column_safe

_NAME = re.compile(r"^([A-Za-z0-9_]+)=(?=[a-z]+(:|$))")


def _hf(arg: str, name: str | None, opts: dict[str, Any]):
    from .hf import HFRewardModel

    keep = {k: opts[k] for k in ("device", "max_length", "batch_size", "trust_remote_code", "cache_dir", "use_cache")
            if opts.get(k) is not None}
    return HFRewardModel(arg, name=name, **keep)


def _ensemble(arg: str, name: str | None, opts: dict[str, Any]):
    from .ensemble import OfflineEnsemble

    return OfflineEnsemble.from_spec(arg, name=name, device=opts.get("device") or "auto",
                                     cache_dir=opts.get("cache_dir"), use_cache=opts.get("use_cache", True),
                                     tasks=opts.get("tasks"))


def _scores(arg: str, name: str | None, opts: dict[str, Any]):
    from .scores import ColumnScores

    cols = [c.strip() for c in arg.split(",")]
    if len(cols) != 2 or not all(cols):
        raise InputError(f"--rm scores:{arg}: expected scores:<col_chosen>,<col_rejected>")
    return ColumnScores(cols[0], cols[1], name=name)


def _served(arg: str, name: str | None, opts: dict[str, Any]):
    from .served import ServedRewardModel

    return ServedRewardModel(arg, name=name, cache_dir=opts.get("cache_dir"), use_cache=opts.get("use_cache", True))


def _judge(arg: str, name: str | None, opts: dict[str, Any]):
    from .judge import JudgeModel

    return JudgeModel(arg, name=name, cache_dir=opts.get("cache_dir"), use_cache=opts.get("use_cache", True))


BACKENDS: dict[str, Callable[[str, str | None, dict[str, Any]], Any]] = {
    "hf": _hf,
    "ensemble": _ensemble,
    "scores": _scores,
    "served": _served,
    "judge": _judge,
}


def parse_rm_spec(spec: str, **opts: Any) -> RewardModel:
    """Build a reward model from a `--rm` spec. opts: device, max_length, batch_size,
    trust_remote_code, cache_dir, use_cache, tasks (Context.tasks). Bad specs raise a one-line InputError."""
    spec = spec.strip()
    name = None
    named = _NAME.match(spec)
    if named:
        name, spec = named.group(1), spec[named.end():]
    backend, _, arg = spec.partition(":")
    if backend not in BACKENDS:
        raise InputError(f"--rm {spec!r}: unknown backend '{backend}' (expected "
                         f"{', '.join(f'{b}:...' for b in BACKENDS)})")
    if backend in ("hf", "scores", "served", "judge") and not arg:
        raise InputError(f"--rm {spec!r}: {backend}: needs an argument")
    return BACKENDS[backend](arg, name, opts)


__all__ = ["RewardModel", "PairwiseRewardModel", "PointwiseRewardModel", "ScoreCache", "parse_rm_spec", "column_safe", "BACKENDS"]
