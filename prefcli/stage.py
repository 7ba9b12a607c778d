"""The Stage contract: one object per stage, called the same way by the CLI, `prefcli run`, the Python API and
an engine.

A stage declares:
- `Params`: a pydantic model, the single source of its option names, types, defaults, choices, bounds and help;
- `requires`: optional packages it needs, checked at construction with a pip hint;
- `resources`: CPU or GPU, batch size, and whether it works batch by batch or needs the whole table;
- `reads` / `writes`: the side files a caller may attach (an eval set, a fitted model, a set-aside file). The
  stage never opens them: the caller loads each `reads` entry into `ctx.inputs[name]` and writes each artefact
  the stage returns under `StageResult.artifacts[name]`;
- `run(table, ctx) -> StageResult`.

It knows nothing of flags, files or terminals.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError
from .result import StageResult

Mode = Literal["batch", "table"]


class Params(BaseModel):
    """Base of every stage's options. Unknown names are errors; values are validated on construction."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def option(default: Any = ..., help: str = "", *, flag: str | None = None, short: str | None = None,
           low: float | None = None, high: float | None = None, aliases: tuple[str, ...] = (),
           metavar: str | None = None, negatable: bool = False) -> Any:
    """A Params field with what the CLI needs: help text, the flag spelling (default --field-name), a short
    flag, numeric bounds, and old spellings kept as hidden aliases that print a deprecation note."""
    extra = {"flag": flag, "short": short, "aliases": list(aliases), "metavar": metavar, "negatable": negatable}
    return Field(default, description=help, ge=low, le=high, json_schema_extra=extra)


# Help texts several stages share.
TRUST_REMOTE_CODE_HELP = ("Allow a model's own Python code and pickle weights (.bin); off by default, so only "
                          "safetensors weights load.")
EMBED_MODEL_HELP = "Embedding model: local path or hub id (default: the packaged all-MiniLM-L6-v2)."


def option_info(params: type[Params], name: str) -> dict[str, Any]:
    field_info = params.model_fields[name]
    extra = dict(field_info.json_schema_extra or {})
    extra["flag"] = extra.get("flag") or "--" + name.replace("_", "-")
    extra["help"] = field_info.description or ""
    low = high = None
    for item in field_info.metadata:
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    extra["low"], extra["high"] = low, high
    return extra


def build_params(params: type[Params], values: dict[str, Any], where: str = "") -> Params:
    """Params from user values (CLI, TOML, keyword arguments): errors become one line naming the option."""
    try:
        return params(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        flag = option_info(params, name)["flag"] if name in params.model_fields else "--" + name.replace("_", "-")
        if error["type"] == "missing":
            raise InputError(f"{where}missing option '{flag}'") from None
        message = error["msg"].replace("Value error, ", "")
        if error["type"] == "missing":
            raise InputError(f"{where}missing option '{flag}'") from None
        if error["type"] == "extra_forbidden":
            message = "no such option"
        raise InputError(f"{where}{flag}: {message} (got {error.get('input')!r})") from None


@dataclass(frozen=True)
class Requirement:
    module: str  # import name
    package: str  # what pip installs

    def missing(self) -> bool:
        return importlib.util.find_spec(self.module) is None


@dataclass(frozen=True)
class Resources:
    """What an engine needs to schedule a stage."""

    mode: Mode = "table"  # batch: rows are independent, any split works; table: needs every row at once
    gpus: float = 0.0  # per worker, where GPUs exist
    batch_size: int | None = None  # rows per batch for batch stages
    uses_models: bool = False  # loads embedders or reward models (device, cache, trust-remote-code apply)
    on_ray: str = "one Ray task on a worker (needs the whole table; no distributed algorithm yet)"


@dataclass(frozen=True)
class Read:
    """A side file a stage can be given: loaded by the caller with `load(path_or_paths)` into ctx.inputs."""

    name: str  # key in ctx.inputs, and the Python API keyword
    flag: str
    help: str
    load: Callable[[Any], Any]
    multiple: bool = False
    required: bool = False


@dataclass(frozen=True)
class Write:
    """A side file a stage can produce: `StageResult.artifacts[name]` (or the set-aside rows for `set_aside`)."""

    name: str
    flag: str
    help: str
    default_suffix: str | None = None  # derived from --output when not given (e.g. ".rejects.parquet")
    kind: str = "file"  # or "dir"


SET_ASIDE = "set_aside"


@dataclass
class Context:
    """What a stage may use besides its table: the seed, the device, the caches, loaded side inputs, a sink for
    progress and warnings. Built by the caller; the stage never reads the environment or the terminal."""

    seed: int = 0
    device: str = "auto"
    cache_dir: Path | None = None  # None: the user cache dir
    use_cache: bool = True
    inputs: dict[str, Any] = field(default_factory=dict)
    report: Any = None  # a prefcli.report.Reporter, or None for silence
    tasks: Any = None  # tasks(fn, shared, items) -> [fn(shared, item) ...]: how independent pieces of work run
    #                    (the ensemble's folds). None: here (the ensemble: on `jobs` threads); ray engine: Ray tasks
    restored: frozenset[str] = frozenset()  # input columns the caller puts back on the rows it writes (the local
    #                    engine's projection reads them again from the input file): a stage may leave those it
    #                    did not change out of its kept and set-aside tables, so they are not copied to split them

    def warn(self, message: str) -> None:
        if self.report is not None:
            self.report.warn(message)

    def progress(self, description: str, total: int | None = None):
        from contextlib import nullcontext

        from .report import Advance

        if self.report is None:
            return nullcontext(Advance(None, None))
        return self.report.progress(description, total)


class Stage:
    """Base class of every stage. Subclasses set the class attributes and implement `run`."""

    name: ClassVar[str]  # the command, e.g. "dedup" or "length-bias fit"
    Params: ClassVar[type[Params]]
    summary: ClassVar[str] = ""  # one line for --help
    requires: ClassVar[tuple[Requirement, ...]] = ()
    resources: ClassVar[Resources] = Resources()
    input: ClassVar[Literal["pairs", "sources", "none"]] = "pairs"
    output: ClassVar[Literal["parquet", "file", "dir", "none"]] = "parquet"
    reads: ClassVar[tuple[Read, ...]] = ()
    writes: ClassVar[tuple[Write, ...]] = ()
    uses_seed: ClassVar[bool] = False  # the seed changes what the stage does (sampling, shuffles, ties)
    uses_cache: ClassVar[bool] = False  # keeps a cache even without models (e.g. the ingest memo)
    sets_aside: ClassVar[bool] = False  # may set rows aside: --max-reject-rate applies
    engines: ClassVar[tuple[str, ...]] = ("local",)  # ("local", "ray"): the command takes --engine
    input_help: ClassVar[str] = "Input files."
    output_help: ClassVar[str] = "Output Parquet file, or - for stdout."

    def __init__(self, params: Params | dict[str, Any] | None = None, **values: Any):
        if params is None or isinstance(params, dict):
            params = build_params(self.Params, {**(params or {}), **values})
        elif values:
            params = params.model_copy(update=values)
        self.params = params
        missing = [r.package for r in self.requires if r.missing()]
        if missing:
            raise InputError(f"{self.name} needs {', '.join(missing)}: pip install {' '.join(missing)}")

    def run(self, table: pa.Table, ctx: Context) -> StageResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, ctx: Context) -> None:
        """Cross-option checks that need the loaded inputs; raise InputError. Called before any work."""

    # -- hooks of the file path (prefcli.execute); the defaults fit a one-in, one-out Parquet stage
    set_aside_word: ClassVar[str] = "set aside"  # "removed", "rejected": in the --max-reject-rate message

    def validate(self, call) -> None:
        """Checks on the paths given (e.g. an option that needs another); before anything is read."""
        if self.output != "none" and call.output is None and self.output_required():
            raise InputError("missing option '--output' / '-o'")

    def output_required(self) -> bool:
        return True

    def output_kind(self, call) -> str:
        return "dir" if self.output == "dir" else "file"

    def planned_writes(self) -> tuple[Write, ...]:
        """The side files this invocation may write (e.g. the set-aside file only with --drop)."""
        return self.writes

    empty_input: ClassVar[str | None] = None  # e.g. "no pairs to vote on": an empty input is an error

    def read(self, call) -> pa.Table | None:
        from . import io

        if self.input != "pairs":
            return None
        table = io.read_pairs(call.inputs[0], require=self.required_columns())
        if self.empty_input and not table.num_rows:
            raise InputError(f"{call.inputs[0]}: {self.empty_input}")
        return table

    def write(self, plan, paths: dict[str, str], result: StageResult) -> None:
        from .execute import write_default

        write_default(self, plan, paths, result)

    def final_stats(self, result: StageResult, rows_in: int, seconds: float) -> dict[str, Any]:
        return {**result.stats, "seconds": round(seconds, 2)}

    def after_write(self, stats: dict[str, Any]) -> None:
        """Checks that fail the command after its outputs are written (exit 1), e.g. too many failed requests."""

    def after_report(self, stats: dict[str, Any]) -> None:
        """Like after_write, once the summary is printed."""

    def tables_to_stdout(self, output: str | None) -> bool:
        """Report tables go to stdout when the command writes no data there (e.g. --explain without -o)."""
        return False

    @classmethod
    def report_tables(cls, stats: dict[str, Any]) -> list:
        return []

    # -- hooks of the engines (prefcli.engines)
    def batchwise(self) -> bool:
        """True when this invocation may run batch by batch (`resources.mode == "batch"`, unless an option
        makes it global, e.g. export --shuffle)."""
        return self.resources.mode == "batch"

    def merge_batches(self, table: pa.Table, results: list[StageResult], ctx: Context) -> StageResult:
        """One result from the results of `run` on consecutive batches of `table`, in order: rows concatenated,
        integer stats summed, other stats from the first batch."""
        outs = [r.out for r in results if r.out is not None]
        asides = [r.set_aside for r in results if r.set_aside is not None and r.set_aside.num_rows]
        stats: dict[str, Any] = {}
        for result in results:
            for key, value in result.stats.items():
                if isinstance(value, int) and not isinstance(value, bool) and key in stats:
                    stats[key] += value
                else:
                    stats.setdefault(key, value)
        out = pa.concat_tables(outs, promote_options="permissive") if outs else None
        aside = pa.concat_tables(asides, promote_options="permissive") if asides else None
        return StageResult(out=out, set_aside=aside, stats=stats, added=sum(r.added for r in results))

    def streams(self) -> bool:
        """True when `run` may be called on consecutive batches of the input, in order, on this one object (which
        may carry state from batch to batch, e.g. export's seen repeats): the local engine then reads, runs and
        writes batch by batch, so memory stays flat. Batch-wise stages stream."""
        return self.batchwise()

    def start_stream(self) -> None:
        """Reset the state `run` carries between the batches of one stream (and what `prepare` set)."""

    def first_pass(self, table: pa.Table, ctx: Context) -> pa.Table | None:
        """For a batch-wise stage whose batches need a figure of the whole input (length-bias apply: the robust
        scale, the diagnosis): the few columns of one batch that `prepare` needs (numbers, no texts). An engine
        computes them batch by batch (a first pass) and hands them to `prepare`. None: no first pass."""
        return None

    def prepare(self, columns: pa.Table, ctx: Context) -> None:
        """Called on the driver with the first pass of every batch, concatenated in input order, before `run`
        is called on the batches; `start_stream` clears what it set."""

    def has_first_pass(self) -> bool:
        return type(self).first_pass is not Stage.first_pass

    def required_columns(self) -> dict[str, str] | None:
        """Columns the input must hold beyond the pairs schema, each with a hint (e.g. "run `prefcli vote`
        first"); every engine checks them before `run`."""
        return None

    def columns_needed(self, ctx: Context) -> list[str] | None:
        """For a whole-table stage that adds columns and keeps or sets aside rows (its rows written through
        `takes_row_blocks`): the input columns `run` reads. The local engine then hands `run` only those (and a
        row number it must keep) and joins the rest back as the rows are written. None: every column."""
        return None

    def rows_used(self, n: int, ctx: Context):
        """Sorted indices of the rows `run` needs when it needs only some of the `n` input rows (e.g. a fit on a
        seeded sample), else None. `execute` hands `run` only those rows, and an engine fetches only those."""
        return None

    def takes_row_blocks(self) -> bool:
        """True when `write` and the hooks after it accept rows in blocks for `out`/`set_aside` (rows left on a
        Ray cluster, or spilled by the local stream: anything with `iter_tables()`): the default write hands them
        to the OutputPlan, which writes them block by block."""
        cls = type(self)
        return cls.write is Stage.write and cls.after_write is Stage.after_write

    WORKER_DROP: ClassVar[tuple[str, ...]] = ("_models",)  # state rebuilt on a worker (loaded models)

    def worker_copy(self) -> "Stage":
        """A copy to ship to an engine's worker: loaded models are left behind (the worker loads its own)."""
        import copy

        clone = copy.copy(self)
        for name in self.WORKER_DROP:
            if name in clone.__dict__:
                clone.__dict__[name] = None
        return clone

    def worker_state(self) -> dict[str, Any]:
        """What `run` set on this object that `write`/`final_stats` use on the driver (loaded models left out)."""
        return {k: v for k, v in self.__dict__.items() if k not in self.WORKER_DROP and k != "params"}


STAGES: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    STAGES[cls.name] = cls
    return cls


def stage_class(name: str) -> type[Stage]:
    """The stage registered under `name`: "length-bias fit", "length_bias_fit" and "length-bias-fit" all match."""
    _load_all()

    def spelling(text: str) -> str:
        return "-".join(text.replace("_", " ").replace("-", " ").split())

    found = {spelling(key): cls for key, cls in STAGES.items()}.get(spelling(name))
    if found is None:
        raise InputError(f"no stage named {name!r} (stages: {', '.join(sorted(STAGES))})")
    return found


def _load_all() -> None:
    import importlib
    import pkgutil

    from . import stages

    for info in pkgutil.iter_modules(stages.__path__):
        importlib.import_module(f"{stages.__name__}.{info.name}")
