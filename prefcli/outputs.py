"""The one place where a command's outputs are planned and committed.

A command declares every path it writes, and the files it reads, before it does any work.
`OutputPlan.add` refuses, with a one-line error and before anything is computed or written:
- two outputs that are the same file (two spellings, a symlink, or `-` twice);
- an output that is one of the inputs (it would be overwritten in place);
- an output with a directory in the way, or whose folder cannot be created or written (exit 73);
- a directory output that would replace a directory prefcli did not write, unless `overwrite`.

Writes are staged as temps beside their targets. `commit()` renames them all, and a failed rename
rolls the earlier ones back, so every target is replaced or none is. Stdout is written last.
An OSError while staging or committing names the target and exits 73 or 74 (see errors.os_failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from . import io
from .errors import CannotCreate, InputError, os_failure

DIR_MARKER = io.OUTPUT_MARKER  # written into every directory prefcli creates as an output


@dataclass
class _Target:
    option: str  # the option that named it, for messages: --output, --removed, ...
    path: str  # as given
    kind: str  # file | dir
    markers: tuple[str, ...] = ()
    staged: Path | None = None  # temp beside the target, once written
    stdout: Any = None  # what goes to stdout at commit (`-` only)


def identity(path: str | os.PathLike) -> str:
    """What two spellings of one file have in common: the absolute path with every symlink resolved."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _first_existing(path: Path) -> Path:
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


class OutputPlan:
    """Every file one command writes; see the module docstring."""

    def __init__(self, *, inputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = False):
        self.overwrite = overwrite
        self.targets: dict[str, _Target] = {}  # by identity; "-" for stdout
        self.inputs: dict[str, str] = {}
        self.committed = False
        for path in inputs:
            self.read(path)

    # -- planning
    def read(self, path: str | os.PathLike | None, option: str = "input") -> None:
        """Declare a file the command reads; an output may never be one."""
        if path is None or str(path) == io.STDIO or str(path).startswith("hf:"):
            return
        key = identity(path)
        self.inputs[key] = str(path)
        if key in self.targets:
            self._refuse_input(self.targets[key], str(path))

    def add(self, option: str, path: str | os.PathLike | None, *, kind: str = "file",
            markers: Iterable[str] = ()) -> str | None:
        """Declare an output; returns `path` unchanged (None passes through for optional outputs)."""
        if path is None:
            return None
        path = os.fspath(path)
        target = _Target(option, path, kind, (DIR_MARKER, *markers))
        key = io.STDIO if path == io.STDIO else identity(path)
        if key in self.targets:
            other = self.targets[key]
            same = f"stdout, as is {other.option}" if key == io.STDIO else f"the same file as {other.option} {other.path}"
            raise InputError(f"{option} {path}: is {same}; give each output its own path")
        if key in self.inputs:
            self._refuse_input(target, self.inputs[key])
        if key != io.STDIO:
            self._check_writable(target)
        self.targets[key] = target
        return path

    def _refuse_input(self, target: _Target, input_path: str) -> None:
        raise InputError(f"{target.option} {target.path}: is the input {input_path}; prefcli never writes over "
                         f"its input, choose another output path")

    def _check_writable(self, target: _Target) -> None:
        path = Path(target.path)
        where = f"{target.option} {target.path}"
        if path.is_symlink() and not path.exists():
            raise CannotCreate(f"{where}: is a dangling symlink; remove it or choose another path")
        if path.is_dir():
            if target.kind == "file":
                raise CannotCreate(f"{where}: is a directory; give a file path")
            if any(path.iterdir()) and not any((path / m).exists() for m in target.markers) and not self.overwrite:
                raise CannotCreate(f"{where}: is a directory prefcli did not write; it is never replaced "
                                   f"without --overwrite (or choose a new path)")
        elif path.exists() and target.kind == "dir" and not self.overwrite:
            raise CannotCreate(f"{where}: is a file; prefcli writes a directory here only with --overwrite")
        base = _first_existing(path.parent)
        if not base.is_dir():
            raise CannotCreate(f"{where}: cannot create it, {base} is not a directory")
        if not os.access(base, os.W_OK | os.X_OK):
            raise CannotCreate(f"{where}: cannot create it, {base} is not writable")

    def target(self, path: str) -> _Target:
        key = io.STDIO if path == io.STDIO else identity(path)
        if key not in self.targets:
            raise RuntimeError(f"output {path} was not planned")  # a bug: every output is declared first
        return self.targets[key]

    # -- staging
    def _new_temp(self, path: str) -> tuple[_Target, Path]:
        target = self.target(path)
        if target.staged is not None:
            raise RuntimeError(f"output {path} written twice")
        final = Path(path)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise os_failure(exc, path) from None
        target.staged = Path(name)
        return target, target.staged

    def _discard(self, target: _Target) -> None:
        if target.staged is not None:
            io.remove_path(target.staged)
            target.staged = None

    @contextlib.contextmanager
    def staged(self, path: str) -> Iterator[Path]:
        """A temp path beside `path` for a writer to fill (a file, or a directory for kind=dir)."""
        target, tmp = self._new_temp(path)
        try:
            yield tmp
            if target.kind == "dir":
                tmp.mkdir(exist_ok=True)
                (tmp / DIR_MARKER).write_text(json.dumps({"written_by": "prefcli", "option": target.option}) + "\n")
            _fsync(tmp)
        except OSError as exc:
            self._discard(target)
            raise os_failure(exc, path) from None
        except BaseException:
            self._discard(target)
            raise

    def write(self, path: str, data: pa.Table | bytes | str | dict | list) -> None:
        """Stage `data`: an Arrow table (or cluster rows) as Parquet, bytes, text, or a JSON document."""
        if hasattr(data, "iter_tables"):  # rows left on a cluster (prefcli.engines.ray_rows): one block at a time
            if path == io.STDIO:
                data = data.to_table()
            else:
                with self.staged(path) as tmp:
                    io.write_tables(data.iter_tables(), data.schema, tmp)
                return
        if path == io.STDIO:
            self.target(path).stdout = data
            return
        with self.staged(path) as tmp:
            if isinstance(data, pa.Table):
                io.write_table(data, tmp)
            else:
                tmp.write_bytes(_as_bytes(data))

    def write_with(self, path: str, writer: Callable[[Path], None]) -> None:
        """Stage an output that a library writes itself (a PNG, a datasets directory)."""
        if path == io.STDIO:
            raise InputError("-: this output cannot go to stdout")
        with self.staged(path) as tmp:
            writer(tmp)

    def sink(self, path: str, schema: pa.Schema) -> "io.ParquetSink":
        """A streaming Parquet writer; `finish()` it, and its file is committed with the rest of the plan."""
        if path == io.STDIO:
            target = self.target(path)
            return io.ParquetSink(io.STDIO, schema, deliver=lambda data: setattr(target, "stdout", data))
        _, tmp = self._new_temp(path)
        return io.ParquetSink(path, schema, staged=tmp)

    def drop(self, path: str) -> None:
        """Nothing is written to a planned output after all (e.g. an empty stdout rejects file)."""
        target = self.target(path)
        self._discard(target)
        target.stdout = None

    # -- commit
    def commit(self) -> None:
        """Rename every staged temp over its target, all or nothing; then write stdout."""
        done: list[tuple[Path, Path | None]] = []  # (target, backup of what it replaced)
        try:
            for target in self.targets.values():
                if target.staged is None:
                    continue
                final = Path(target.path)
                backup = _backup(final)
                try:
                    os.replace(target.staged, final)
                except OSError as exc:
                    _restore(final, backup, replaced=False)
                    raise os_failure(exc, target.path) from None
                done.append((final, backup))
                target.staged = None
        except BaseException:
            for final, backup in reversed(done):
                with contextlib.suppress(OSError):
                    _restore(final, backup, replaced=True)
            self.abort()
            raise
        for final, backup in done:
            if backup is not None:
                io.remove_path(backup)
            with contextlib.suppress(OSError):
                _fsync_dir(final.parent)
        self.committed = True
        for target in self.targets.values():
            if target.stdout is not None:
                data, target.stdout = target.stdout, None
                if isinstance(data, pa.Table):
                    io.write_table(data, io.STDIO)
                else:
                    io.write_bytes(_as_bytes(data), io.STDIO)

    def abort(self) -> None:
        """Remove every staged temp; no target is touched."""
        for target in self.targets.values():
            self._discard(target)

    def __enter__(self) -> "OutputPlan":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None or not self.committed:
            self.abort()
        return False


def _as_bytes(data: bytes | str | dict | list) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    return (json.dumps(data, indent=2, ensure_ascii=False, default=io.json_default) + "\n").encode("utf-8")


def _backup(final: Path) -> Path | None:
    """Keep what `final` holds until the whole plan is committed: a hard link for a file (the target never
    disappears), a rename for a directory. None when there is nothing to keep."""
    if not final.exists() and not final.is_symlink():
        return None
    backup = final.with_name(f".{final.name}.old")
    io.remove_path(backup)
    if final.is_file() and not final.is_symlink():
        try:
            os.link(final, backup)
            return backup
        except OSError:
            pass  # no hard links here: fall back to a rename
    os.replace(final, backup)
    return backup


def _restore(final: Path, backup: Path | None, *, replaced: bool) -> None:
    """Undo one target: put back what `final` held before (or remove it if it is new)."""
    if backup is None:
        if replaced:
            io.remove_path(final)
        return
    if not replaced and final.exists() and final.is_file() and os.path.samefile(final, backup):
        backup.unlink()  # a hard-link backup of a file that was never replaced (rename would be a no-op)
        return
    if final.is_dir() and not final.is_symlink():
        io.remove_path(final)
    os.replace(backup, final)


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_files_into(directory: str | os.PathLike, files: dict[str, Any]) -> None:
    """Fill a new directory (an OutputPlan's staged temp) with files; dict/list values become JSON."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        dest = root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, (dict, list)):
            content = json.dumps(content, indent=2, ensure_ascii=False, default=io.json_default) + "\n"
        dest.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
