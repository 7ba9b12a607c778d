"""Atomic writes: a temp file (or directory) beside the target, fsync, then rename.

A crash or an error never leaves a half-written output; the previous file (if any) stays intact.
`-` writes stdout. JSON documents are read and written here too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError, exception_summary

STDIO = "-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync and rename it over `path`, else delete it.

    Works for files and directories (e.g. `datasets.save_to_disk`).
    """
    target = Path(path)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if target.is_dir() and tmp.is_dir():
            old = target.with_name(f".{target.name}.old")
            remove_path(old)
            os.replace(target, old)
            os.replace(tmp, target)
            remove_path(old)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        remove_path(tmp)
        raise


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """An OSError while writing `path` becomes a one-line error naming it (exit 73 or 74)."""
    try:
        yield
    except OSError as exc:
        from ..errors import os_failure

        raise os_failure(exc, path) from None


def remove_path(path: Path) -> None:
    """Delete a file or a whole directory; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        import shutil
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(data: bytes, path: str | os.PathLike) -> None:
    if str(path) == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with atomic_path(path) as tmp, writing(path):
        tmp.write_bytes(data)


def write_text(text: str, path: str | os.PathLike) -> None:
    write_bytes(text.encode("utf-8"), path)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=json_default) + "\n", path)


def jsonl_lines(rows: Iterator[dict] | list[dict]) -> Iterator[str]:
    """Each row as one JSON line (non-ASCII kept, numpy and dates converted)."""
    for row in rows:
        yield json.dumps(row, ensure_ascii=False, default=json_default) + "\n"


def write_jsonl(rows: Iterator[dict] | list[dict], path: str | os.PathLike) -> int:
    """Write JSON lines atomically (or to stdout); returns the row count."""
    count = 0
    if str(path) == STDIO:
        for line in jsonl_lines(rows):
            sys.stdout.write(line)
            count += 1
        sys.stdout.flush()
        return count
    with atomic_path(path) as tmp, writing(path), open(tmp, "w", encoding="utf-8") as fh:
        for line in jsonl_lines(rows):
            fh.write(line)
            count += 1
    return count


def json_default(obj: Any):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable JSON ({exception_summary(exc)})") from None
