"""Pipeline files: `[pipeline]` and `[[stage]]` tables in TOML, checked into a Pipeline; every problem is a
one-line InputError naming the file and the stage."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from .. import io
from ..errors import InputError

STAGE_KEYS = {"name", "command", "inputs", "input", "output"}  # every other key of a stage is a stage option
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
RESERVED_NAMES = {"cache", "logs"}  # <workdir>/cache holds the caches, <workdir>/logs the cron wrapper's logs


# --------------------------------------------------------------------------- pipeline file

@dataclass
class StageSpec:
    name: str
    command: list[str]
    options: dict[str, Any]
    inputs: list[str] | None = None  # explicit positional arguments (raw sources, @refs)
    input: str | None = None  # explicit input ref; default: the previous stage's output
    output: str | None = None  # file (or dir) name of the -o output inside the stage dir


@dataclass
class Pipeline:
    path: Path
    name: str
    stages: list[StageSpec]
    seed: int | None = None
    workdir: str | None = None
    cache_dir: str | None = None

    def index(self, name: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.name == name:
                return i
        raise InputError(f"{self.path}: no stage named '{name}' (stages: {', '.join(s.name for s in self.stages)})")


class _Head(BaseModel):
    """The [pipeline] table."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Optional[str] = None
    description: Optional[str] = None
    seed: Optional[int] = None
    workdir: Optional[str] = None
    cache_dir: Optional[str] = None


class _Stage(BaseModel):
    """One [[stage]] table: these keys, plus the stage's own options (checked against its Params later)."""

    model_config = ConfigDict(extra="allow", strict=True)
    command: Optional[str] = None
    name: Optional[str] = None
    inputs: Optional[list[str]] = None
    input: Optional[str] = None
    output: Optional[str] = None


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    pipeline: _Head = _Head()
    stage: list[dict[str, Any]] = []


def _first_error(exc: ValidationError) -> tuple[list, str]:
    error = exc.errors()[0]
    return list(error["loc"]), error["type"]


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    """Parse and check a pipeline TOML; every problem is a one-line InputError naming the file."""
    file = Path(path)
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{file}: unreadable ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{file}: invalid TOML ({exc})") from None
    try:
        parsed = _File.model_validate(doc)
    except ValidationError as exc:
        loc, kind = _first_error(exc)
        if loc[0] != "pipeline" and kind == "extra_forbidden":
            raise InputError(f"{file}: unknown top-level key(s) {sorted(set(doc) - {'pipeline', 'stage'})}; "
                             f"expected [pipeline] and [[stage]]") from None
        if loc[0] == "pipeline" and loc[1:] == ["seed"]:
            raise InputError(f"{file}: [pipeline] seed must be an integer") from None
        if loc[0] == "pipeline" and (kind == "extra_forbidden" or len(loc) == 1):
            raise InputError(f"{file}: [pipeline] accepts only {sorted(_Head.model_fields)}") from None
        if loc[0] == "pipeline":
            raise InputError(f"{file}: [pipeline] {loc[1]} must be a string") from None
        raise InputError(f"{file}: `stage` must be [[stage]] tables") from None
    if not parsed.stage:
        raise InputError(f"{file}: no stages; add [[stage]] tables")
    stages: list[StageSpec] = []
    for number, table in enumerate(parsed.stage, start=1):
        stages.append(_stage_spec(file, number, table, {s.name for s in stages}))
    head = parsed.pipeline
    pipeline = Pipeline(path=file.resolve(), name=head.name or file.stem, stages=stages, seed=head.seed,
                        workdir=head.workdir, cache_dir=head.cache_dir)
    _check_refs(pipeline)
    return pipeline


def _stage_spec(file: Path, number: int, table: dict, seen: set[str]) -> StageSpec:
    where = f"{file}: stage {number}"
    command = table.get("command", table.get("name"))
    if not isinstance(command, str) or not command.split():
        raise InputError(f"{where}: needs a `command` (e.g. command = \"dedup\")")
    name = table.get("name", command.split()[-1])
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(f"{where}: name {name!r} must be letters, digits, '-' or '_'")
    if name in RESERVED_NAMES:
        raise InputError(f"{where}: stage name '{name}' is reserved for a workdir folder; choose another `name`")
    if name in seen:
        raise InputError(f"{where}: stage name '{name}' used twice; give each stage a unique `name`")
    try:
        entry = _Stage.model_validate(table)
    except ValidationError as exc:
        key = _first_error(exc)[0][0]
        kind = "a list of strings" if key == "inputs" else "a string"
        raise InputError(f"{where} ({name}): `{key}` must be {kind}") from None
    inputs = entry.inputs
    if "output" in table:
        inside_stage_dir(table["output"], f"{where} ({name}): output")
    options = {k: v for k, v in table.items() if k not in STAGE_KEYS}
    return StageSpec(name=name, command=command.split(), options=options, inputs=inputs,
                     input=table.get("input"), output=table.get("output"))


def _check_refs(pipeline: Pipeline) -> None:
    """Every `@stage` reference names an earlier stage."""
    for i, stage in enumerate(pipeline.stages):
        earlier = {s.name for s in pipeline.stages[:i]}
        for value in _strings(stage.inputs or []) + _strings(stage.input or "") + _strings(stage.options):
            if value.startswith("@"):
                target = value[1:].split("/", 1)[0]
                if target not in earlier:
                    raise InputError(f"{pipeline.path}: stage '{stage.name}': {value} does not name an earlier stage")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def inside_stage_dir(name: str, where: str) -> str:
    """A stage's output names a file inside its own directory: relative, no '..', not stdout."""
    path = Path(name)
    if not name.strip() or name == io.STDIO or path.is_absolute() or ".." in path.parts:
        raise InputError(f"{where} = {name!r}: must be a file name inside the stage directory "
                         f"(relative, without '..'); a run never writes outside its workdir")
    return os.path.normpath(name)


def _option_name(key: str) -> str:
    """TOML keys may use '_' or '-': max_reject_rate and max-reject-rate both mean --max-reject-rate."""
    return key.replace("_", "-").lstrip("-")


