"""The Python API: the same stages as the CLI and `prefcli run`, on tables in a notebook.

    >>> import prefcli
    >>> result = prefcli.run_stage("dedup", "pairs.parquet", on="prompt", threshold=0.9)
    >>> result.table.num_rows, result.stats["semantic_duplicates"]
    >>> prefcli.Pipeline.from_toml("pipelines/default.toml").run("runs/demo").final_output
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from .execute import Call, run_on_table
from .result import StageResult
from .schema import validate
from .stage import Context, stage_class


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if hasattr(data, "to_arrow"):  # polars
        return data.to_arrow()
    return pa.Table.from_pandas(data, preserve_index=False) if hasattr(data, "to_records") else pa.table(data)


def _is_path(value: Any) -> bool:
    """A path, or a list of paths: PathLike objects, or strings that name existing files (else they are data)."""
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(v, os.PathLike) or (isinstance(v, str) and os.path.exists(v))
                               for v in items)


def run_stage(name: str, data: Any = None, *, seed: int = 0, device: str = "auto",
              cache_dir: str | os.PathLike | None = None, use_cache: bool = True, **options: Any) -> StageResult:
    """Run one stage and return its StageResult (`.table`, `.set_aside`, `.stats`, `.artifacts`).

    `data`: a pairs table (pyarrow, polars or pandas), a Parquet path, or for `ingest` raw source paths.
    `options`: the stage's options by name, as in `prefcli NAME --help` with '_' for '-'; side files (e.g.
    dedup's `against`) take paths or already-loaded data.

        >>> r = run_stage("dedup", table, on="prompt", drop=True)
        >>> r.table.num_rows + r.set_aside.num_rows == table.num_rows
        True
    """
    cls = stage_class(name)
    reads = {r.name: options.pop(r.name) for r in cls.reads if r.name in options}
    stage = cls(options)
    ctx = Context(seed=seed, device=device, cache_dir=Path(cache_dir) if cache_dir else None, use_cache=use_cache)
    for read in cls.reads:
        if read.name in reads:
            value = reads[read.name]
            ctx.inputs[read.name] = read.load([os.fspath(v) for v in value] if isinstance(value, list) and
                                              _is_path(value) else os.fspath(value)) if _is_path(value) else value
    if cls.input == "sources":  # raw files: the stage opens them as it does for the CLI
        table = None
        stage.validate(Call(stage=stage, inputs=[os.fspath(p) for p in (data if isinstance(data, list) else [data])],
                            output=os.devnull, ctx=ctx))
    elif cls.input == "none" or data is None:
        table = None
    elif _is_path(data) or isinstance(data, str):
        paths = [os.fspath(p) for p in (data if isinstance(data, list) else [data])]
        table = stage.read(Call(stage=stage, inputs=paths, ctx=ctx))
    else:
        table = validate(_as_table(data), where="table")
    stage.check(ctx)
    result = run_on_table(stage, table, ctx)
    stream = result.artifacts.get("chunks")
    if result.out is None and hasattr(stream, "collect"):  # a streaming stage (ingest): whole tables here
        result.out, rejects = stream.collect()
        result.set_aside = rejects if rejects.num_rows else None
        result.stats = stream.stats
    return result


@dataclass
class Pipeline:
    """A pipeline file, run from Python exactly as `prefcli run` runs it (lock, manifest, skip-if-unchanged).

        >>> run = Pipeline.from_toml("pipelines/default.toml").run("runs/demo")
        >>> [(o.name, o.status, o.rows_out) for o in run.outcomes]
    """

    spec: Any

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "Pipeline":
        from .pipeline import load_pipeline

        return cls(load_pipeline(path))

    def run(self, workdir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
            start: str | None = None, until: str | None = None, force: bool = False, wait: bool = False):
        """Run (or resume) the pipeline in `workdir`; returns the RunResult (outcomes, final_output)."""
        from .pipeline import Runner

        root = Path(workdir) if workdir else (self.spec.path.parent / self.spec.workdir if self.spec.workdir
                                              else Path("prefcli-runs") / self.spec.path.stem)
        cache = Path(cache_dir) if cache_dir else (Path(self.spec.cache_dir) if self.spec.cache_dir else root / "cache")
        if not cache.is_absolute() and not cache_dir and self.spec.cache_dir:
            cache = root / cache
        runner = Runner(self.spec, root, quiet=True, cache_dir=cache.resolve())
        return runner.run(start=start, until=until, force=force, wait=wait)
