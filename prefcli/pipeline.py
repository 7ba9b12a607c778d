"""The `prefcli run` engine: pipeline TOML -> plan -> stages run (or skipped) with a manifest.

Pure logic over a `StageCli` (how to look up and invoke a stage command), so the engine knows
nothing about click. Layout of a workdir:

    <workdir>/run.lock          flock held for the whole run (exit 3 when busy)
    <workdir>/manifest.json     one record per completed stage (fingerprints, rows, time, memory)
    <workdir>/<stage>/...       everything a stage wrote; replaced as a whole, atomically
    <workdir>/cache/            embedding and score caches (unless configured elsewhere)

A stage runs in a temp dir beside its final dir that is swapped in only when the command exits 0,
and the manifest is rewritten (atomically) after each stage: a kill at any moment leaves the
previous outputs intact, and the next run skips every stage whose record still matches.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import json
import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Protocol

from . import io
from .errors import CannotCreate, InputError, IOFailure, PrefcliError, os_failure
from .outputs import DIR_MARKER

MANIFEST = "manifest.json"
LOCK = "run.lock"
MANIFEST_FORMAT = "prefcli-run-manifest/1"
STAGE_KEYS = {"name", "command", "inputs", "input", "output"}  # every other key of a stage is a CLI option
PIPELINE_KEYS = {"name", "description", "seed", "workdir", "cache_dir"}
VERSIONED_PACKAGES = ("prefcli", "polars", "pyarrow", "numpy", "torch", "sentence-transformers", "transformers",
                      "faiss-cpu", "faiss-gpu", "scikit-learn", "datasets")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
RESERVED_NAMES = {"cache", "logs"}  # <workdir>/cache holds the caches, <workdir>/logs the cron wrapper's logs


class StageFailed(PrefcliError):
    """A stage command exited non-zero; the run exits with the stage's code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


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


# --------------------------------------------------------------------------- commands

@dataclass
class OptionSpec:
    flag: str  # e.g. --threshold
    is_flag: bool = False  # boolean switch: true -> bare flag
    negative: str | None = None  # e.g. --no-drop, used for false
    multiple: bool = False  # repeatable: lists become repeated flags
    writes: bool = False  # names a file the command writes: kept inside the stage directory


@dataclass
class CommandSpec:
    """What the runner needs to know about a stage command (filled in from the CLI by the caller)."""

    options: dict[str, OptionSpec]  # by long name without dashes, e.g. "max-reject-rate"
    positional: int  # how many positional arguments: 0, 1, or -1 for any number

    def has(self, name: str) -> bool:
        return name in self.options


@dataclass
class Invocation:
    code: int
    error: str = ""  # the command's one-line error, without the `prefcli: error:` prefix
    stats: dict[str, Any] = field(default_factory=dict)  # the command's --json summary, when it printed one


class StageCli(Protocol):
    def spec(self, command: list[str]) -> CommandSpec | None: ...

    def invoke(self, command: list[str], argv: list[str], *, quiet: bool) -> Invocation: ...


# --------------------------------------------------------------------------- fingerprints and manifest

class Fingerprints:
    """File digests memoised by (size, mtime_ns) in the manifest, so unchanged big inputs are not re-read."""

    def __init__(self, memo: dict[str, list]):
        self.memo = memo

    def __call__(self, path: str | Path) -> str:
        target = Path(path)
        if target.is_dir():
            return io.file_digest(target)
        try:
            stat = target.stat()
        except OSError:
            raise InputError(f"{path}: no such file") from None
        key = str(target.resolve())
        seen = self.memo.get(key)
        if seen and seen[0] == stat.st_size and seen[1] == stat.st_mtime_ns:
            return seen[2]
        value = io.file_digest(target)
        self.memo[key] = [stat.st_size, stat.st_mtime_ns, value]
        return value


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def load_manifest(workdir: Path) -> dict:
    path = workdir / MANIFEST
    if path.exists():
        try:
            manifest = io.read_json(path)
            if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT:
                return manifest
        except InputError:
            pass  # unreadable manifest: start over, outputs get rebuilt
    return {"format": MANIFEST_FORMAT, "stages": {}, "files": {}}


def stage_key(material: dict) -> str:
    from .text import digest

    return digest(json.dumps(material, sort_keys=True, ensure_ascii=False, default=str))


# --------------------------------------------------------------------------- running

@dataclass
class StageOutcome:
    name: str
    command: str
    status: str  # ran | skipped | failed | not run
    rows_in: int | None = None
    rows_out: int | None = None
    rows_set_aside: int | None = None
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    output: str | None = None
    highlights: str = ""

    def row(self) -> list[Any]:
        return [self.name, self.command, self.status, self.rows_in, self.rows_out, self.rows_set_aside,
                None if self.wall_s is None else round(self.wall_s, 2), self.peak_rss_mb, self.highlights]


OUTCOME_COLUMNS = ["stage", "command", "status", "rows_in", "rows_out", "set_aside", "wall_s", "peak_rss_mb",
                   "highlights"]

# What each stage found, picked from its --json summary for the run table (first matches win).
HIGHLIGHT_KEYS = ("exact_duplicates", "semantic_duplicates", "contaminated", "buckets", "flipped", "mined",
                  "replaced", "p_chosen_longer", "by_reason", "tasks", "filtered_out", "files_parsed", "files_cached")


def highlights(stats: dict[str, Any] | None, limit: int = 4) -> str:
    """A compact `key=value` digest of a stage's own summary, e.g. duplicates found or bucket counts."""
    parts = []
    for key in HIGHLIGHT_KEYS:
        value = (stats or {}).get(key)
        if value in (None, 0, {}, ""):
            continue
        if isinstance(value, dict):
            value = "/".join(f"{k}:{v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.2f}"
        parts.append(f"{key}={value}")
    return " ".join(parts[:limit])


@dataclass
class RunResult:
    pipeline: str
    workdir: str
    outcomes: list[StageOutcome]
    final_output: str | None
    wall_s: float


class Runner:
    """Runs one pipeline in one workdir. Use `run()` (takes the lock)."""

    def __init__(self, pipeline: Pipeline, workdir: Path, cli: StageCli, *, quiet: bool = False,
                 on_stage: Callable[[str, str], None] | None = None, cache_dir: Path | None = None):
        self.pipeline = pipeline
        self.workdir = workdir.resolve()
        self.cache_dir = cache_dir  # given as --cache-dir to every stage that takes one and sets none
        self.cli = cli
        self.quiet = quiet
        self.on_stage = on_stage or (lambda name, what: None)
        self.base = pipeline.path.parent
        self.specs: dict[str, CommandSpec] = {}

    # -- planning
    def check_commands(self, stages: list[StageSpec]) -> None:
        """Every stage names a command this install has, and only options that command takes."""
        for stage in stages:
            label = f"prefcli {' '.join(stage.command)}"
            spec = self.cli.spec(stage.command)
            if spec is None:
                raise InputError(f"{self.pipeline.path}: stage '{stage.name}': unknown command `{label}` "
                                 f"(not available in this install)")
            for key, value in stage.options.items():
                if not spec.has(_option_name(key)):
                    known = ", ".join(f"--{k}" for k in sorted(spec.options))
                    raise InputError(f"{self.pipeline.path}: stage '{stage.name}': `{label}` has no option "
                                     f"--{_option_name(key)} (options: {known})")
                option = spec.options[_option_name(key)]
                if option.writes and isinstance(value, str):  # checked before the workdir is touched
                    inside_stage_dir(value, f"{self.pipeline.path}: stage '{stage.name}': {option.flag}")
            self.specs[stage.name] = spec

    def check_workdir(self) -> None:
        """A workdir may hold anything else, but prefcli replaces only what it wrote there: a manifest.json
        that is not a run manifest, or a stage-named folder the manifest does not record, is refused."""
        manifest_path = self.workdir / MANIFEST
        recorded: dict = {}
        if manifest_path.exists():
            try:
                found = io.read_json(manifest_path)
            except InputError:
                found = None
            if not isinstance(found, dict) or found.get("format") != MANIFEST_FORMAT:
                raise CannotCreate(f"{manifest_path}: exists and is not a prefcli run manifest; choose another "
                                   f"--workdir (prefcli never replaces files it did not write)")
            recorded = found.get("stages", {})
        for stage in self.pipeline.stages:
            folder = self.stage_dir(stage.name)
            ours = stage.name in recorded or (folder / DIR_MARKER).is_file()
            if folder.exists() and not ours and (not folder.is_dir() or any(folder.iterdir())):
                raise CannotCreate(f"{folder}: exists and was not written by this pipeline; choose another "
                                   f"--workdir or move it (prefcli never replaces files it did not write)")

    def stage_dir(self, name: str) -> Path:
        return self.workdir / name

    def output_name(self, stage: StageSpec) -> str | None:
        if not self.specs[stage.name].has("output"):
            return None
        return stage.output or f"{stage.name}.parquet"

    def main_output(self, stage: StageSpec) -> Path | None:
        name = self.output_name(stage)
        return None if name is None else self.stage_dir(stage.name) / name

    # -- argument resolution
    def resolve(self, value: str, fingerprint: Fingerprints, used: list, *, glob: bool = False) -> list[str]:
        """An option or input value -> argv strings; files it names are fingerprinted into `used`."""
        if value.startswith("@"):
            target, _, rest = value[1:].partition("/")
            stage = self.pipeline.stages[self.pipeline.index(target)]
            path = self.stage_dir(target) / rest if rest else self.main_output(stage)
            if path is None or not path.exists():
                raise InputError(f"{self.pipeline.path}: {value}: stage '{target}' has no such output")
            used.append([value, fingerprint(path)])
            return [str(path)]
        if value.startswith("hf:") or value == io.STDIO:
            used.append([value, value])  # remote/stdin content cannot be fingerprinted; use --force to refresh
            return [value]
        candidate = Path(value).expanduser()
        candidate = candidate if candidate.is_absolute() else self.base / candidate
        if glob and any(ch in value for ch in "*?["):
            matches = sorted(p for p in globlib.glob(str(candidate), recursive=True) if Path(p).is_file())
            if not matches:
                raise InputError(f"{self.pipeline.path}: {value}: glob matched no files")
            used.extend([value, os.path.relpath(m, self.base), fingerprint(m)] for m in matches)
            return matches
        if candidate.exists():
            if candidate.is_dir():  # name every file, so a new raw file changes the key
                used.extend([value, name, fingerprint(candidate / name)] for name in io.list_files(candidate))
            else:
                used.append([value, fingerprint(candidate)])
            return [str(candidate)]
        return [value]

    def build_argv(self, stage: StageSpec, default_input: Path | None, fingerprint: Fingerprints,
                   out_dir: Path) -> tuple[list[str], list, list[Path]]:
        """argv for one stage, the fingerprints of what it reads, and its positional input paths."""
        spec = self.specs[stage.name]
        used: list = []
        positional: list[str] = []
        if stage.inputs is not None:
            for value in stage.inputs:
                positional += self.resolve(value, fingerprint, used, glob=True)
        elif spec.positional:
            if stage.input is not None:
                positional = self.resolve(stage.input, fingerprint, used)
            elif default_input is not None:
                used.append(["@previous", fingerprint(default_input)])
                positional = [str(default_input)]
            else:
                raise InputError(f"{self.pipeline.path}: stage '{stage.name}' has no input: give it `inputs`")
        if spec.positional == 1 and len(positional) != 1:
            raise InputError(f"{self.pipeline.path}: stage '{stage.name}' takes one input, got {len(positional)}")
        argv = list(positional)
        for key, value in stage.options.items():
            argv += self.option_argv(spec.options[_option_name(key)], value, fingerprint, used, out_dir)
        out_name = self.output_name(stage)
        if out_name is not None:
            argv += ["--output", str(out_dir / out_name)]
        if self.pipeline.seed is not None and spec.has("seed") and not any(_option_name(k) == "seed"
                                                                           for k in stage.options):
            argv += ["--seed", str(self.pipeline.seed)]
        return argv, used, [Path(p) for p in positional if Path(p).is_file()]

    def option_argv(self, option: OptionSpec, value: Any, fingerprint: Fingerprints, used: list,
                    out_dir: Path) -> list[str]:
        if option.writes and value is not None and not isinstance(value, bool):
            if not isinstance(value, str):
                raise InputError(f"{self.pipeline.path}: {option.flag} takes a file name, got {value!r}")
            name = inside_stage_dir(value, f"{self.pipeline.path}: {option.flag}")
            return [option.flag, str(out_dir / name)]
        if isinstance(value, bool):
            if value:
                return [option.flag] if option.is_flag else [option.flag, "true"]
            if option.is_flag:
                return [option.negative] if option.negative else []
            return [option.flag, "false"]
        if isinstance(value, list):
            if not option.multiple:
                raise InputError(f"{self.pipeline.path}: {option.flag} takes one value, got a list")
            return [a for item in value for a in self.option_argv(option, item, fingerprint, used, out_dir)]
        if isinstance(value, dict):  # key=value,key=value options such as --map
            return [option.flag, ",".join(f"{k}={v}" for k, v in value.items())]
        if isinstance(value, str):
            resolved = self.resolve(value, fingerprint, used)
            return [a for r in resolved for a in (option.flag, r)]
        return [option.flag, str(value)]

    # -- the run
    def run(self, *, start: str | None = None, until: str | None = None, force: bool = False,
            wait: bool = False, wait_timeout: float | None = None) -> RunResult:
        began = time.perf_counter()
        first = self.pipeline.index(start) if start else 0
        last = self.pipeline.index(until) if until else len(self.pipeline.stages) - 1
        if first > last:
            raise InputError(f"--from {start} comes after --until {until}")
        self.check_commands(self.pipeline.stages[: last + 1])
        self.check_workdir()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with io.exclusive_lock(self.workdir / LOCK, wait=wait, timeout=wait_timeout):
            io.recover_interrupted(self.workdir, [MANIFEST, *(s.name for s in self.pipeline.stages)])
            self.check_workdir()  # again under the lock: another run may have changed it
            outcomes = self._run_locked(first, last, force, first if start else None)
        final = next((o.output for o in reversed(outcomes) if o.output and o.status in ("ran", "skipped")), None)
        return RunResult(str(self.pipeline.path), str(self.workdir), outcomes, final, time.perf_counter() - began)

    def _run_locked(self, first: int, last: int, force: bool, force_from: int | None) -> list[StageOutcome]:
        manifest = load_manifest(self.workdir)
        manifest["pipeline"] = str(self.pipeline.path)
        fingerprint = Fingerprints(manifest.setdefault("files", {}))
        versions = package_versions()
        outcomes: list[StageOutcome] = []
        previous: Path | None = None
        for i, stage in enumerate(self.pipeline.stages):
            label = " ".join(stage.command)
            if i > last:
                outcomes.append(StageOutcome(stage.name, label, "not run"))
                continue
            record = manifest["stages"].get(stage.name)
            if i < first:  # before --from: use what the workdir has
                if not record or not self._intact(stage.name, record, fingerprint):
                    raise InputError(f"stage '{stage.name}' (before --from) has no completed output in "
                                     f"{self.workdir}; run without --from first")
                outcomes.append(self._outcome(stage, record, "skipped"))
                previous = self.main_output(stage) or previous
                continue
            temp_dir = self.workdir / f".{stage.name}.pending"  # placeholder path: only for the key material
            argv, used, inputs = self.build_argv(stage, previous, fingerprint, temp_dir)
            key = stage_key({"command": stage.command, "inputs": used, "versions": versions,
                             "argv": [a.replace(str(temp_dir), "<out>").replace(str(self.workdir), "<workdir>")
                                      for a in argv]})
            forced = force or (force_from is not None and i >= force_from)
            if record and record.get("key") == key and not forced and self._intact(stage.name, record, fingerprint):
                self.on_stage(stage.name, "skipped")
                outcomes.append(self._outcome(stage, record, "skipped"))
            else:
                self.on_stage(stage.name, "running")
                try:
                    try:
                        record = self._execute(stage, key, used, inputs, versions, fingerprint, previous)
                    except (OSError, CannotCreate, IOFailure) as exc:  # the runner's own writes: say which stage
                        error = os_failure(exc) if isinstance(exc, OSError) else exc
                        raise StageFailed(f"stage '{stage.name}' (prefcli {label}): {error}", error.exit_code) from None
                except StageFailed:
                    outcomes.append(StageOutcome(stage.name, label, "failed"))
                    self._save(manifest)
                    raise
                manifest["stages"][stage.name] = record
                self._save(manifest)
                outcomes.append(self._outcome(stage, record, "ran"))
            previous = self.main_output(stage) or previous
        self._save(manifest)
        return outcomes

    def _execute(self, stage: StageSpec, key: str, used: list, inputs: list[Path], versions: dict,
                 fingerprint: Fingerprints, previous: Path | None) -> dict:
        final_dir = self.stage_dir(stage.name)
        label = f"prefcli {' '.join(stage.command)}"
        with io.atomic_path(final_dir) as work:
            work.mkdir(parents=True)
            io.write_json({"written_by": "prefcli run", "stage": stage.name}, work / DIR_MARKER)
            argv, _, _ = self.build_argv(stage, previous, fingerprint, work)
            spec = self.specs[stage.name]  # reporting flags and the cache dir stay out of the key
            argv += [f"--{flag}" for flag in ("json", "quiet") if spec.has(flag) and (flag == "json" or self.quiet)]
            if self.cache_dir is not None and spec.has("cache-dir") and not any(
                    _option_name(k) == "cache-dir" for k in stage.options):  # where caches live changes no output
                argv += ["--cache-dir", str(self.cache_dir)]
            _reset_peak_rss()
            began = time.perf_counter()
            with _chdir(work):  # relative output names in options (e.g. removed = "x.parquet") land here
                result = self.cli.invoke(stage.command, argv, quiet=self.quiet)
            wall = time.perf_counter() - began
            peak = _peak_rss_mb()
            if result.code != 0:
                message = result.error or f"exited with code {result.code}"
                raise StageFailed(f"stage '{stage.name}' ({label}): {message}", result.code)
            outputs = {name: io.file_digest(work / name) for name in io.list_files(work)}
            out_name = self.output_name(stage)
            if out_name is not None and not (work / out_name).exists():
                raise StageFailed(f"stage '{stage.name}' ({label}) wrote no output {out_name}", 70)
            rows_out = io.parquet_rows(work / out_name) if out_name else None
            if rows_out is None and out_name:  # JSONL/JSON/dir outputs: the command's own count
                rows_out = _stats_int(result.stats, ("rows_out", "written", "rows_written", "tasks"))
            set_aside = [io.parquet_rows(work / name) or 0 for name in outputs if name != out_name
                         and "set_aside_reason" in io.parquet_columns(work / name)]
        parquet_in = [io.parquet_rows(p) for p in inputs]
        rows_in = (sum(parquet_in) if inputs and None not in parquet_in
                   else _stats_int(result.stats, ("rows_in", "read", "rows_read")))
        for name in outputs:  # memoise the fresh outputs, so the next run verifies them by stat
            fingerprint(final_dir / name)
        return {
            "key": key, "command": stage.command,
            "argv": [a.replace(str(work), str(final_dir)) for a in argv],
            "options": stage.options, "inputs": used, "versions": versions,
            "output": out_name, "outputs": outputs,
            "rows_in": rows_in, "rows_out": rows_out, "rows_set_aside": sum(set_aside) if set_aside else 0,
            "wall_s": round(wall, 3), "peak_rss_mb": peak,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "stats": json.loads(json.dumps(result.stats).replace(json.dumps(str(work))[1:-1],
                                                                 json.dumps(str(final_dir))[1:-1])),
        }

    def _intact(self, name: str, record: dict, fingerprint: Fingerprints) -> bool:
        """The outputs recorded for a stage are all still there with the recorded content."""
        directory = self.stage_dir(name)
        for name, digest in record.get("outputs", {}).items():
            path = directory / name
            if not path.is_file() or fingerprint(path) != digest:
                return False
        return True

    def _outcome(self, stage: StageSpec, record: dict, status: str) -> StageOutcome:
        out = self.main_output(stage)
        ran = status == "ran"  # a skipped stage cost nothing now: no time or memory shown
        return StageOutcome(stage.name, " ".join(stage.command), status, record.get("rows_in"),
                            record.get("rows_out"), record.get("rows_set_aside"),
                            record.get("wall_s") if ran else None, record.get("peak_rss_mb") if ran else None,
                            str(out) if out else None, highlights(record.get("stats")))

    def _save(self, manifest: dict) -> None:
        io.write_json(manifest, self.workdir / MANIFEST)


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


def _stats_int(stats: dict, keys: tuple[str, ...]) -> int | None:
    """A row count from the command's own --json summary, where Parquet footers cannot tell (raw in, JSONL out)."""
    for key in keys:
        if isinstance(stats.get(key), int):
            return stats[key]
    return None


@contextlib.contextmanager
def _chdir(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _reset_peak_rss() -> None:
    """Linux: reset the process's peak RSS (VmHWM) so the next reading is this stage's own peak."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")


def _peak_rss_mb() -> float:
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
