"""Memory between the large steps of a run: freed memory handed back to the OS, and work run in a child process
whose whole heap goes when it ends."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, TypeVar

from .errors import EXIT_SOFTWARE, PrefcliError

T = TypeVar("T")


def release_memory(*, collect: bool = True) -> None:
    """Return what was freed to the OS: Python's cycles (`collect`), Arrow's pool and glibc's arenas. A step
    that freed gigabytes in chunks of a few MB (texts, per-chunk arrays, other threads' arenas) otherwise keeps
    them resident, and the next step's peak stacks on top of them."""
    import ctypes
    import gc

    import pyarrow as pa

    if collect:
        gc.collect()
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_helper_peaks_kb = [0]  # summed peak RSS of the helper processes noted since helper_peaks_kb(reset=True)


def note_helper_peak(pid: int) -> None:
    """Add a helper process's peak RSS (read from /proc before it ends) to this process's stage figure."""
    with contextlib.suppress(OSError, ValueError):
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    _helper_peaks_kb[0] += int(line.split()[1])
                    return


def helper_peaks_kb(reset: bool = False) -> int:
    """The summed peaks noted since the last reset (each helper's own peak: an upper bound of what they held
    at once)."""
    value = _helper_peaks_kb[0]
    if reset:
        _helper_peaks_kb[0] = 0
    return value


def in_child_process(work: Callable[[], T]) -> T:
    """work() (picklable: a module-level function or a partial of one) in a child process: its return value, or
    the exception it raised, raised here. The child ends when the work is done, and with it every page the work
    touched: a long run's later steps do not start on a heap that earlier steps left fragmented. Children are
    forked by a fork server started fresh (no OpenMP or BLAS thread pools inherited from this process, which may
    have used them), and end as soon as this process ends (kill -9 included). Linux only; elsewhere the work
    runs in this process."""
    import multiprocessing
    import pickle
    import sys

    if not sys.platform.startswith("linux"):
        return work()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["prefcli.pipeline.runner"])  # imported once by the server, not per child
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(work, send, os.getpid(), dict(os.environ)), name="prefcli-stage")
    child.start()
    send.close()
    try:
        try:
            failed, payload = receive.recv()
        except EOFError:  # the child died without a word: a signal (OOM killer) or os._exit
            child.join()
            raise ChildDied(child.exitcode) from None
        child.join()
    finally:
        receive.close()
        if child.is_alive():  # interrupted while waiting (Ctrl-C): the work must not outlive us
            child.kill()
            child.join()
    if failed:
        raise pickle.loads(payload)
    return payload


class ChildDied(PrefcliError):
    """The child process ended without sending a result or an error: killed (the OOM killer's SIGKILL), or a crash
    in native code."""

    exit_code = EXIT_SOFTWARE

    def __init__(self, exitcode: int | None):
        how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        super().__init__(f"the stage's process ended without a result ({how}; out of memory?)")


def _child_main(work: Callable[[], Any], send, parent: int, environ: dict[str, str]) -> None:
    import pickle

    _end_with(parent)
    os.environ.clear()  # the parent's environment now, not the fork server's from when it started
    os.environ.update(environ)
    try:
        result = (False, work())
    except BaseException as exc:  # noqa: BLE001 - every error goes back to the parent, to be raised there
        if os.environ.get("PREFCLI_DEBUG") and not isinstance(exc, PrefcliError):
            import traceback

            traceback.print_exc()  # the child's traceback: the parent raises a copy without it
        try:
            result = (True, pickle.dumps(exc))
            pickle.loads(result[1])
        except Exception:  # an exception that cannot be pickled: its type and message
            result = (True, pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}")))
    send.send(result)
    send.close()


def _end_with(parent: int) -> None:
    """End this process as soon as process `parent` ends (a fork server's child would outlive a killed parent):
    a watcher thread waits on the parent's pidfd (polls its pid where pidfds are missing)."""
    import select
    import threading
    import time

    def watch() -> None:
        try:
            handle = os.pidfd_open(parent)
        except ProcessLookupError:
            os._exit(1)
        except (AttributeError, OSError):
            handle = None
        while True:
            if handle is not None:
                select.select([handle], [], [])  # readable once the process has ended
                os._exit(1)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="prefcli-parent-watch", daemon=True).start()
