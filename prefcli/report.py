"""Uniform stage results and their reporting: rich on a TTY, plain lines in logs, JSON for scripts."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator


from .result import SET_ASIDE_REASON, SET_ASIDE_STAGE, StageResult, check_accounting, mark_set_aside  # noqa: F401


class Reporter:
    """Where a command's human output goes. Progress and tables only on a TTY; nothing with --quiet."""

    def __init__(self, *, quiet: bool = False, json_mode: bool = False, data_on_stdout: bool = False,
                 tables_to_stdout: bool = False):
        self.quiet = quiet
        self.json_mode = json_mode
        self.data_on_stdout = data_on_stdout
        self.tables_to_stdout = tables_to_stdout and not data_on_stdout
        self.tty = sys.stderr.isatty()
        self._console = None

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=sys.stdout if self.tables_to_stdout else sys.stderr)
        return self._console

    @property
    def fancy(self) -> bool:
        return self.tty and not self.quiet and not self.json_mode

    @contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator["Advance"]:
        """Yields advance(n): a rich progress bar on a TTY, a no-op otherwise."""
        if not self.fancy:
            yield Advance(None, None)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=True) as bar:
            yield Advance(bar, bar.add_task(description, total=total))

    def summary(self, title: str, stats: dict[str, Any], tables: Iterable["Table"] = ()) -> None:
        """Print the command summary: JSON (--json), rich tables (TTY), or plain lines (logs)."""
        tables = list(tables)
        if self.json_mode:
            payload = dict(stats)
            for table in tables:
                payload.setdefault("tables", {})[table.key] = table.as_records()
            stream = sys.stderr if self.data_on_stdout else sys.stdout
            stream.write(json.dumps(payload, ensure_ascii=False, default=_jsonable) + "\n")
            stream.flush()
            return
        if self.quiet:
            return
        if self.tty or self.tables_to_stdout:
            from rich.table import Table as RichTable

            head = RichTable(title=title, show_header=False, title_justify="left")
            head.add_column(style="bold")
            head.add_column()
            for key, value in stats.items():
                if not isinstance(value, (dict, list)):
                    head.add_row(key, _fmt(value))
            self.console.print(head)
            for table in tables:
                rich_table = RichTable(title=table.title, title_justify="left")
                for col in table.columns:
                    rich_table.add_column(col, justify="right" if table.numeric(col) else "left")
                for row in table.rows:
                    rich_table.add_row(*[_fmt(v) for v in row])
                self.console.print(rich_table)
            return
        line = " ".join(f"{k}={_fmt(v)}" for k, v in stats.items() if not isinstance(v, (dict, list)))
        sys.stderr.write(f"{title}: {line}\n")
        for table in tables:
            for row in table.rows:
                sys.stderr.write(f"  {table.key}: " + " ".join(f"{c}={_fmt(v)}" for c, v in zip(table.columns, row)) + "\n")

    def warn(self, message: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"prefcli: warning: {message}\n")


@dataclass
class Table:
    """A small result table rendered by Reporter (rich, plain or JSON)."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]]

    def numeric(self, col: str) -> bool:
        i = self.columns.index(col)
        return all(isinstance(r[i], (int, float)) for r in self.rows if r[i] is not None)

    def as_records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


class Advance:
    def __init__(self, bar, task):
        self._bar, self._task = bar, task

    def __call__(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _jsonable(obj: Any):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
