"""Errors that end a command with a one-line message and a documented exit code (sysexits where one fits)."""

from __future__ import annotations

import errno
import os

EXIT_OK = 0
EXIT_PROBLEMS = 1  # ran, but reported problems (e.g. reject rate above --max-reject-rate)
EXIT_BAD_INPUT = 2  # bad input or usage
EXIT_LOCKED = 3  # another `prefcli run` holds the workdir lock
EXIT_SOFTWARE = 70  # a bug in prefcli (EX_SOFTWARE)
EXIT_CANT_CREATE = 73  # an output cannot be created: read-only, or something in the way (EX_CANTCREAT)
EXIT_IO = 74  # an I/O error while reading or writing, e.g. a full disk (EX_IOERR)


class PrefcliError(Exception):
    """Base class: message is the whole one-line error, exit_code the process exit code."""

    exit_code = EXIT_BAD_INPUT


class InputError(PrefcliError):
    """Malformed file, missing or mistyped column, empty text, bad option."""

    exit_code = EXIT_BAD_INPUT


class SchemaError(InputError):
    """The table does not satisfy the canonical pair schema."""


class ProblemsReported(PrefcliError):
    """The command ran to the end but found problems the user asked to fail on."""

    exit_code = EXIT_PROBLEMS


class LockHeld(PrefcliError):
    exit_code = EXIT_LOCKED


class CannotCreate(PrefcliError):
    """An output cannot be created where it was asked for."""

    exit_code = EXIT_CANT_CREATE


class IOFailure(PrefcliError):
    """The operating system failed a read or write (disk full, file too large, device error)."""

    exit_code = EXIT_IO


# errno values that mean "this path cannot be created here", as opposed to a failing device.
_CANT_CREATE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOENT,
                errno.ENAMETOOLONG, errno.ELOOP, errno.EXDEV}
_IO_MESSAGES = ("no space left", "file too large", "quota exceeded", "input/output error")


def os_failure(exc: OSError, path: str | os.PathLike | None = None) -> PrefcliError:
    """An OSError from writing `path` as a one-line error with the sysexits code: 73 or 74."""
    where = path if path is not None else (exc.filename or "output")
    cause = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = str(exc).lower()
    if exc.errno in _CANT_CREATE and not any(m in text for m in _IO_MESSAGES):
        return CannotCreate(f"{where}: cannot create output ({cause})")
    return IOFailure(f"{where}: I/O error ({cause})")


def exception_summary(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type name."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
