"""Worker processes for the offline ensemble's lex view: sklearn's TF-IDF analyser is Python and holds the
GIL, so its transforms are spread over processes.

Each worker is `python -m prefcli.models.reward.lex_worker`: it reads the pickled fitted vectoriser, then lists
of texts, from stdin, and writes each list's CSR matrix back to stdout (length-prefixed pickle frames). Plain
subprocesses rather than multiprocessing: a spawned multiprocessing child imports the caller's `__main__`
again, which would re-run an unguarded script that calls the Python API (and forking a process that runs
tokenizer and read-ahead threads is not safe).
"""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
from typing import Any, BinaryIO


_HEADER = struct.Struct("<Q")
SHARE_ROWS = 4_096  # texts a worker transforms at a time


def write_frame(stream: BinaryIO, obj: Any) -> None:
    write_pickled(stream, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def write_pickled(stream: BinaryIO, data: bytes) -> None:
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def read_frame(stream: BinaryIO) -> Any:
    """The next object, or None at the end of the stream (or a cut-off frame)."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    return pickle.loads(data) if len(data) == size else None


class WorkerGone(RuntimeError):
    pass


class LexWorkers:
    """`workers` processes that each hold the fitted vectoriser. `transform` hands them contiguous shares of
    SHARE_ROWS texts (small, so a worker holds little) and stacks the rows back in order: TF-IDF is row by row,
    so the matrix is the one a single transform gives."""

    def __init__(self, vectorizer, workers: int):
        blob = pickle.dumps(vectorizer, protocol=pickle.HIGHEST_PROTOCOL)
        self.workers = workers
        self._procs: list[subprocess.Popen] = []
        try:
            for _ in range(workers):
                proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                self._procs.append(proc)
                write_pickled(proc.stdin, blob)
        except BaseException:
            self.close()
            raise

    def transform(self, texts: list[str]):
        import scipy.sparse as sp

        bounds = list(range(0, len(texts), SHARE_ROWS)) + [len(texts)]
        shares = list(zip(bounds[:-1], bounds[1:]))
        out = []
        try:
            for first in range(0, len(shares), self.workers):  # a share per worker, then their matrices in order
                busy = list(zip(self._procs, shares[first:first + self.workers]))
                for proc, (a, b) in busy:
                    write_frame(proc.stdin, texts[a:b])
                out.extend(read_frame(proc.stdout) for proc, _ in busy)
                if any(matrix is None for matrix in out[-len(busy):]):
                    raise WorkerGone("a lex worker process exited")
        except OSError as exc:  # a worker's pipe closed
            raise WorkerGone(str(exc)) from exc
        return sp.vstack(out, format="csr")

    def close(self) -> None:
        from ...memory import note_helper_peak

        for proc in self._procs:
            note_helper_peak(proc.pid)  # counted in the stage's peak RSS
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self._procs = []


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # the frames own stdout
    vectorizer = read_frame(stdin)
    while (texts := read_frame(stdin)) is not None:
        write_frame(stdout, vectorizer.transform(texts).tocsr())


if __name__ == "__main__":
    main()
