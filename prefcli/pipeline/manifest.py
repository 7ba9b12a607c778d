"""The run manifest (one record per completed stage) and the file fingerprints that decide skip-if-unchanged."""

from __future__ import annotations

import contextlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import io
from ..errors import InputError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "prefcli-run-manifest/1"
VERSIONED_PACKAGES = ("prefcli", "polars", "pyarrow", "numpy", "torch", "sentence-transformers", "transformers",
                      "faiss-cpu", "faiss-gpu", "scikit-learn", "datasets")


class Fingerprints:
    """File digests memoised by (size, mtime_ns) in the manifest, so unchanged big inputs are not re-read."""

    def __init__(self, memo: dict[str, list]):
        self.memo = memo

    def __call__(self, path: str | Path) -> str:
        target = Path(path)
        if target.is_dir():
            return io.file_digest(target)
        try:
            stat = target.stat()
        except OSError:
            raise InputError(f"{path}: no such file") from None
        key = str(target.resolve())
        seen = self.memo.get(key)
        if seen and seen[0] == stat.st_size and seen[1] == stat.st_mtime_ns:
            return seen[2]
        value = io.file_digest(target)
        self.memo[key] = [stat.st_size, stat.st_mtime_ns, value]
        return value


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def load_manifest(workdir: Path) -> dict:
    path = workdir / MANIFEST
    if path.exists():
        try:
            manifest = io.read_json(path)
            if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT:
                return manifest
        except InputError:
            pass  # unreadable manifest: start over, outputs get rebuilt
    return {"format": MANIFEST_FORMAT, "stages": {}, "files": {}}


def stage_key(material: dict) -> str:
    from ..text import digest

    return digest(json.dumps(material, sort_keys=True, ensure_ascii=False, default=str))


