"""Pipeline files: `[pipeline]` and `[[stage]]` tables in TOML, checked into a Pipeline; every problem is a
one-line InputError naming the file and the stage."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import io
from ..errors import InputError

STAGE_KEYS = {"name", "command", "inputs", "input", "output"}  # every other key of a stage is a stage option
PIPELINE_KEYS = {"name", "description", "seed", "workdir", "cache_dir"}
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
    head = doc.get("pipeline", {})
    unknown = set(doc) - {"pipeline", "stage"}
    if unknown:
        raise InputError(f"{file}: unknown top-level key(s) {sorted(unknown)}; expected [pipeline] and [[stage]]")
    if not isinstance(head, dict) or set(head) - PIPELINE_KEYS:
        raise InputError(f"{file}: [pipeline] accepts only {sorted(PIPELINE_KEYS)}")
    raw_stages = doc.get("stage")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise InputError(f"{file}: no stages; add [[stage]] tables")
    seed = head.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise InputError(f"{file}: [pipeline] seed must be an integer")
    stages: list[StageSpec] = []
    for number, table in enumerate(raw_stages, start=1):
        stages.append(_stage_spec(file, number, table, {s.name for s in stages}))
    pipeline = Pipeline(path=file.resolve(), name=str(head.get("name", file.stem)), stages=stages, seed=seed,
                        workdir=head.get("workdir"), cache_dir=head.get("cache_dir"))
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
    inputs = table.get("inputs")
    if inputs is not None and (not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs)):
        raise InputError(f"{where} ({name}): `inputs` must be a list of strings")
    for key in ("input", "output"):
        if key in table and not isinstance(table[key], str):
            raise InputError(f"{where} ({name}): `{key}` must be a string")
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


