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

Rows stay on the cluster (prefcli.engines.ray_rows.ClusterRows): a Parquet input (file or dataset directory)
is read and validated by the workers, and every path hands its output back as object refs to blocks, which the
driver writes one block at a time into the same staged files as the local engine. The driver's memory does not
grow with the data, except where a stage's own writer needs the whole table (stages whose `write` is their own,
e.g. length-bias fit, review export; stdin input; stdout output; export --to hf-dataset).
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..result import StageResult, check_accounting, whole_table
from ..stage import Context, Stage
from ..stages.ingest import IngestStream
from . import require_ray
from .ray_data import connect, gather_table, one_line_errors, ordered_context
from .ray_rows import ClusterRows, collect_streamed, in_row_order, stream_result

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
    return replace(ctx, report=None, cache_dir=ctx.cache_dir or (default_cache_dir() if models else None),
                   tasks=RayTasks())


class RayTasks:
    """`Context.tasks` on the ray engine: each item is a Ray task (the shared inputs go to the object store
    once). Called from inside a stage's task on a worker, e.g. for the ensemble's cross-fitting folds; the
    waiting task gives its CPU back to them while it waits."""

    def __call__(self, fn, shared, items) -> list:
        import ray

        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(fn)
        ref = ray.put(shared)
        return ray.get([task.remote(ref, item) for item in items])


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


def run_table_stage(stage: Stage, table, ctx: Context, hooks=None):
    """The body of the one-task path, on a worker (a streaming generator): the kept and set-aside rows in
    blocks, then (result without rows, (the stage's state for the driver, warnings)). `table` is a table, the
    refs of its blocks, or None. `hooks` (e.g. ray_vote.UseScores) may prepare the stage and adjust the result."""
    if isinstance(table, list):
        import ray

        blocks = ray.get(table)
        table = pa.concat_tables(blocks, promote_options="permissive") if len(blocks) > 1 else blocks[0]
    ctx, sink = _on_worker(ctx)
    if hooks is not None:
        hooks.before(stage, ctx)
    result = _materialized(stage.run(table, ctx))
    if table is not None:
        check_accounting(table.num_rows, result, added=result.added)
    if hooks is not None:
        hooks.after(result)
    yield from stream_result(result, (stage.worker_state(), sink.warnings))


KIND, PAYLOAD = "_kind", "_payload"  # a batch result as rows: kept rows, set-aside rows, the rest (pickled)
OUT, ASIDE, META = 0, 1, 2


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _pack(result: StageResult, warnings: list[str], rows_in: int) -> pa.Table:
    """A batch's result as up to three rows: its kept rows and its set-aside rows (each an Arrow IPC stream),
    and the result without them, with the warnings and the rows in (pickled). The rows stay in the object
    store until the driver writes them; only the META rows reach the driver before that."""
    from ray import cloudpickle

    kinds, payloads = [], []
    for kind, rows in ((OUT, result.out), (ASIDE, result.set_aside)):
        if rows is not None:
            kinds.append(kind)
            payloads.append(_ipc(rows))
    meta = StageResult(out=None if result.out is None else result.out.slice(0, 0), stats=result.stats,
                       artifacts=result.artifacts, added=result.added)
    kinds.append(META)
    payloads.append(cloudpickle.dumps((meta, warnings, rows_in)))
    return pa.table({KIND: pa.array(kinds, pa.int8()), PAYLOAD: pa.array(payloads, pa.large_binary())})


def _metas(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch.column(KIND), META))


def _unpack(batch: pa.Table, kind: int) -> pa.Table:
    """The rows of one kind (OUT or ASIDE) of packed batch results, in order."""
    payloads = batch.filter(pc.equal(batch.column(KIND), kind)).column(PAYLOAD).to_pylist()
    tables = [pa.ipc.open_stream(payload).read_all() for payload in payloads]
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def first_pass_batch(batch: pa.Table, stage: Stage, ctx: Context) -> pa.Table:
    """One batch through the stage's first pass (`Stage.first_pass`)."""
    ctx, _ = _on_worker(ctx)
    return stage.first_pass(batch, ctx)


def run_batch(batch: pa.Table, stage: Stage, ctx: Context) -> pa.Table:
    """One batch through `stage.run` (a stateless task): its result, checked and packed."""
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


def quiet_ray_logs() -> None:
    import logging

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


class RayEngine:
    """`--engine ray[:ADDRESS]`: connects once (a missing install is the one-line pip hint, exit 2)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, batch_size: int | None = None, actors: int | None = None,
                 quiet: bool = False):
        if quiet:  # --quiet/--json: no start-up notes, no Ray Data INFO lines, no progress bars
            quiet_ray_logs()
        self.ray = connect(address, **({"log_to_driver": False, "logging_level": "error"} if quiet else {}))
        self.batch_size, self.actors = batch_size, actors
        if quiet:
            quiet_ray_logs()  # ray.init configures Ray's loggers again
            ordered_context().enable_progress_bars = False

    # -- what the cluster has
    def gpus(self) -> float:
        return float(self.ray.cluster_resources().get("GPU", 0))

    def cpus(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    # -- input: rows read by the workers
    def read(self, stage: Stage, call):
        """The stage's input as ClusterRows when it is a pairs Parquet file or dataset directory the stage reads
        the default way; else the local read (stdin, stages with their own reader)."""
        from .. import io
        from .ray_rows import read_pairs

        if stage.input != "pairs" or type(stage).read is not Stage.read or not call.inputs:
            return stage.read(call)
        path = call.inputs[0]
        if path == io.STDIO or not (io.dataset_parts(path) or io.parquet_rows(path) is not None):
            return stage.read(call)
        with one_line_errors():
            rows = read_pairs(path, where=str(path), require=stage.required_columns())
        if stage.empty_input and not rows.num_rows:
            raise InputError(f"{path}: {stage.empty_input}")
        return rows

    def take(self, table, indices):
        """The rows at sorted `indices`, taken where their blocks are."""
        if not isinstance(table, ClusterRows):
            return table.take(indices)
        from .ray_rows import take_rows

        return take_rows(table, indices)

    def run(self, stage: Stage, table, ctx: Context) -> StageResult:
        ordered_context()
        with one_line_errors():
            result = self._run(stage, table, ctx)
        if not stage.takes_row_blocks():  # the stage's own writer needs tables
            result.out, result.set_aside = whole_table(result.out), whole_table(result.set_aside)
        return result

    def _run(self, stage: Stage, table, ctx: Context) -> StageResult:
        if table is None:
            if stage.name == "ingest" and _files_only(ctx):
                return self.ingest(stage, ctx)
            return stage.run(table, ctx)  # no table to ship: the stage streams its own input on the driver
        if stage.name == "dedup":
            result = self.dedup(stage, table, ctx)
            if result is not None:
                return result
        if stage.name == "vote":
            return self.vote(stage, table, ctx)
        if stage.batchwise():
            return self.batches(stage, table, ctx)
        return self.one_task(stage, table, ctx)

    # -- vote: hf: models in an actor pool, the rest in one task
    def vote(self, stage: Stage, table, ctx: Context) -> StageResult:
        from ray.data import ActorPoolStrategy

        from .ray_vote import COUNTERS, ScoreBatch, UseScores, counter_column, counter_sums, distributable

        which = [j for j, spec in enumerate(stage.params.rm) if distributable(spec)]
        if not which:
            return self.one_task(stage, table, ctx)
        rows = self.batch_size or DEFAULT_BATCH
        ds = table.dataset() if isinstance(table, ClusterRows) else blocks_of(self.ray, table, rows)
        size = self.actors or max(1, int(self.gpus()) or 1)
        scored = ds.map_batches(ScoreBatch, batch_size=rows, batch_format="pyarrow",
                                fn_constructor_kwargs={"stage": stage.worker_copy(), "ctx": for_workers(ctx, stage),
                                                       "which": which},
                                compute=ActorPoolStrategy(size=size),
                                num_gpus=1 if self.gpus() else None).materialize()
        sums = gather_table(scored.map_batches(counter_sums, batch_format="pyarrow", fn_kwargs={"which": which}))
        counters = {j: {key: int(pc.sum(sums.column(counter_column(j, key))).as_py() or 0) if sums.num_rows else 0
                        for key in COUNTERS} for j in which}
        return self.one_task(stage, ClusterRows.of_dataset(scored), ctx, hooks=UseScores(which, counters))

    # -- ingest: one task per file
    def ingest(self, stage: Stage, ctx: Context) -> StageResult:
        """Each source file parsed (or replayed from the memo) by its own task, a streaming generator; the
        driver writes the chunks in source order, one at a time."""
        result = stage.run(None, ctx)
        remote = ClusterIngestStream.__new__(ClusterIngestStream)
        remote.__dict__.update(result.artifacts["chunks"].__dict__)  # the same stats dict as the result's
        remote.cache_dir = for_workers(ctx, stage).cache_dir if ctx.cache_dir and ctx.use_cache else None
        remote.ray = self.ray
        result.artifacts["chunks"] = remote
        return result

    # -- one Ray task on a worker
    def one_task(self, stage: Stage, table, ctx: Context, hooks=None) -> StageResult:
        """The stage's `run` as one task on a worker, a streaming generator: its rows come back as refs to
        blocks (owned by the driver, so a lost one is rebuilt), and only the rest of the result is fetched."""
        ray = self.ray
        gpus = 1.0 if stage.resources.uses_models and self.gpus() else 0.0
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=TASK_RETRIES,
                          num_returns="streaming")(run_table_stage)
        worker_ctx = for_workers(ctx, stage)
        shipped = table.refs if isinstance(table, ClusterRows) else (ray.put(table) if table is not None else None)
        refs = list(task.remote(stage.worker_copy(), shipped, worker_ctx, hooks))
        result, (state, warnings) = collect_streamed(refs)
        stage.__dict__.update(state)
        _replay(ctx, warnings)
        return result

    # -- map_batches
    def batches(self, stage: Stage, table, ctx: Context) -> StageResult:
        rows = self.batch_size or stage.resources.batch_size or DEFAULT_BATCH
        ds = table.dataset() if isinstance(table, ClusterRows) else blocks_of(self.ray, table, rows)
        worker_ctx = for_workers(ctx, stage)
        stage.start_stream()
        try:
            if stage.has_first_pass() and table.num_rows:  # only the first pass's columns reach the driver
                stage.prepare(gather_table(ds.map_batches(first_pass_batch, batch_size=rows, batch_format="pyarrow",
                                                          fn_kwargs={"stage": stage.worker_copy(),
                                                                     "ctx": worker_ctx})), ctx)
            return self._batches(stage, table, ds, rows, worker_ctx, ctx)
        finally:
            stage.start_stream()

    def _batches(self, stage: Stage, table, ds, rows: int, worker_ctx: Context, ctx: Context) -> StageResult:
        from ray import cloudpickle
        from ray.data import ActorPoolStrategy, TaskPoolStrategy

        if stage.resources.uses_models:
            size = self.actors or max(1, int(self.gpus()) or 1)
            mapped = ds.map_batches(BatchActor, batch_size=rows, batch_format="pyarrow",
                                    fn_constructor_kwargs={"stage": stage.worker_copy(), "ctx": worker_ctx},
                                    compute=ActorPoolStrategy(size=size), num_gpus=1 if self.gpus() else None)
        else:
            mapped = ds.map_batches(run_batch, batch_size=rows, batch_format="pyarrow",
                                    fn_kwargs={"stage": stage.worker_copy(), "ctx": worker_ctx},
                                    compute=TaskPoolStrategy(size=self.actors) if self.actors else TaskPoolStrategy())
        packed = mapped.materialize()  # the batches' rows stay in the object store
        metas = gather_table(packed.map_batches(_metas, batch_format="pyarrow"))
        results, warnings, rows_in = [], [], 0
        for blob in metas.column(PAYLOAD).to_pylist() if metas.num_rows else []:
            result, said, count = cloudpickle.loads(blob)
            results.append(result)
            rows_in += count
            warnings += [w for w in said if w not in warnings]
        if rows_in != table.num_rows:
            raise AssertionError(f"row accounting broken: {table.num_rows} rows in, {rows_in} reached the batches")
        _replay(ctx, warnings)
        if not results:
            return stage.run(whole_table(table), ctx)
        merged = stage.merge_batches(pa.table({}), results, ctx)  # stats and artefacts; the rows come next
        out = ClusterRows.of_dataset(packed.map_batches(_unpack, batch_format="pyarrow", fn_kwargs={"kind": OUT}))
        aside = ClusterRows.of_dataset(packed.map_batches(_unpack, batch_format="pyarrow",
                                                          fn_kwargs={"kind": ASIDE}))
        merged.out = out if merged.out is not None else None
        merged.set_aside = aside if aside.num_rows else None
        return merged

    # -- dedup: the distributed algorithms
    def dedup(self, stage: Stage, table: pa.Table, ctx: Context) -> StageResult | None:
        from ..models.embed import STATIC, build_embedder
        from .ray_dedup import decontaminate, semantic_dedup

        p = stage.params
        if p.explain or getattr(stage, "_graph_path", None):
            ctx.warn("dedup --graph/--explain: the all-pairs graph is a local artefact; the local dedup runs as "
                     "one Ray task")
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
        ds = table.dataset() if isinstance(table, ClusterRows) else blocks_of(self.ray, table, rows)
        options, against = stage.options(ctx), ctx.inputs.get("against") or []
        if against:  # decontamination, block by block in an actor pool
            ds = decontaminate(ds, against, verifier or proposer, options, actors=actors,
                               proposer_factory=proposer if verifier is not None else None,
                               batch_size=self.batch_size or 1024, num_gpus=1 if gpus else None)
        result = semantic_dedup(ds, proposer, options, keep_row=True,
                                num_gpus=1 if gpus else None, embed_actors=actors, verify_actors=actors,
                                verifier_factory=verifier)
        out = in_row_order(result.out)
        aside = in_row_order(result.set_aside) if result.set_aside is not None else None
        stage._cache_root = None  # no all-pairs graph to cache
        if against:
            result.stats["against_threshold"] = options.against_threshold
        return StageResult(out=out, set_aside=aside if aside is not None and aside.num_rows else None,
                           stats=result.stats)


def _files_only(ctx: Context) -> bool:
    sources = ctx.inputs.get("sources") or []
    return bool(sources) and all(s.file != "-" and not str(s.file).startswith("hf:") for s in sources)


def ray_available() -> bool:
    try:
        require_ray()
    except Exception:
        return False
    return True


def parse_source_task(stream, raw):
    """On a worker: one source's chunks, then its SourceDone (a streaming generator)."""
    yield from stream.parse_source(raw)


class ClusterIngestStream(IngestStream):
    """An IngestStream whose sources are parsed by Ray tasks, one per file, all started at once; the chunks
    come back in source order, one object at a time."""

    def parsed_sources(self):
        ray = self.ray
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, num_returns="streaming")(parse_source_task)
        shipped = IngestStream.__new__(IngestStream)
        shipped.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("ctx", "ray", "cache_dir")})
        shipped.ctx = None
        if self.cache_dir is not None:
            from ..cache.ingest import IngestCache

            shipped.cache = IngestCache(self.cache_dir)
        generators = [task.remote(shipped, raw) for raw in self.sources]
        for generator in generators:
            yield _fetched(ray, generator)


def _fetched(ray, generator):
    with one_line_errors():
        for ref in generator:
            yield ray.get(ref)
