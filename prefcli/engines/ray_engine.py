"""`--engine ray`: the middle step of `prefcli.execute` (table -> StageResult) on a Ray cluster.

Everything around it is the local path's: planning the outputs, loading side inputs, reading, the accounting
check, the all-or-nothing write (the same files as `--engine local`), --max-reject-rate. What runs where:

- a stage whose invocation is batch-wise (`Stage.batchwise()`, e.g. export without --shuffle and with nothing
  global to drop) runs as `Dataset.map_batches`: stateless stages as tasks, model stages as a callable class
  on an `ActorPoolStrategy` (the stage, and so its models, built once per actor; `num_gpus=1` per actor when
  the cluster has GPUs). Each batch's result is checked (out + set aside = in) and the batches are merged in
  order by `Stage.merge_batches`, so the row order is the local one;
- dedup runs the distributed algorithms of prefcli.engines.ray_dedup (exact: hash groupby; semantic and the
  cascade: k-means partitioned kNN). With --against, --graph or --explain, which are not ported, it falls back
  to the next rule, and says so;
- every other stage with a table runs its `run` as ONE Ray task on a worker (not the driver): the global
  steps that have no distributed algorithm yet (vote's robust scale and cross-fitting, mine's pool, the
  length-bias fit and apply, review selection, export with --shuffle or repeat dropping). Ray retries the task
  when its worker dies (max_retries), so a killed worker costs a rerun of that stage's task, not a wrong output;
- ingest parses its file sources in one Ray task too (stdin and hf: sources, and stages without a table
  input, run on the driver).

The driver still reads the input table and receives the output rows, because the outputs are written by
the same code as the local engine's: its memory grows with the data. Parquet datasets read and written on the
cluster (prefcli.engines.ray_data.read/write_parquet_dataset) are the next step for that.
"""

from __future__ import annotations

import functools
import pickle
from contextlib import nullcontext
from dataclasses import replace
import pyarrow as pa

from ..result import StageResult, check_accounting
from ..stage import Context, Stage
from . import require_ray
from .ray_data import ROW, connect, gather_table, one_line_errors, ordered_context

TASK_RETRIES = 3  # the one-task path: a task whose worker dies (kill -9, OOM, node loss) is run again
# map_batches needs no option for that: Ray Data retries a map task whose worker dies and restarts a pool's
# actors (its defaults in Ray 2.60; passing max_retries/max_restarts there is deprecated).
DEFAULT_BATCH = 4096


class _Collect:
    """A stage's report sink on a worker: keeps the warnings for the driver to print, no progress bars."""

    def __init__(self):
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def progress(self, description: str, total: int | None = None):
        from ..report import Advance

        return nullcontext(Advance(None, None))


def for_workers(ctx: Context, stage: Stage) -> Context:
    """The context shipped to workers: no report sink, and the cache dir the driver would use named explicitly
    (a worker's environment may lack PREFCLI_CACHE_DIR), so both engines read and write the same cache."""
    from ..cache.vectors import default_cache_dir

    models = stage.resources.uses_models and ctx.use_cache  # the ingest memo stays off unless asked for
    return replace(ctx, report=None, cache_dir=ctx.cache_dir or (default_cache_dir() if models else None))


def _on_worker(ctx: Context) -> tuple[Context, _Collect]:
    sink = _Collect()
    return replace(ctx, report=sink, inputs=dict(ctx.inputs)), sink


def _replay(ctx: Context, warnings: list[str]) -> None:
    for message in warnings:
        ctx.warn(message)


def _materialized(result: StageResult) -> StageResult:
    """A result that can travel back to the driver: ingest's one-pass stream becomes its list of chunks."""
    from ..stages.ingest import IngestStream

    stream = result.artifacts.get("chunks")
    if isinstance(stream, IngestStream):
        chunks = list(stream)  # fills stream.stats, which is result.stats
        result.artifacts["chunks"] = chunks
        result.stats = stream.stats
    return result


def run_table_stage(stage: Stage, table: pa.Table | None, ctx: Context):
    """The body of the one-task path, on a worker: (result, the stage's state for the driver, warnings)."""
    ctx, sink = _on_worker(ctx)
    result = _materialized(stage.run(table, ctx))
    return result, stage.worker_state(), sink.warnings


def _pack(result: StageResult, warnings: list[str], rows_in: int) -> pa.Table:
    return pa.table({"result": pa.array([pickle.dumps((result, warnings))], pa.large_binary()),
                     "rows_in": pa.array([rows_in], pa.int64())})


def run_batch(batch: pa.Table, stage: Stage, ctx: Context) -> pa.Table:
    """One batch through `stage.run` (a stateless task): its result, checked and packed as one row."""
    ctx, sink = _on_worker(ctx)
    result = stage.run(batch, ctx)
    check_accounting(batch.num_rows, result, added=result.added)
    return _pack(result, sink.warnings, batch.num_rows)


class BatchActor:
    """The same for a model stage, on an actor pool: the stage (and the models it caches) lives as long as the
    actor, so each actor loads its models once."""

    def __init__(self, stage: Stage, ctx: Context):
        self.stage, self.ctx = stage, ctx

    def __call__(self, batch: pa.Table) -> pa.Table:
        return run_batch(batch, self.stage, self.ctx)


def blocks_of(ray, table: pa.Table, rows: int):
    """`table` as a dataset of blocks of at most `rows` rows, in order."""
    rows = max(1, rows)
    parts = [table.slice(i, rows) for i in range(0, table.num_rows, rows)] or [table]
    return ray.data.from_arrow(parts)


class RayEngine:
    """`--engine ray[:ADDRESS]`: connects once (a missing install is the one-line pip hint, exit 2)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, batch_size: int | None = None, actors: int | None = None,
                 quiet: bool = False):
        self.ray = connect(address, **({"log_to_driver": False} if quiet else {}))
        self.batch_size, self.actors = batch_size, actors
        if quiet:  # --quiet/--json: no progress bars, no Ray Data INFO lines (cron logs stay clean)
            import logging

            ordered_context().enable_progress_bars = False
            for name in ("ray", "ray.data"):
                logging.getLogger(name).setLevel(logging.WARNING)

    # -- what the cluster has
    def gpus(self) -> float:
        return float(self.ray.cluster_resources().get("GPU", 0))

    def cpus(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def run(self, stage: Stage, table: pa.Table | None, ctx: Context) -> StageResult:
        ordered_context()
        with one_line_errors():
            if table is None:
                if stage.name == "ingest" and _files_only(ctx):
                    return self.one_task(stage, None, ctx)
                return stage.run(table, ctx)  # no table to ship: the stage streams its own input on the driver
            if stage.name == "dedup":
                result = self.dedup(stage, table, ctx)
                if result is not None:
                    return result
            if stage.batchwise():
                return self.batches(stage, table, ctx)
            return self.one_task(stage, table, ctx)

    # -- one Ray task on a worker
    def one_task(self, stage: Stage, table: pa.Table | None, ctx: Context) -> StageResult:
        ray = self.ray
        gpus = 1.0 if stage.resources.uses_models and self.gpus() else 0.0
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=TASK_RETRIES)(run_table_stage)
        worker_ctx = for_workers(ctx, stage)
        ref = task.remote(stage.worker_copy(), ray.put(table) if table is not None else None, worker_ctx)
        result, state, warnings = ray.get(ref)
        stage.__dict__.update(state)
        _replay(ctx, warnings)
        return result

    # -- map_batches
    def batches(self, stage: Stage, table: pa.Table, ctx: Context) -> StageResult:
        from ray.data import ActorPoolStrategy, TaskPoolStrategy

        rows = self.batch_size or stage.resources.batch_size or DEFAULT_BATCH
        ds = blocks_of(self.ray, table, rows)
        worker_ctx = for_workers(ctx, stage)
        if stage.resources.uses_models:
            size = self.actors or max(1, int(self.gpus()) or 1)
            mapped = ds.map_batches(BatchActor, batch_size=rows, batch_format="pyarrow",
                                    fn_constructor_kwargs={"stage": stage.worker_copy(), "ctx": worker_ctx},
                                    compute=ActorPoolStrategy(size=size), num_gpus=1 if self.gpus() else None)
        else:
            mapped = ds.map_batches(run_batch, batch_size=rows, batch_format="pyarrow",
                                    fn_kwargs={"stage": stage.worker_copy(), "ctx": worker_ctx},
                                    compute=TaskPoolStrategy(size=self.actors) if self.actors else TaskPoolStrategy())
        packed = gather_table(mapped)
        rows_in = sum(packed.column("rows_in").to_pylist()) if packed.num_rows else 0
        if rows_in != table.num_rows:
            raise AssertionError(f"row accounting broken: {table.num_rows} rows in, {rows_in} reached the batches")
        results, warnings = [], []
        for blob in packed.column("result").to_pylist():
            result, said = pickle.loads(blob)
            results.append(result)
            warnings += [w for w in said if w not in warnings]
        _replay(ctx, warnings)
        if not results:
            return stage.run(table, ctx)
        return stage.merge_batches(table, results, ctx)

    # -- dedup: the distributed algorithms
    def dedup(self, stage: Stage, table: pa.Table, ctx: Context) -> StageResult | None:
        from ..models.embed import STATIC, build_embedder
        from .ray_dedup import semantic_dedup

        p = stage.params
        ported = not (ctx.inputs.get("against") or p.explain or getattr(stage, "_graph_path", None))
        if not ported:
            ctx.warn("dedup --against/--graph/--explain: not ported to the partitioned algorithm yet; the local "
                     "dedup runs as one Ray task")
            return None
        cache_dir = for_workers(ctx, stage).cache_dir
        models = dict(device=ctx.device, cache_dir=str(cache_dir) if cache_dir else None,
                      use_cache=ctx.use_cache, trust_remote_code=p.trust_remote_code)
        proposer = functools.partial(build_embedder, p.model, **models)
        verifier = (functools.partial(build_embedder, p.verify, **models)
                    if p.model == STATIC and p.verify != "none" else None)
        gpus = self.gpus()
        actors = self.actors or max(1, int(gpus) or 1)
        rows = self.batch_size or 50_000
        result = semantic_dedup(blocks_of(self.ray, table, rows), proposer, stage.options(ctx), keep_row=True,
                                num_gpus=1 if gpus else None, embed_actors=actors, verify_actors=actors,
                                verifier_factory=verifier)
        out = _in_row_order(gather_table(result.out), table)
        aside = _in_row_order(gather_table(result.set_aside), None) if result.set_aside is not None else None
        stage._cache_root = None  # no all-pairs graph to cache
        return StageResult(out=out, set_aside=aside if aside is not None and aside.num_rows else None,
                           stats=result.stats)


def _in_row_order(table: pa.Table, like: pa.Table | None) -> pa.Table | None:
    """Rows back in input order (the global row index), without the index column."""
    if ROW not in table.column_names:
        return table if table.num_rows or like is None else None
    return table.sort_by(ROW).drop_columns([ROW])


def _files_only(ctx: Context) -> bool:
    sources = ctx.inputs.get("sources") or []
    return bool(sources) and all(s.file != "-" and not str(s.file).startswith("hf:") for s in sources)


def ray_available() -> bool:
    try:
        require_ray()
    except Exception:
        return False
    return True

