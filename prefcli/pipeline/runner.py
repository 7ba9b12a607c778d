"""The `prefcli run` engine: a Pipeline -> stages run (or skipped) with a manifest, calling `Stage.run` through
the same `execute` path as the CLI.

Layout of a workdir:

    <workdir>/run.lock          held for the whole run (exit 3 when busy)
    <workdir>/manifest.json     one record per completed stage (fingerprints, rows, time, memory)
    <workdir>/<stage>/...       everything a stage wrote; replaced as a whole, atomically
    <workdir>/cache/            embedding and score caches (unless configured elsewhere)

A stage runs in a temp dir beside its final dir that is swapped in only when the stage succeeds, and the
manifest is rewritten (atomically) after each stage: a kill at any moment leaves the previous outputs intact,
and the next run skips every stage whose record still matches.
"""

from __future__ import annotations

import contextlib
import functools
import glob as globlib
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .. import io
from ..errors import CannotCreate, InputError, PrefcliError, os_failure
from ..execute import Call, execute
from ..memory import helper_peaks_kb, in_child_process, release_memory
from ..outputs import DIR_MARKER
from ..stage import Context, Stage, option_info, stage_class
from .manifest import MANIFEST, MANIFEST_FORMAT, Fingerprints, load_manifest, package_versions, stage_key
from .spec import Pipeline, StageSpec, _option_name, inside_stage_dir

LOCK = "run.lock"
COMMON = {"seed", "device", "cache-dir", "no-cache", "max-reject-rate", "overwrite"}


class StageFailed(PrefcliError):
    """A stage command exited non-zero; the run exits with the stage's code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


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


@dataclass
class StageOptions:
    """How a pipeline stage's keys map onto its Stage: Params fields, side reads and writes, shared options."""

    cls: type[Stage]
    by_key: dict[str, tuple[str, str]]  # option name (flag without dashes) -> (kind, target)

    @classmethod
    def of(cls, stage_cls: type[Stage]) -> "StageOptions":
        keys: dict[str, tuple[str, str]] = {}
        for name in stage_cls.Params.model_fields:
            info = option_info(stage_cls.Params, name)
            keys[info["flag"][2:]] = ("param", name)
            keys.setdefault(name.replace("_", "-"), ("param", name))
            for alias in info.get("aliases") or []:
                keys[alias.lstrip("-")] = ("alias", name)
        for read in stage_cls.reads:
            keys[read.flag[2:]] = ("read", read.name)
        for write in stage_cls.writes:
            keys[write.flag[2:]] = ("write", write.name)
        shared = {"seed": stage_cls.uses_seed, "device": stage_cls.resources.uses_models,
                  "no-cache": stage_cls.resources.uses_models,
                  "cache-dir": stage_cls.resources.uses_models or stage_cls.uses_cache,
                  "max-reject-rate": stage_cls.sets_aside,
                  "overwrite": stage_cls.output == "dir" or any(w.kind == "dir" for w in stage_cls.writes)}
        keys.update({k: ("common", k) for k, used in shared.items() if used})
        return cls(stage_cls, keys)

    def has(self, key: str) -> bool:
        return _option_name(key) in self.by_key


class Runner:
    """Runs one pipeline in one workdir. Use `run()` (takes the lock)."""

    def __init__(self, pipeline: Pipeline, workdir: Path, *, quiet: bool = False,
                 on_stage: Callable[[str, str], None] | None = None, cache_dir: Path | None = None,
                 report=None, engine=None, isolate: bool = True):
        from ..engines import parse_engine

        self.engine_spec = parse_engine(engine)  # where every stage runs; not part of a stage's key
        self._engine = None
        self.pipeline = pipeline
        self.workdir = Path(workdir).resolve()
        self.cache_dir = cache_dir  # every stage's ctx.cache_dir, unless the stage sets cache-dir itself
        self.quiet = quiet
        self.report = report  # warnings sink for the stages (None: silent)
        self.on_stage = on_stage or (lambda name, what: None)
        self.isolate = isolate  # local stages each run in a child process of their own (their own heap and peak)
        self.base = pipeline.path.parent
        self.specs: dict[str, StageOptions] = {}

    # -- planning
    def check_commands(self, stages: list[StageSpec]) -> None:
        """Every stage names a command this install has, and only options that command takes."""
        for stage in stages:
            label = f"prefcli {' '.join(stage.command)}"
            try:
                spec = StageOptions.of(stage_class(" ".join(stage.command)))
            except InputError:
                raise InputError(f"{self.pipeline.path}: stage '{stage.name}': unknown command `{label}` "
                                 f"(not available in this install)") from None
            for key, value in stage.options.items():
                if not spec.has(key):
                    known = ", ".join(f"--{k}" for k in sorted(spec.by_key))
                    raise InputError(f"{self.pipeline.path}: stage '{stage.name}': `{label}` has no option "
                                     f"--{_option_name(key)} (options: {known})")
                kind, _ = spec.by_key[_option_name(key)]
                if kind == "write" and isinstance(value, str):  # checked before the workdir is touched
                    inside_stage_dir(value, f"{self.pipeline.path}: stage '{stage.name}': --{_option_name(key)}")
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
        if self.specs[stage.name].cls.output == "none":
            return None
        return stage.output or f"{stage.name}.parquet"

    def main_output(self, stage: StageSpec) -> Path | None:
        name = self.output_name(stage)
        return None if name is None else self.stage_dir(stage.name) / name

    # -- resolving values
    def resolve(self, value: str, fingerprint: Fingerprints, used: list, *, glob: bool = False) -> list[str]:
        """An option or input value -> path strings; files it names are fingerprinted into `used`."""
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

    def resolve_value(self, value: Any, fingerprint: Fingerprints, used: list) -> Any:
        """Strings naming files (or @stage outputs) become their paths; everything else passes as it is."""
        if isinstance(value, str):
            resolved = self.resolve(value, fingerprint, used)
            return resolved[0] if len(resolved) == 1 else resolved
        if isinstance(value, list):
            return [self.resolve_value(v, fingerprint, used) for v in value]
        return value

    def build_call(self, stage: StageSpec, default_input: Path | None, fingerprint: Fingerprints,
                   out_dir: Path) -> tuple[Call, list, list[Path], dict]:
        """The Call for one stage, the fingerprints of what it reads, its positional input paths, and the key
        material of its options (paths inside the stage dir written as <out>)."""
        spec = self.specs[stage.name]
        cls = spec.cls
        used: list = []
        positional: list[str] = []
        if stage.inputs is not None:
            for value in stage.inputs:
                positional += self.resolve(value, fingerprint, used, glob=True)
        elif cls.input != "none":
            if stage.input is not None:
                positional = self.resolve(stage.input, fingerprint, used)
            elif default_input is not None:
                used.append(["@previous", fingerprint(default_input)])
                positional = [str(default_input)]
            else:
                raise InputError(f"{self.pipeline.path}: stage '{stage.name}' has no input: give it `inputs`")
        if cls.input == "pairs" and len(positional) != 1:
            raise InputError(f"{self.pipeline.path}: stage '{stage.name}' takes one input, got {len(positional)}")
        values: dict[str, Any] = {}
        reads: dict[str, Any] = {}
        writes: dict[str, str] = {}
        common: dict[str, Any] = {}
        where = f"{self.pipeline.path}: stage '{stage.name}': "
        for key, value in stage.options.items():
            kind, target = spec.by_key[_option_name(key)]
            if kind in ("param", "alias"):
                values[target] = self.resolve_value(value, fingerprint, used)
            elif kind == "read":
                reads[target] = self.resolve_value(value, fingerprint, used)
            elif kind == "write":
                if not isinstance(value, str):
                    raise InputError(f"{where}--{_option_name(key)} takes a file name, got {value!r}")
                writes[target] = str(out_dir / inside_stage_dir(value, f"{where}--{_option_name(key)}"))
            else:
                common[target] = self.resolve_value(value, fingerprint, used) if target == "cache-dir" else value
        if self.pipeline.seed is not None and cls.uses_seed and "seed" not in common:
            common["seed"] = self.pipeline.seed
        from ..stage import build_params

        params = build_params(cls.Params, values, where)
        out_name = self.output_name(stage)
        cache = common.get("cache-dir")
        ctx = Context(seed=int(common.get("seed", 0)), device=str(common.get("device", "auto")),
                      cache_dir=Path(cache) if cache else self.cache_dir, use_cache=not common.get("no-cache", False),
                      report=self.report)
        call = Call(stage=cls(params), inputs=positional, output=str(out_dir / out_name) if out_name else None,
                    writes=writes, reads=reads, ctx=ctx, max_reject_rate=common.get("max-reject-rate"),
                    overwrite=bool(common.get("overwrite", False)))
        material = {"params": params.model_dump(mode="json"), "reads": reads, "writes": writes,
                    "output": out_name, "inputs": len(positional),
                    "common": {k: v for k, v in common.items() if k != "cache-dir"}}
        material = json.loads(json.dumps(material, default=str).replace(str(out_dir), "<out>")
                              .replace(str(self.workdir), "<workdir>"))
        return call, used, [Path(p) for p in positional if Path(p).is_file()], material

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
            _, used, _, material = self.build_call(stage, previous, fingerprint, temp_dir)
            key = stage_key({"command": stage.command, "inputs": used, "versions": versions, "call": material})
            forced = force or (force_from is not None and i >= force_from)
            if record and record.get("key") == key and not forced and self._intact(stage.name, record, fingerprint):
                self.on_stage(stage.name, "skipped")
                outcomes.append(self._outcome(stage, record, "skipped"))
            else:
                self.on_stage(stage.name, "running")
                try:
                    record = self._execute(stage, key, used, versions, fingerprint, previous, material)
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

    def _execute(self, stage: StageSpec, key: str, used: list, versions: dict, fingerprint: Fingerprints,
                 previous: Path | None, material: dict) -> dict:
        final_dir = self.stage_dir(stage.name)
        label = f"prefcli {' '.join(stage.command)}"
        try:
            with io.atomic_path(final_dir) as work:
                work.mkdir(parents=True)
                io.write_json({"written_by": "prefcli run", "stage": stage.name}, work / DIR_MARKER)
                call, _, inputs, _ = self.build_call(stage, previous, fingerprint, work)
                began = time.perf_counter()
                if self.engine_spec.kind == "local" and self.isolate:  # a fresh heap per stage: its own peak
                    stats, peak = in_child_process(functools.partial(_run_stage, call, None))
                else:
                    release_memory()  # a stage starts from the memory it needs, not the last stage's peak
                    stats, peak = _run_stage(call, self.engine())
                wall = time.perf_counter() - began
                outputs = {name: io.file_digest(work / name) for name in io.list_files(work)}
                out_name = self.output_name(stage)
                rows_out = io.parquet_rows(work / out_name) if out_name else None
                if rows_out is None and out_name:  # JSONL/JSON/dir outputs: the stage's own count
                    rows_out = _stats_int(stats, ("rows_out", "written", "rows_written", "tasks"))
                set_aside = [io.parquet_rows(work / name) or 0 for name in outputs if name != out_name
                             and "set_aside_reason" in io.parquet_columns(work / name)]
        except PrefcliError as exc:
            if isinstance(exc, StageFailed):
                raise
            raise StageFailed(f"stage '{stage.name}' ({label}): {exc}", exc.exit_code) from None
        except OSError as exc:
            error = os_failure(exc)
            raise StageFailed(f"stage '{stage.name}' ({label}): {error}", error.exit_code) from None
        parquet_in = [io.parquet_rows(p) for p in inputs]
        rows_in = (sum(parquet_in) if inputs and None not in parquet_in
                   else _stats_int(stats, ("rows_in", "read", "rows_read")))
        for name in outputs:  # memoise the fresh outputs, so the next run verifies them by stat
            fingerprint(final_dir / name)
        stats = json.loads(json.dumps(summary_payload(call.stage, stats), default=_jsonable)
                           .replace(json.dumps(str(work))[1:-1], json.dumps(str(final_dir))[1:-1]))
        return {
            "key": key, "command": stage.command,
            "call": json.loads(json.dumps(material).replace("<out>", str(final_dir))),
            "options": stage.options, "inputs": used, "versions": versions,
            "output": out_name, "outputs": outputs,
            "rows_in": rows_in, "rows_out": rows_out, "rows_set_aside": sum(set_aside) if set_aside else 0,
            "wall_s": round(wall, 3), "peak_rss_mb": peak,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "stats": stats,
        }

    def engine(self):
        """The engine object, made (for ray: connected) on the first stage that runs; None for local."""
        if self.engine_spec.kind == "local":
            return None
        if self._engine is None:
            from ..engines import make_engine

            self._engine = make_engine(self.engine_spec, quiet=self.quiet)
        return self._engine

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


def summary_payload(stage: Stage, stats: dict[str, Any]) -> dict[str, Any]:
    """The stage's --json summary: its stats, and its report tables as records."""
    payload = dict(stats)
    for table in type(stage).report_tables(stats):
        payload.setdefault("tables", {})[table.key] = table.as_records()
    return payload


def _jsonable(obj: Any):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _stats_int(stats: dict, keys: tuple[str, ...]) -> int | None:
    """A row count from the command's own --json summary, where Parquet footers cannot tell (raw in, JSONL out)."""
    for key in keys:
        if isinstance(stats.get(key), int):
            return stats[key]
    return None


def _run_stage(call: Call, engine) -> tuple[dict[str, Any], float]:
    """One stage's call: its stats and its peak RSS in MB."""
    _reset_peak_rss()
    outcome = execute(call, engine=engine)
    call.stage.after_report(outcome.stats)
    return outcome.stats, _peak_rss_mb()


def _reset_peak_rss() -> None:
    """Linux: reset the process's peak RSS (VmHWM) so the next reading is this stage's own peak."""
    helper_peaks_kb(reset=True)
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")


def _peak_rss_mb() -> float:
    """This process's peak RSS plus the peaks of the helper processes it ran (the ensemble's lex workers)."""
    helpers = helper_peaks_kb()
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round((int(line.split()[1]) + helpers) / 1024, 1)
    import resource

    return round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + helpers) / 1024, 1)
