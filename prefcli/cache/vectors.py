"""Content-addressed on-disk store of vectors (embeddings, reward scores), shared by every stage.

Layout: <root>/<namespace-slug>/shard-*.npz, each an immutable (keys, values) pair written
atomically (io.atomic_path: temp + rename). Readers only ever see complete shards, so concurrent readers are
safe and a crash never leaves a corrupt entry; `prune` compacts shards and drops old ones.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import CannotCreate, IOFailure
from ..io import atomic_path, remove_path
from ..text import digest

KEY_BYTES = 16
CACHE_WRITE_ERRORS = (OSError, CannotCreate, IOFailure)  # atomic_path names the path of what it cannot create


def default_cache_dir() -> Path:
    env = os.environ.get("PREFCLI_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("prefcli"))


def namespace_slug(namespace: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", namespace).strip("_")[-60:]
    return f"{safe}-{digest(namespace)[:10]}"


@dataclass
class CacheInfo:
    namespace: str
    path: str
    shards: int
    entries: int
    bytes: int


class VectorStore:
    """Maps 128-bit hex keys to float32 vectors of a fixed width, for one namespace (e.g. a model id)."""

    def __init__(self, root: str | os.PathLike | None, namespace: str, dim: int):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.namespace = namespace
        self.dim = dim
        self.path = self.root / namespace_slug(namespace)
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: list[Path] = []
        self._values: dict[int, np.ndarray] = {}
        self._loaded = False
        self._warned = False
        self.hits = 0
        self.misses = 0

    # -- reading
    def _load_index(self) -> None:
        self._index.clear()
        self._values.clear()
        self._shards = self._listing()
        for i, shard in enumerate(self._shards):
            try:
                with np.load(shard) as data:
                    keys = data["keys"]
            except FileNotFoundError:  # pruned by another process meanwhile
                continue
            for row, key in enumerate(keys):
                self._index.setdefault(key.tobytes(), (i, row))
        self._loaded = True

    def _shard_values(self, i: int) -> np.ndarray:
        if i not in self._values:
            with np.load(self._shards[i]) as data:
                self._values[i] = data["values"]
            with contextlib.suppress(OSError):  # mtime = last use, so `prune --older-than` keeps what is used
                os.utime(self._shards[i])
        return self._values[i]

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Returns (found mask, values); rows of values where found is False are zeros.

        On a miss, shards written (or merged) by other processes since the index was read are picked up.
        """
        if not self._loaded:
            self._load_index()
        found, values = self._lookup(keys)
        if not found.all() and self._shards != self._listing():
            self._load_index()
            found, values = self._lookup(keys)
        self.hits += int(found.sum())
        self.misses += int((~found).sum())
        return found, values

    def _listing(self) -> list[Path]:
        return sorted(self.path.glob("shard-*.npz")) if self.path.exists() else []

    def _lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        found = np.zeros(len(keys), dtype=bool)
        values = np.zeros((len(keys), self.dim), dtype=np.float32)
        for pos, key in enumerate(keys):
            hit = self._index.get(bytes.fromhex(key))
            if hit is None:
                continue
            try:
                vector = self._shard_values(hit[0])[hit[1]]
            except FileNotFoundError:  # merged or pruned by another process meanwhile
                self._load_index()
                return self._lookup(keys)
            if vector.shape[0] != self.dim:
                continue
            values[pos] = vector
            found[pos] = True
        return found, values

    # -- writing
    def put(self, keys: Sequence[str], values: np.ndarray) -> None:
        if not len(keys):
            return
        if not self._loaded:
            self._load_index()
        values = np.asarray(values, dtype=np.float32).reshape(len(keys), self.dim)
        raw = np.frombuffer(b"".join(bytes.fromhex(k) for k in keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES)
        fresh = [i for i, k in enumerate(keys) if raw[i].tobytes() not in self._index]
        if not fresh:
            return
        raw, values = raw[fresh], values[fresh]
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_shard(self.path / name, raw, values)
        except CACHE_WRITE_ERRORS as exc:  # a cache that cannot be written costs a recompute later, never the result
            if not self._warned:
                cause = getattr(exc, "strerror", None) or exc
                sys.stderr.write(f"prefcli: warning: {self.path}: cache not written ({cause}); "
                                 f"results are unaffected\n")
                self._warned = True
            return
        shard_no = len(self._shards)
        self._shards.append(self.path / name)
        self._values[shard_no] = values
        for row, key in enumerate(raw):
            self._index.setdefault(key.tobytes(), (shard_no, row))

    @staticmethod
    def _write_shard(path: Path, keys: np.ndarray, values: np.ndarray) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, keys=keys, values=values)

    # -- maintenance
    def info(self) -> CacheInfo:
        shards = sorted(self.path.glob("shard-*.npz")) if self.path.exists() else []
        entries = 0
        for shard in shards:
            with np.load(shard) as data:
                entries += len(data["keys"])
        return CacheInfo(self.namespace, str(self.path), len(shards), entries, sum(s.stat().st_size for s in shards))

    def compact(self) -> None:
        """Merge all shards into one (newest entry wins nothing: entries are immutable), drop temps."""
        self._load_index()
        remove_stale_temps(self.path)
        if len(self._shards) <= 1:
            return
        keys = np.frombuffer(b"".join(self._index.keys()), dtype=np.uint8).reshape(-1, KEY_BYTES)
        values = np.stack([self._shard_values(s)[r] for s, r in self._index.values()]) if len(keys) else \
            np.zeros((0, self.dim), np.float32)
        old = list(self._shards)
        self._write_shard(self.path / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz", keys, values)
        for shard in old:
            shard.unlink(missing_ok=True)
        self._loaded = False


    def prune(self, older_than_s: float) -> int:
        """Drop shards neither written nor read for `older_than_s` seconds; returns the entries dropped.

        Safe beside running readers: they reload their index when a shard disappears.
        """
        cutoff = time.time() - older_than_s
        dropped = 0
        for shard in sorted(self.path.glob("shard-*.npz")) if self.path.exists() else []:
            with contextlib.suppress(FileNotFoundError):
                if shard.stat().st_mtime < cutoff:
                    with np.load(shard) as data:
                        dropped += len(data["keys"])
                    shard.unlink()
        self._loaded = False
        return dropped

    @classmethod
    def at_path(cls, path: str | os.PathLike) -> "VectorStore | None":
        """Open an existing namespace directory (for maintenance); None when it holds no shard."""
        path = Path(path)
        shards = sorted(path.glob("shard-*.npz"))
        if not shards:
            return None
        with np.load(shards[0]) as data:
            dim = int(data["values"].shape[1])
        store = cls(path.parent, path.name, dim)
        store.path = path
        return store


STALE_TEMP_SECONDS = 3600


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files (or dirs) an interrupted writer left (older than an hour, so live writers are untouched)."""
    removed = 0
    cutoff = time.time() - STALE_TEMP_SECONDS
    for tmp in list(directory.glob(".tmp-*")) + list(directory.glob(".*.tmp")) if directory.exists() else []:
        with contextlib.suppress(FileNotFoundError):
            if tmp.lstat().st_mtime < cutoff:
                remove_path(tmp)
                removed += 1
    return removed


def list_namespaces(root: str | os.PathLike | None = None) -> list[Path]:
    base = Path(root) if root is not None else default_cache_dir()
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.exists() else []
