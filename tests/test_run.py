"""`prefcli run`: skip-if-unchanged, incremental append, lock, resume after kill -9, pipes, determinism.

Real data: HH-RLHF harmless transcripts from ../shared/data, split into raw JSONL files.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from prefcli import io
from prefcli.errors import InputError
from prefcli.pipeline import load_pipeline
from conftest import assert_one_line_error, run_cli, run_inproc

HH = "hh-rlhf-harmless/test.jsonl.gz"
A, B = 150, 15  # raw lines in the first file and in the later "nightly" file
STAGES = ["ingest", "dedup", "rebalance", "export"]
PIPELINE = """
[pipeline]
name = "hh-test"
seed = 5

[[stage]]
command = "ingest"
inputs = ["raw"]
format = "hh-rlhf"

[[stage]]
command = "dedup"
threshold = 0.9

[[stage]]
name = "rebalance"
command = "length-bias rebalance"
length = "words"

[[stage]]
command = "export"
to = "trl"
output = "train.jsonl"
keep = "pair_id,source"
"""
FINAL = Path("export") / "train.jsonl"
NO_SHARED_CACHE = {"PREFCLI_CACHE_DIR": ""}  # each workdir gets its own cache: <workdir>/cache


@pytest.fixture(scope="module")
def hh_lines(shared_data) -> list[str]:
    with gzip.open(shared_data / HH, "rt", encoding="utf-8") as fh:
        return [next(fh) for _ in range(A + B)]


def make_project(root: Path, lines: list[str], parts: dict[str, slice]) -> Path:
    """A pipeline file beside raw/<name>.jsonl files holding the given slices of real lines."""
    (root / "raw").mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        (root / "raw" / f"{name}.jsonl").write_text("".join(lines[part]))
    (root / "pipeline.toml").write_text(PIPELINE)
    return root / "pipeline.toml"


def run(toml: Path, workdir: Path, *args: str, env=None, runner=run_inproc):
    return runner("run", str(toml), "--workdir", str(workdir), *args, env={**NO_SHARED_CACHE, **(env or {})})


def run_json(toml: Path, workdir: Path, *args: str) -> dict:
    proc = run(toml, workdir, "--json", *args)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def statuses(summary: dict) -> dict[str, str]:
    return {row["stage"]: row["status"] for row in summary["tables"]["stages"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, hh_lines):
    """An uninterrupted run on files a + b, the output every other path must reproduce byte for byte."""
    root = tmp_path_factory.mktemp("reference")
    toml = make_project(root, hh_lines, {"a": slice(0, A), "b": slice(A, A + B)})
    summary = run_json(toml, root / "work")
    return root, summary, (root / "work" / FINAL).read_bytes()


def test_full_run_records_manifest_and_skips_when_unchanged(reference):
    root, summary, final = reference
    work = root / "work"
    assert statuses(summary) == {s: "ran" for s in STAGES}
    manifest = json.loads((work / "manifest.json").read_text())
    ingest, dedup = manifest["stages"]["ingest"], manifest["stages"]["dedup"]
    assert ingest["rows_out"] + ingest["rows_set_aside"] == A + B  # raw lines in = pairs out + set aside
    assert dedup["rows_in"] == ingest["rows_out"]
    assert {"prefcli", "polars", "pyarrow"} <= set(dedup["versions"])
    assert dedup["inputs"][0][1] == io.file_digest(work / "ingest" / "ingest.parquet")
    assert dedup["outputs"]["dedup.parquet"] == io.file_digest(work / "dedup" / "dedup.parquet")
    assert all(manifest["stages"][s]["wall_s"] > 0 and manifest["stages"][s]["peak_rss_mb"] > 0 for s in STAGES)
    assert final.count(b"\n") == manifest["stages"]["rebalance"]["rows_out"]

    quiet = run(root / "pipeline.toml", work, "--quiet")  # nothing changed: every stage is skipped
    assert quiet.returncode == 0 and quiet.stdout == b"" and quiet.stderr == b""
    assert json.loads((work / "manifest.json").read_text())["stages"] == manifest["stages"]
    assert (work / FINAL).read_bytes() == final

    # A changed option re-runs that stage only.
    toml = root / "pipeline.toml"
    toml.write_text(PIPELINE.replace('keep = "pair_id,source"', 'keep = "pair_id"'))
    try:
        changed = run_json(toml, work)
    finally:
        toml.write_text(PIPELINE)
    assert statuses(changed) == {"ingest": "skipped", "dedup": "skipped", "rebalance": "skipped", "export": "ran"}
    assert (work / FINAL).read_bytes() != final
    # --from re-runs from a stage on; back to the original options, the original output comes back.
    again = run_json(toml, work, "--from", "rebalance")
    assert statuses(again) == {"ingest": "skipped", "dedup": "skipped", "rebalance": "ran", "export": "ran"}
    assert (work / FINAL).read_bytes() == final


@pytest.mark.slow
def test_incremental_append_equals_fresh_run(tmp_path, hh_lines, reference):
    _, _, final = reference
    toml = make_project(tmp_path, hh_lines, {"a": slice(0, A)})
    work = tmp_path / "work"
    assert statuses(run_json(toml, work)) == {s: "ran" for s in STAGES}
    embedded_first = embedded_count(work, "dedup")
    (tmp_path / "raw" / "b.jsonl").write_text("".join(hh_lines[A:A + B]))  # the nightly drop of new data
    second = run_json(toml, work)
    assert statuses(second)["ingest"] == "ran"
    assert (work / FINAL).read_bytes() == final  # byte-identical to the from-scratch run on a + b
    # The cache under the workdir made the refresh parse only the new raw file and embed only new texts.
    ingest_stats = json.loads((work / "manifest.json").read_text())["stages"]["ingest"]["stats"]
    assert (ingest_stats["files_parsed"], ingest_stats["files_cached"]) == (1, 1)
    assert [s["source"] for s in ingest_stats["per_source"]] == ["raw/a.jsonl", "raw/b.jsonl"]
    assert 0 < embedded_count(work, "dedup") < embedded_first


def embedded_count(work: Path, stage: str) -> int:
    """How many texts a stage embedded this time, from its --json summary kept in the manifest."""
    return json.loads((work / "manifest.json").read_text())["stages"][stage]["stats"]["embedded"]


def test_pipes_equal_the_pipeline_outputs(reference):
    root, _, final = reference
    work = root / "work"
    shell = (f"{sys.executable} -m prefcli.cli.main ingest raw -f hh-rlhf -q -o - "
             f"| {sys.executable} -m prefcli.cli.main dedup - --threshold 0.9 --seed 5 -q -o - "
             f"| {sys.executable} -m prefcli.cli.main length-bias rebalance - --length words --seed 5 -q -o - "
             f"| tee rebalanced.parquet "
             f"| {sys.executable} -m prefcli.cli.main export - --to trl --keep pair_id,source --seed 5 -q -o -")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=root, capture_output=True,
                          env={**os.environ, "PREFCLI_CACHE_DIR": str(work / "cache")}, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (root / "rebalanced.parquet").read_bytes() == (work / "rebalance" / "rebalance.parquet").read_bytes()
    assert proc.stdout == final


def test_lock_exits_3_or_waits(tmp_path, hh_lines, reference):
    root, _, final = reference
    warm = {"PREFCLI_CACHE_DIR": str(root / "work" / "cache")}  # the reference's embeddings: no model load
    toml = make_project(tmp_path, hh_lines, {"a": slice(0, A), "b": slice(A, A + B)})
    work = tmp_path / "work"
    with io.exclusive_lock(work / "run.lock"):
        busy = run(toml, work, env=warm, runner=run_cli)  # another process meets the lock
        assert_one_line_error(busy, "locked by another prefcli run", "--wait", code=3)

        waiter_err = tmp_path / "waiter.stderr"
        with open(waiter_err, "wb") as err_file:
            waiter = subprocess.Popen([sys.executable, "-m", "prefcli.cli.main", "run", str(toml), "--workdir",
                                       str(work), "--wait", "--json"], stdout=subprocess.PIPE, stderr=err_file,
                                      env={**os.environ, **warm})
        deadline = time.monotonic() + 300
        while b"waiting for it" not in waiter_err.read_bytes():  # it reached the lock and is waiting
            assert waiter.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        assert waiter.poll() is None and not (work / "ingest").exists()
    out, _ = waiter.communicate(timeout=600)
    assert waiter.returncode == 0, waiter_err.read_text()
    assert statuses(json.loads(out)) == {s: "ran" for s in STAGES}
    assert (work / FINAL).read_bytes() == final  # a second run in a new workdir gives the same bytes


def test_resume_after_kill_9(tmp_path, hh_lines, reference):
    root, _, final = reference
    warm = {"PREFCLI_CACHE_DIR": str(root / "work" / "cache")}
    toml = make_project(tmp_path, hh_lines, {"a": slice(0, A), "b": slice(A, A + B)})
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "prefcli.cli.main", "run", str(toml), "--workdir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **warm})
    deadline = time.monotonic() + 300
    while not (work.exists() and any(p.name.startswith(".dedup.") for p in work.iterdir())):  # dedup started
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert io.parquet_rows(work / "ingest" / "ingest.parquet")  # the completed stage's output is intact
    assert not (work / "dedup").exists()

    resumed = json.loads(run(toml, work, "--json", env=warm).stdout)
    assert statuses(resumed) == {"ingest": "skipped", "dedup": "ran", "rebalance": "ran", "export": "ran"}
    assert (work / FINAL).read_bytes() == final
    assert not [p for p in work.iterdir() if p.name.endswith((".tmp", ".old"))]


def test_bad_pipelines_fail_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[stage]]\ncommand = "ingest"\ninputs = ["x.jsonl"]\n\n[[stage]]\ncommand = "no-such-stage"\n')
    proc = run_inproc("run", str(bad), "--workdir", str(tmp_path / "w"))
    assert_one_line_error(proc, "stage 'no-such-stage'", "unknown command `prefcli no-such-stage`", code=2)
    assert not (tmp_path / "w" / "ingest").exists()  # checked before anything ran

    cases = {
        '[[stage]]\ncommand = "ingest"\ninputs = ["x.jsonl"]\nfromat = "trl"\n': "has no option --fromat",
        '[[stage]]\ncommand = "ingest"\n[[stage]]\ncommand = "ingest"\n': "used twice",
        '[[stage]]\ncommand = "export"\ninput = "@later"\n': "@later does not name an earlier stage",
        '[stage\n': "invalid TOML",
        '[pipeline]\nseed = "x"\n[[stage]]\ncommand = "ingest"\n': "seed must be an integer",
        '[pipeline]\nname = "x"\n': "no stages",
    }
    for text, fragment in cases.items():
        bad.write_text(text)
        with pytest.raises(InputError, match=fragment.replace("(", r"\(")):
            pipeline = load_pipeline(bad)
            from prefcli.pipeline import Runner

            Runner(pipeline, tmp_path / "w").check_commands(pipeline.stages)


def test_lock_wait_in_process(tmp_path):
    """--wait polls until the holder releases; without it a busy lock is LockHeld at once."""
    from prefcli.errors import LockHeld

    lock = tmp_path / "run.lock"
    with io.exclusive_lock(lock):
        with pytest.raises(LockHeld, match="use --wait"):
            with io.exclusive_lock(lock):
                pass
        with pytest.raises(LockHeld, match="still locked after 0.3s"):
            with io.exclusive_lock(lock, wait=True, timeout=0.3):
                pass
    got = []

    def waiter():
        with io.exclusive_lock(lock, wait=True, timeout=30):
            got.append(time.monotonic())

    with io.exclusive_lock(lock):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.5)
        assert not got
        released = time.monotonic()
    thread.join(30)
    assert got and got[0] >= released


def test_each_local_stage_runs_in_its_own_process_with_the_same_outputs(tmp_path, hh_lines, reference, monkeypatch):
    """Every stage of a local run executes in a child process (its own heap, so its own peak RSS), and the
    outputs are byte-identical to running every stage in this process; the manifest's figures come back."""
    import prefcli.pipeline.runner as runner_module
    from prefcli.pipeline import Runner

    _, _, final = reference
    real = runner_module.in_child_process
    calls = []
    monkeypatch.setattr(runner_module, "in_child_process", lambda work: calls.append(1) or real(work))
    toml = make_project(tmp_path / "p", hh_lines, {"a": slice(0, A), "b": slice(A, A + B)})
    outputs = {}
    for isolate in (True, False):
        work = tmp_path / f"work-{isolate}"
        Runner(load_pipeline(toml), work, quiet=True, cache_dir=work / "cache", isolate=isolate).run()
        outputs[isolate] = (work / FINAL).read_bytes()
        manifest = json.loads((work / "manifest.json").read_text())
        assert all(manifest["stages"][s]["peak_rss_mb"] > 0 and manifest["stages"][s]["rows_out"] for s in STAGES)
        assert len(calls) == len(STAGES)  # the isolated run only
    assert outputs[True] == outputs[False] == final


def child_pid_and_rows(rows: int) -> dict:
    return {"rows": rows, "pid": os.getpid()}


def fail_cannot_create(path: str):
    from prefcli.errors import CannotCreate

    raise CannotCreate(f"{path}: cannot create output")


def env_value(name: str) -> str | None:
    return os.environ.get(name)


def die_by_signal() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


CHILD_WORK = """import os, time
def work(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)
"""


def test_child_process_returns_results_raises_errors_and_dies_with_its_parent(tmp_path):
    """in_child_process gives back the child's result or error (exit code kept), sees this process's environment
    as it is now, reports a child killed by a signal, and the child does not outlive a parent killed with -9."""
    import functools

    from prefcli.errors import CannotCreate
    from prefcli.memory import ChildDied, in_child_process

    result = in_child_process(functools.partial(child_pid_and_rows, 3))
    assert result["rows"] == 3 and result["pid"] != os.getpid()
    with pytest.raises(CannotCreate, match="out.parquet: cannot create") as caught:
        in_child_process(functools.partial(fail_cannot_create, "out.parquet"))
    assert caught.value.exit_code == 73
    os.environ["PREFCLI_TEST_CHILD_ENV"] = value = "set after the fork server started"
    try:  # the child sees the environment of now, not the fork server's
        assert in_child_process(functools.partial(env_value, "PREFCLI_TEST_CHILD_ENV")) == value
    finally:
        del os.environ["PREFCLI_TEST_CHILD_ENV"]
    with pytest.raises(ChildDied, match="signal 9"):
        in_child_process(die_by_signal)

    # kill -9 of the parent takes the child with it (no stage left writing into a workdir)
    (tmp_path / "childwork.py").write_text(CHILD_WORK)
    child_pid = tmp_path / "child.pid"
    script = (f"import functools, sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport childwork\n"
              "from prefcli.memory import in_child_process\n"
              f"in_child_process(functools.partial(childwork.work, {str(child_pid)!r}))\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not (child_pid.exists() and child_pid.read_text()):
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    pid = int(child_pid.read_text())
    assert _alive(pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
