"""Execution engines for prefcli's stages. `local` is the in-process default (prefcli/stages);
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
               "belongs to, or start one), ray:auto, or ray:ray://HOST:10001. Ray needs pip install 'prefcli[ray]'.")


class EngineSpec:
    """A parsed `--engine` value: `kind` local or ray, and for ray the cluster address (None: ray.init's own
    default, `auto`, or a `ray://host:port` client address)."""

    def __init__(self, kind: str = "local", address: str | None = None):
        self.kind, self.address = kind, address

    def __str__(self) -> str:
        return self.kind if self.address is None else f"{self.kind}:{self.address}"

    def __repr__(self) -> str:
        return f"EngineSpec({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, EngineSpec) and (self.kind, self.address) == (other.kind, other.address)

    def __hash__(self) -> int:
        return hash((self.kind, self.address))


LOCAL = EngineSpec("local")


def parse_engine(value: "str | EngineSpec | None") -> EngineSpec:
    """`local`, `ray`, `ray:auto`, `ray:ray://host:10001` (or an EngineSpec) -> EngineSpec; else a one-line
    InputError."""
    if value is None:
        return LOCAL
    if isinstance(value, EngineSpec):
        return value
    text = str(value).strip()
    kind, sep, address = text.partition(":")
    if kind == "local" and not sep:
        return LOCAL
    if kind == "ray":
        if sep and not address:
            raise InputError(f"--engine {text}: give an address after 'ray:' (auto or ray://HOST:10001)")
        if address and address != "auto" and "://" not in address and ":" not in address:
            raise InputError(f"--engine {text}: the address is auto, HOST:PORT or ray://HOST:10001")
        return EngineSpec("ray", address or None)
    raise InputError(f"--engine {text}: expected local, ray, ray:auto or ray:ray://HOST:10001")


def make_engine(spec: "str | EngineSpec | None", *, quiet: bool = False):
    """The engine object for a spec: `.run(stage, table, ctx) -> StageResult`. For ray this connects to (or
    starts) the cluster now, so a missing install or a bad address fails before any input is read."""
    spec = parse_engine(spec)
    if spec.kind == "local":
        return LocalEngine()
    from .ray_engine import RayEngine

    return RayEngine(spec.address, quiet=quiet)


class LocalEngine:
    """The in-process default: `stage.run(table, ctx)`, as `prefcli.execute` always did."""

    name = "local"

    def read(self, stage, call):
        return stage.read(call)

    def run(self, stage, table, ctx):
        return stage.run(table, ctx)
