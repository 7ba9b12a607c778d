"""Ray Data plumbing shared by the distributed stages: cluster connection, a global row index, per-block row
accounting, Parquet datasets with all-or-nothing writes, and one-line errors out of remote tasks.

Nothing here collects rows on the driver: only per-block counts, file names and small arrays travel there.

Ray version notes (pinned in pyproject's `ray` extra, Ray 2.60):
- pools are chosen with `compute=`: `ray.data.ActorPoolStrategy(size=n)` (or `min_size=`/`max_size=`) for a
  callable class (a model loaded once per actor, `num_gpus=1` per actor on GPU nodes) and
  `ray.data.TaskPoolStrategy(size=n)` for stateless functions. `concurrency=` on map_batches is deprecated
  in this version, and so are free `**ray_remote_args` (named ones such as num_cpus/num_gpus/memory stay).
- `Dataset.repartition(n, keys=[...])` is a hash partition (the default shuffle strategy is a hash
  shuffle): every row with one key value lands in the same output block, and `map_batches(batch_size=None)`
  then sees whole blocks; `GroupedData.map_groups` is built the same way. The hash groupbys in
  prefcli.engines.ray_dedup use that pair with one vectorised reducer per block, not one call per group.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from ..errors import InputError, PrefcliError
from . import require_ray

ROW = "_row"  # global row index: position of the row in the stage's input (file order, then row order)
MANIFEST = "_prefcli_manifest.json"  # written last into a Parquet dataset directory: its file list and rows


# --------------------------------------------------------------------------- cluster and context

def connect(address: str | None = None, **init_kwargs):
    """Start a local cluster (address None) or join one (`auto`, `ray://host:10001`); idempotent.

    Returns the `ray` module. Row order must be reproducible, so the data context keeps block order.
    """
    ray = require_ray()
    if not ray.is_initialized():
        if address is None:  # a local cluster's workers import the same prefcli as this driver
            env = dict(init_kwargs.pop("runtime_env", None) or {})
            env_vars = dict(env.get("env_vars") or {})
            here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            path = env_vars.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
            env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (here, path) if p)
            init_kwargs["runtime_env"] = {**env, "env_vars": env_vars}
        ray.init(address=address, **init_kwargs)
    ordered_context()
    return ray


def ordered_context():
    """The current DataContext, set to keep block order (the global row index depends on it) and to raise a
    map function's own exception, not a UserCodeException that keeps only its traceback text (so that
    one_line_errors can hand a prefcli error on as itself)."""
    require_ray()
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.raise_original_map_exception = True
    return ctx


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """A prefcli error raised inside a Ray task or actor comes out as itself (one line, its exit code),
    not wrapped in Ray's task-error traceback."""
    try:
        yield
    except Exception as exc:  # a RayTaskError(InputError) is an InputError too, with a traceback for message
        cause = _prefcli_cause(exc)
        if cause is None or cause is exc:
            raise
        raise cause from None


def _prefcli_cause(exc: BaseException | None) -> PrefcliError | None:
    """The prefcli error behind a Ray error. Ray keeps a task's exception as `.cause` and re-raises it as a class
    deriving from both RayTaskError and the original (its message a traceback); Ray Data chains a UDF's
    exception under UserCodeException, keeping only its text unless the context sets raise_original_map_exception
    (ordered_context does). Walks `.cause`, `__cause__` and `__context__` to the original."""
    todo, seen = [exc], set()
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen or len(seen) > 50:
            continue
        seen.add(id(current))
        if isinstance(current, PrefcliError) and not _is_ray_error(current):
            # Ray Data appends its retry advice to the exception's message: a prefcli error is one line
            if current.args and isinstance(current.args[0], str) and "\n" in current.args[0]:
                current.args = (current.args[0].split("\n", 1)[0], *current.args[1:])
            return current
        todo.extend([getattr(current, "cause", None), current.__cause__, current.__context__])
    return None


def _is_ray_error(exc: BaseException) -> bool:
    return any(cls.__module__.startswith("ray.") for cls in type(exc).__mro__)


# --------------------------------------------------------------------------- row index and row counts

def block_refs(ds) -> list:
    """The dataset's blocks as object refs, in order (executes the dataset; the blocks stay in the object store)."""
    return list(ds.to_arrow_refs())


def with_row_index(ds, column: str = ROW):
    """`ds` with a global int64 row index column: block counts go to the driver, never rows.

    Blocks are numbered in dataset order (the data context keeps order), then each block gets its offset
    (the sum of the earlier blocks' rows) in a remote task. The result is materialized in the object store.
    """
    ray = require_ray()
    ordered_context()
    refs = block_refs(ds)
    counts = ray.get([_num_rows.remote(ref) for ref in refs]) if refs else []
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if counts else []
    indexed = [_add_index.remote(ref, int(start), column) for ref, start in zip(refs, offsets)]
    return ray.data.from_arrow_refs(indexed) if indexed else ds


def _remote(fn):
    ray = require_ray()
    return ray.remote(num_cpus=1)(fn)


class _LazyRemote:
    """A remote function made on first use, so that importing this module does not import Ray."""

    def __init__(self, fn):
        self.fn, self._remote = fn, None

    def remote(self, *args, **kwargs):
        if self._remote is None:
            self._remote = _remote(self.fn)
        return self._remote.remote(*args, **kwargs)


def _count(table: pa.Table) -> int:
    return table.num_rows


def _index(table: pa.Table, start: int, column: str) -> pa.Table:
    index = pa.array(np.arange(start, start + table.num_rows, dtype=np.int64))
    if column in table.column_names:
        return table.set_column(table.column_names.index(column), column, index)
    return table.append_column(column, index)


_num_rows = _LazyRemote(_count)
_add_index = _LazyRemote(_index)


def block_rows(ds) -> list[int]:
    """Rows in each block of `ds`, in order (from the blocks' metadata: no rows move)."""
    counts = []
    for bundle in ds.iter_internal_ref_bundles():
        counts.extend(meta.num_rows for meta in bundle.metadata)
    return counts


@dataclass
class RowAccount:
    """Rows in, out and set aside for one stage, each summed over the blocks of its dataset."""

    rows_in: int
    rows_out: int
    rows_set_aside: int
    added: int = 0
    blocks_out: int = 0
    blocks_set_aside: int = 0

    @property
    def holds(self) -> bool:
        return self.rows_in + self.added == self.rows_out + self.rows_set_aside


def account(rows_in, out, set_aside=None, *, added: int = 0) -> RowAccount:
    """out + set aside = in (+ rows the stage adds), each side summed over blocks; raises like
    prefcli.report.check_accounting when it does not hold. `rows_in` is a count or the input dataset."""
    in_count = rows_in if isinstance(rows_in, (int, np.integer)) else sum(block_rows(rows_in))
    out_blocks = block_rows(out)
    aside_blocks = block_rows(set_aside) if set_aside is not None else []
    acc = RowAccount(int(in_count), sum(out_blocks), sum(aside_blocks), added, len(out_blocks), len(aside_blocks))
    if not acc.holds:
        raise AssertionError(f"row accounting broken: in {acc.rows_in} + added {added} != "
                             f"out {acc.rows_out} + set aside {acc.rows_set_aside}")
    return acc


def gather_table(ds) -> pa.Table:
    """A small dataset (edges, counters, a sample) as one table on the driver. Never for rows."""
    ray = require_ray()
    refs = block_refs(ds)
    tables = [t for t in ray.get(refs) if t.num_rows] if refs else []
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


# --------------------------------------------------------------------------- Parquet datasets

def resolve_path(path: str, filesystem=None):
    """(pyarrow filesystem, path on it) for a local path or any URI pyarrow knows (s3://, gs://, hdfs://)."""
    from pyarrow import fs as pafs

    if filesystem is not None:
        return filesystem, path
    if "://" in str(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), os.path.abspath(os.fspath(path))


def _exists(fs, path: str) -> bool:
    from pyarrow import fs as pafs

    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _delete(fs, path: str) -> None:
    from pyarrow import fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type != pafs.FileType.NotFound:
        fs.delete_file(path)


def write_parquet_dataset(ds, path: str, *, filesystem=None, **write_kwargs) -> dict:
    """Write `ds` as a directory of Parquet part files, all or nothing.

    The parts and a manifest (written last: file names and rows per file) go into a staging directory
    beside the target (`.NAME.<id>.tmp`, the name prefcli.io.recover_interrupted cleans up), which then
    replaces the target with one rename; a previous dataset is moved to `.NAME.old` first and deleted after.
    On object stores, where a directory rename is a copy, readers rely on the manifest: a directory
    without one is not a dataset (see read_parquet_dataset). Returns the manifest.
    """
    require_ray()
    ordered_context()
    fs, target = resolve_path(path, filesystem)
    parent, name = posixpath.split(target.rstrip("/"))
    staging = posixpath.join(parent, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    old = posixpath.join(parent, f".{name}.old")
    try:
        if parent:
            fs.create_dir(parent, recursive=True)
        with one_line_errors():
            ds.write_parquet(staging, filesystem=fs, filename_provider=_part_names(), **write_kwargs)
        manifest = _manifest(fs, staging)
        with fs.open_output_stream(posixpath.join(staging, MANIFEST)) as out:
            out.write(json.dumps(manifest, indent=1).encode())
        if _exists(fs, target):
            _delete(fs, old)
            fs.move(target, old)
        fs.move(staging, target)
        _delete(fs, old)
    except BaseException:
        with contextlib.suppress(Exception):
            _delete(fs, staging)
        raise
    return manifest


def _part_names():
    from ray.data.datasource import FilenameProvider

    class PartNames(FilenameProvider):
        """part-TASK-BLOCK.parquet: names sort in write order (the data context keeps order)."""

        def get_filename_for_block(self, block, write_uuid, task_index, block_index):
            return f"part-{task_index:06d}-{block_index:06d}.parquet"

    return PartNames()


def _manifest(fs, directory: str) -> dict:
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    files = []
    for info in sorted(fs.get_file_info(pafs.FileSelector(directory)), key=lambda i: i.base_name):
        if info.type == pafs.FileType.File and info.base_name.endswith(".parquet"):
            with fs.open_input_file(info.path) as fh:
                files.append({"file": info.base_name, "rows": pq.ParquetFile(fh).metadata.num_rows})
    return {"format": "prefcli-parquet-dataset/1", "files": files, "rows": sum(f["rows"] for f in files)}


def read_manifest(path: str, *, filesystem=None) -> dict:
    fs, root = resolve_path(path, filesystem)
    where = posixpath.join(root, MANIFEST)
    try:
        with fs.open_input_stream(where) as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        raise InputError(f"{path}: not a complete prefcli Parquet dataset (no {MANIFEST}; "
                         "an interrupted write leaves none)") from None


def read_parquet_dataset(path: str, *, columns: Sequence[str] | None = None, filesystem=None,
                         row_index: bool = True, **read_kwargs):
    """The part files a manifest lists, in order, as one Ray dataset (with the global row index column)."""
    ray = require_ray()
    ordered_context()
    fs, root = resolve_path(path, filesystem)
    manifest = read_manifest(path, filesystem=filesystem)
    files = [posixpath.join(root, f["file"]) for f in manifest["files"]]
    if not files:
        raise InputError(f"{path}: the Parquet dataset has no part files")
    ds = ray.data.read_parquet(files, filesystem=fs, columns=list(columns) if columns else None, **read_kwargs)
    return with_row_index(ds) if row_index else ds
