"""Workdir helpers for `prefcli run`: content digests, file listings, recovery after a kill, and the
lock that keeps two runs out of one workdir."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import InputError, LockHeld, exception_summary
from .atomic import remove_path

OUTPUT_MARKER = ".prefcli-output.json"  # marks a directory prefcli wrote; not part of its content


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """xxh3-128 hex of a file's bytes (streamed), or of a directory's sorted (name, digest) list.

    A content fingerprint for change detection (run manifests, caches), not a security hash:
    xxh3 reads at memory speed, so fingerprinting large raw and output files stays cheap."""
    import xxhash

    target = Path(path)
    if target.is_dir():
        listing = "\n".join(f"{name}\t{file_digest(target / name)}" for name in list_files(target))
        return xxhash.xxh3_128_hexdigest(listing.encode())
    hasher = xxhash.xxh3_128()
    try:
        with open(target, "rb") as fh:
            while block := fh.read(chunk):
                hasher.update(block)
    except OSError as exc:
        raise InputError(f"{path}: unreadable ({exception_summary(exc)})") from None
    return hasher.hexdigest()


def list_files(directory: str | os.PathLike) -> list[str]:
    """Relative paths of the plain files under `directory`, sorted; temp files of atomic writes left out."""
    root = Path(directory)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.name.endswith(".tmp") and p.name != OUTPUT_MARKER)


def recover_interrupted(directory: str | os.PathLike, names: Sequence[str]) -> None:
    """Undo what a kill in the middle of `atomic_path` leaves behind for the entries `names`: stray temps
    and a swapped-out dir. Hidden files of other names are not prefcli's and are left alone."""
    root = Path(directory)
    if not root.is_dir():
        return
    for entry in root.iterdir():
        name = entry.name
        if not any(name.startswith(f".{own}.") for own in names):
            continue
        if name.startswith(".") and name.endswith(".old"):
            target = root / name[1:-len(".old")]
            if not target.exists():
                os.replace(entry, target)  # killed between the two renames: put the previous output back
            else:
                remove_path(entry)
        elif name.startswith(".") and name.endswith(".tmp"):
            remove_path(entry)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, wait: bool = False, timeout: float | None = None,
                   poll: float = 0.2) -> Iterator[None]:
    """Hold a file lock (filelock: flock on POSIX) on `path` for the block; the file is created if missing.

    Busy: raise LockHeld naming the holder, or with `wait` say so on stderr and poll until free (or until
    `timeout` seconds pass). The kernel drops the lock when the process dies, so a kill -9 never leaves a
    stale lock. The holder ("pid N since T") is noted in `<path>.holder`, for the messages.
    """
    from filelock import FileLock, Timeout

    target = Path(path)
    holder_file = target.with_name(target.name + ".holder")
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target))
    try:
        lock.acquire(blocking=False)
    except Timeout:
        holder = _lock_holder(holder_file)
        if not wait:
            raise LockHeld(f"{target}: locked by another prefcli run ({holder}); use --wait to wait for it") from None
        sys.stderr.write(f"prefcli: {target}: locked by another prefcli run ({holder}); waiting for it\n")
        sys.stderr.flush()
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout, poll_interval=poll)
        except Timeout:
            raise LockHeld(f"{target}: still locked after {timeout:g}s ({_lock_holder(holder_file)})") from None
    try:
        with contextlib.suppress(OSError):  # the holder note is only for the message above
            holder_file.write_text(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        yield
    finally:
        lock.release()


def _lock_holder(holder_file: Path) -> str:
    try:
        return holder_file.read_text(errors="replace").strip() or "unknown holder"
    except OSError:
        return "unknown holder"
