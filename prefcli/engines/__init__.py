"""Execution engines for prefcli's stages. `local` is the in-process default (prefcli/stages, streamed batch by
batch where a stage allows it: prefcli.engines.stream);
`ray` (prefcli.engines.ray_*) runs the same algorithms over Ray Data datasets.

Ray is an optional extra: nothing here imports it until a Ray function is called, and a missing
install is a one-line error with the pip hint.
"""

from __future__ import annotations

from ..errors import InputError

RAY_HINT = "pip install 'prefcli[ray]'"


def require_ray():
    """The `ray` module with `ray.data` loaded, or a one-line InputError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(f"the ray engine needs Ray Data, which is not installed: {RAY_HINT}") from None
    return ray


# --------------------------------------------------------------------------- the --engine option

ENGINE_HELP = ("Where the stage runs: local (default, in this process), ray (join the Ray cluster this machine "
               "belongs to, or start one), ray:auto, or ray:ray://HOST:10001; ray options after commas: "
               ",batch=ROWS (rows per map_batches batch) and ,actors=N (actors per model pool; default one per GPU, "
               "else 1), e.g. ray:auto,batch=8192,actors=4. Ray needs pip install 'prefcli[ray]'.")
ENGINE_OPTIONS = ("batch", "actors")


class EngineSpec:
    """A parsed `--engine` value: `kind` local or ray, and for ray the cluster address (None: ray.init's own
    default, `auto`, or a `ray://host:port` client address) and the overrides of the stages' declared
    resources: `batch` (rows per map_batches batch) and `actors` (actors per model pool)."""

    def __init__(self, kind: str = "local", address: str | None = None, *, batch: int | None = None,
                 actors: int | None = None):
        self.kind, self.address, self.batch, self.actors = kind, address, batch, actors

    def __str__(self) -> str:
        text = self.kind if self.address is None else f"{self.kind}:{self.address}"
        return text + "".join(f",{key}={getattr(self, key)}" for key in ENGINE_OPTIONS
                              if getattr(self, key) is not None)

    def __repr__(self) -> str:
        return f"EngineSpec({str(self)!r})"

    def _key(self):
        return (self.kind, self.address, self.batch, self.actors)

    def __eq__(self, other) -> bool:
        return isinstance(other, EngineSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


LOCAL = EngineSpec("local")


def parse_engine(value: "str | EngineSpec | None") -> EngineSpec:
    """`local`, `ray`, `ray:auto`, `ray:ray://host:10001`, each ray form optionally followed by `,batch=N` and
    `,actors=N` (or an EngineSpec) -> EngineSpec; else a one-line InputError."""
    if value is None:
        return LOCAL
    if isinstance(value, EngineSpec):
        return value
    text = str(value).strip()
    head, *extras = text.split(",")
    kind, sep, address = head.partition(":")
    if kind == "local" and not sep and not extras:
        return LOCAL
    if kind == "ray":
        if sep and not address:
            raise InputError(f"--engine {text}: give an address after 'ray:' (auto or ray://HOST:10001)")
        if address and address != "auto" and "://" not in address and ":" not in address:
            raise InputError(f"--engine {text}: the address is auto, HOST:PORT or ray://HOST:10001")
        options: dict[str, int] = {}
        for extra in extras:
            key, eq, number = extra.partition("=")
            if key.strip() not in ENGINE_OPTIONS or not eq or not number.strip().isdigit() or int(number) < 1:
                raise InputError(f"--engine {text}: '{extra}' is not an option (expected batch=ROWS or actors=N, "
                                 "each a positive integer)")
            options[key.strip()] = int(number)
        return EngineSpec("ray", address or None, **options)
    raise InputError(f"--engine {text}: expected local, ray, ray:auto or ray:ray://HOST:10001")


def make_engine(spec: "str | EngineSpec | None", *, quiet: bool = False):
    """The engine object for a spec: `.run(stage, table, ctx) -> StageResult`. For ray this connects to (or
    starts) the cluster now, so a missing install or a bad address fails before any input is read."""
    spec = parse_engine(spec)
    if spec.kind == "local":
        return LocalEngine()
    from .ray_engine import RayEngine

    return RayEngine(spec.address, batch_size=spec.batch, actors=spec.actors, quiet=quiet)


class LocalEngine:
    """The in-process default: `stage.run(table, ctx)`; a stage that streams (export) runs batch by batch over
    its Parquet input, its rows spilled to temp Parquet files and written from there (prefcli.engines.stream);
    a stage that needs only some columns (dedup) gets only those, the rest joined back as its rows are written
    (prefcli.engines.project)."""

    name = "local"

    def read(self, stage, call):
        from .project import project_input
        from .stream import stream_input

        return stream_input(stage, call) or project_input(stage, call) or stage.read(call)

    def take(self, table, indices):
        return table.take(indices)

    def run(self, stage, table, ctx):
        from .project import ProjectedInput, run_projected
        from .stream import BatchInput, run_streamed

        if isinstance(table, BatchInput):
            return run_streamed(stage, table, ctx)
        if isinstance(table, ProjectedInput):
            return run_projected(stage, table, ctx)
        return stage.run(table, ctx)
