"""Data safety: every command refuses paths and values that would lose or overwrite data.

Each bad-input case asserts the exit code, exactly one `prefcli: error:` line naming the file, option, row
or column, no traceback, and that the directory is unchanged (snapshot before and after: nothing created,
changed or deleted). The cases run in process through the real entry point; the disk-full and kill tests
run subprocesses, since a file-size limit and a kill are about the process.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE_DATA, assert_one_line_error
from ingest_helpers import assert_one_line_error_result, cli
from prefcli import io
from prefcli.errors import EXIT_CANT_CREATE, EXIT_IO
from prefcli.outputs import OutputPlan
from prefcli.pairs import build_pairs

MSG = [{"role": "user", "content": "How do I sort a list?"}]


def pairs_table(n: int = 12) -> pa.Table:
    prompts = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(n)]
    return build_pairs(prompts, [f"A careful answer {i}." for i in range(n)], [f"No {i}." for i in range(n)],
                       source="safety", chosen_score=[float(i % 5) for i in range(n)],
                       rejected_score=[float(i % 3) for i in range(n)])


def with_prompt(table: pa.Table, row: int, messages: list[dict]) -> pa.Table:
    prompts = table.column("prompt").to_pylist()
    prompts[row] = messages
    return table.set_column(table.column_names.index("prompt"), "prompt", pa.array(prompts, table.schema.field(
        "prompt").type))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under root (hidden ones too) with its content digest."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", hashlib.sha1(path.read_bytes()).hexdigest())
    return out


@pytest.fixture()
def d(tmp_path, monkeypatch):
    """A working folder with a pairs file, a model, a queue, verdicts, a raw source and an unrelated folder."""
    monkeypatch.chdir(tmp_path)
    table = pairs_table()
    io.write_table(table, tmp_path / "in.parquet")
    (tmp_path / "src.jsonl").write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"Good {i}.",
                                                            "rejected": f"Bad {i}."}) + "\n" for i in range(6)))
    (tmp_path / "m.json").write_text("{}\n")
    (tmp_path / "verdicts.json").write_text("[]\n")
    (tmp_path / "eval.txt").write_text("Question number 1?\n")
    (tmp_path / "notes.txt").write_text("not a directory\n")
    (tmp_path / "important").mkdir()
    (tmp_path / "important" / "important.txt").write_text("keep me\n")
    (tmp_path / "adir").mkdir()
    io.write_table(with_prompt(table, 3, [{"role": "narrator", "content": "Once upon a time"}]),
                   tmp_path / "narrator.parquet")
    io.write_table(with_prompt(table, 5, [{"role": "user", "content": None}]), tmp_path / "nullmsg.parquet")
    os.symlink("in.parquet", tmp_path / "link.parquet")
    (tmp_path / "escape.toml").write_text('[[stage]]\ncommand = "ingest"\ninputs = ["src.jsonl"]\n'
                                          'output = "../../ESCAPED.parquet"\n')
    (tmp_path / "abs.toml").write_text(f'[[stage]]\ncommand = "ingest"\ninputs = ["src.jsonl"]\n'
                                       f'output = "{tmp_path / "abs.parquet"}"\n')
    (tmp_path / "escape_option.toml").write_text('[[stage]]\ncommand = "ingest"\ninputs = ["src.jsonl"]\n'
                                                 'rejects = "../outside.parquet"\n')
    (tmp_path / "stdout_option.toml").write_text('[[stage]]\ncommand = "ingest"\ninputs = ["src.jsonl"]\n'
                                                 'rejects = "-"\n')
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "x": ' + deep + "}\n")
    (tmp_path / "deep.json").write_text('[{"prompt": "q", "chosen": "a", "rejected": "b", "x": ' + deep + "}]")
    (tmp_path / "dupcols.csv").write_text("prompt,chosen,chosen,rejected\nq,a,b,c\n")
    return tmp_path


RM = ["--rm", "scores:chosen_score,rejected_score"]
REVIEW_IMPORT = ["review", "import", "verdicts.json", "--into", "in.parquet", "--queue", "in.parquet"]

# (id, argv, exit code, fragments of the one error line)
CASES = [
    # 1. an output that is another output of the same command
    ("dedup-removed-is-output", ["dedup", "in.parquet", "-o", "o.parquet", "--drop", "--removed", "o.parquet"],
     2, ["--removed o.parquet", "--output o.parquet"]),
    ("dedup-removed-other-spelling", ["dedup", "in.parquet", "-o", "o.parquet", "--drop", "--removed",
                                      "./sub/../o.parquet"], 2, ["--removed", "same file as --output"]),
    ("dedup-graph-is-output", ["dedup", "in.parquet", "-o", "o.parquet", "--graph", "o.parquet"], 2, ["--graph"]),
    ("vote-set-aside-is-output", ["vote", "in.parquet", "-o", "o.parquet", *RM, "--action", "drop",
                                  "--set-aside", "o.parquet"], 2, ["--set-aside o.parquet"]),
    ("rebalance-rejects-is-output", ["length-bias", "rebalance", "in.parquet", "-o", "o.parquet", "--rejects",
                                     "o.parquet"], 2, ["--rejects o.parquet"]),
    ("review-import-rejects-is-output", [*REVIEW_IMPORT, "-o", "o.parquet", "--rejects", "o.parquet"], 2,
     ["--rejects o.parquet"]),
    ("ingest-rejects-is-output", ["ingest", "src.jsonl", "-o", "o.parquet", "--rejects", "o.parquet"], 2,
     ["--rejects o.parquet"]),
    ("fit-table-is-model", ["length-bias", "fit", "in.parquet", "-o", "fit.json", "--table", "fit.json"], 2,
     ["--table fit.json"]),
    ("mine-set-aside-is-output", ["mine", "in.parquet", "-o", "o.parquet", "--set-aside", "o.parquet"], 2,
     ["--set-aside o.parquet"]),
    ("ingest-two-stdouts", ["ingest", "src.jsonl", "-o", "-", "--rejects", "-"], 2, ["--rejects -", "stdout"]),
    ("calibrate-png-is-output", ["calibrate", "in.parquet", "-o", "calib.png", "--png"], 2, ["--png calib.png"]),
    ("dedup-removed-default-clash", ["dedup", "in.parquet", "-o", "o.parquet", "--drop", "--graph",
                                     "o.rejects.parquet"], 2, ["o.rejects.parquet"]),
    # 2. an output that is an input
    ("export-parquet-over-input", ["export", "in.parquet", "--to", "parquet", "-o", "in.parquet"], 2,
     ["--output in.parquet", "is the input"]),
    ("export-jsonl-over-input", ["export", "in.parquet", "--to", "trl", "-o", "in.parquet"], 2, ["is the input"]),
    ("export-through-symlink", ["export", "in.parquet", "--to", "parquet", "-o", "link.parquet"], 2,
     ["--output link.parquet", "is the input"]),
    ("dedup-over-input", ["dedup", "in.parquet", "-o", "in.parquet"], 2, ["--output in.parquet"]),
    ("dedup-over-input-other-spelling", ["dedup", "./in.parquet", "-o", "adir/../in.parquet"], 2,
     ["is the input"]),
    ("dedup-graph-over-input", ["dedup", "in.parquet", "-o", "o.parquet", "--graph", "in.parquet"], 2,
     ["--graph in.parquet"]),
    ("dedup-removed-over-eval", ["dedup", "in.parquet", "-o", "o.parquet", "--against", "eval.txt", "--drop",
                                 "--removed", "eval.txt"], 2, ["--removed eval.txt"]),
    ("ingest-over-source", ["ingest", "src.jsonl", "-o", "src.jsonl"], 2, ["--output src.jsonl"]),
    ("ingest-rejects-over-source", ["ingest", "src.jsonl", "-o", "o.parquet", "--rejects", "src.jsonl"], 2,
     ["--rejects src.jsonl"]),
    ("vote-over-input", ["vote", "in.parquet", "-o", "./in.parquet", *RM], 2, ["is the input"]),
    ("vote-over-calibration", ["vote", "in.parquet", "-o", "m.json", *RM, "--calibration", "m.json"], 2,
     ["--output m.json"]),
    ("apply-over-model", ["length-bias", "apply", "in.parquet", "--model", "m.json", "-o", "m.json"], 2,
     ["--output m.json"]),
    ("apply-over-input", ["length-bias", "apply", "in.parquet", "--model", "m.json", "-o", "in.parquet"], 2,
     ["--output in.parquet"]),
    ("fit-table-over-input", ["length-bias", "fit", "in.parquet", "-o", "f.json", "--table", "in.parquet"], 2,
     ["--table in.parquet"]),
    ("report-png-over-input", ["length-bias", "report", "in.parquet", "--png", "in.parquet"], 2, ["--png"]),
    ("select-over-input", ["review", "select", "in.parquet", "-o", "in.parquet", "--budget", "5"], 2,
     ["--output in.parquet"]),
    ("review-export-over-queue", ["review", "export", "in.parquet", "--to", "csv", "-o", "in.parquet"], 2,
     ["--output in.parquet"]),
    ("review-import-over-verdicts", [*REVIEW_IMPORT, "-o", "verdicts.json"], 2, ["--output verdicts.json"]),
    ("review-import-over-queue", [*REVIEW_IMPORT, "-o", "o.parquet", "--rejects", "in.parquet"], 2,
     ["--rejects in.parquet"]),
    ("calibrate-over-input", ["calibrate", "in.parquet", "-o", "in.parquet"], 2, ["--output in.parquet"]),
    ("mine-over-input", ["mine", "in.parquet", "-o", "in.parquet"], 2, ["--output in.parquet"]),
    ("mine-over-pool", ["mine", "in.parquet", "-o", "o.parquet", "--pool", "narrator.parquet", "--set-aside",
                        "narrator.parquet"], 2, ["--set-aside narrator.parquet"]),
    # 3. a directory prefcli did not write
    ("export-hf-dataset-over-folder", ["export", "in.parquet", "--to", "hf-dataset", "-o", "important"], 73,
     ["--output important", "--overwrite"]),
    ("review-export-over-folder", ["review", "export", "in.parquet", "--to", "csv", "-o", "important"], 73,
     ["--output important", "--overwrite"]),
    ("export-hf-dataset-over-file", ["export", "in.parquet", "--to", "hf-dataset", "-o", "notes.txt"], 73,
     ["--output notes.txt", "is a file"]),
    # 4. an output with a directory in the way: nothing else is written either
    ("ingest-output-is-dir", ["ingest", "src.jsonl", "-o", "adir"], 73, ["--output adir", "is a directory"]),
    ("ingest-rejects-is-dir", ["ingest", "src.jsonl", "-o", "o.parquet", "--rejects", "adir"], 73,
     ["--rejects adir"]),
    ("dedup-output-is-dir", ["dedup", "in.parquet", "-o", "adir", "--drop"], 73, ["--output adir"]),
    ("vote-output-is-dir", ["vote", "in.parquet", "-o", "adir", *RM], 73, ["--output adir"]),
    ("fit-output-is-dir", ["length-bias", "fit", "in.parquet", "-o", "adir"], 73, ["--output adir"]),
    ("export-output-is-dir", ["export", "in.parquet", "--to", "trl", "-o", "adir"], 73, ["--output adir"]),
    ("calibrate-output-is-dir", ["calibrate", "in.parquet", "-o", "adir"], 73, ["--output adir"]),
    ("report-png-is-dir", ["length-bias", "report", "in.parquet", "--png", "adir"], 73, ["--png adir"]),
    ("select-output-is-dir", ["review", "select", "in.parquet", "-o", "adir", "--budget", "3"], 73,
     ["--output adir"]),
    # 5. operating-system errors: 73 with the path
    ("ingest-parent-is-file", ["ingest", "src.jsonl", "-o", "notes.txt/o.parquet"], 73,
     ["notes.txt/o.parquet", "not a directory"]),
    ("export-parent-is-file", ["export", "in.parquet", "--to", "trl", "-o", "in.parquet/x.jsonl"], 73,
     ["in.parquet/x.jsonl"]),
    ("report-png-parent-is-file", ["length-bias", "report", "in.parquet", "--png", "notes.txt/p.png"], 73,
     ["notes.txt/p.png"]),
    ("export-unwritable-filesystem", ["export", "in.parquet", "--to", "trl", "-o", "/proc/prefcli/x.jsonl"], 73,
     ["/proc/prefcli/x.jsonl", "cannot create"]),
    ("ingest-unwritable-filesystem", ["ingest", "src.jsonl", "-o", "/proc/prefcli/o.parquet"], 73,
     ["/proc/prefcli/o.parquet"]),
    ("ingest-deep-jsonl", ["ingest", "deep.jsonl", "-o", "o.parquet"], 2, ["deep.jsonl", "line 1", "nested"]),
    ("ingest-deep-json", ["ingest", "deep.json", "-o", "o.parquet"], 2, ["deep.json", "nested"]),
    # 6. values the schema or the option forbids
    ("stats-unknown-role", ["stats", "narrator.parquet"], 2, ["narrator.parquet", "row 3", "'prompt'",
                                                              "'narrator'"]),
    ("dedup-unknown-role", ["dedup", "narrator.parquet", "-o", "o.parquet"], 2, ["narrator.parquet", "row 3"]),
    ("export-null-message", ["export", "nullmsg.parquet", "--to", "trl", "-o", "o.jsonl"], 2,
     ["nullmsg.parquet", "row 5", "null content"]),
    ("ingest-csv-repeated-column", ["ingest", "dupcols.csv", "-o", "o.parquet"], 2, ["dupcols.csv", "'chosen'"]),
    ("vote-batch-size-0", ["vote", "in.parquet", "-o", "o.parquet", *RM, "--batch-size", "0"], 2,
     ["--batch-size"]),
    ("vote-max-length-negative", ["vote", "in.parquet", "-o", "o.parquet", *RM, "--max-length", "-5"], 2,
     ["--max-length"]),
    ("calibrate-min-reviewed-negative", ["calibrate", "in.parquet", "-o", "c.json", "--min-reviewed", "-4"], 2,
     ["--min-reviewed"]),
    ("calibrate-target-inf", ["calibrate", "in.parquet", "-o", "c.json", "--target", "inf"], 2, ["--target"]),
    ("prune-older-than-nan", ["cache", "prune", "--cache-dir", "cachedir", "--older-than", "nan"], 2,
     ["--older-than", "finite"]),
    ("dedup-threshold-above-1", ["dedup", "in.parquet", "-o", "o.parquet", "--threshold", "1.5"], 2,
     ["--threshold"]),
    ("dedup-threshold-nan", ["dedup", "in.parquet", "-o", "o.parquet", "--threshold", "nan"], 2, ["--threshold"]),
    ("mine-per-pair-0", ["mine", "in.parquet", "-o", "o.parquet", "--per-pair", "0"], 2, ["--per-pair"]),
    ("mine-min-agree-negative", ["mine", "in.parquet", "-o", "o.parquet", "--min-agree", "-0.1"], 2,
     ["--min-agree"]),
    ("select-budget-0", ["review", "select", "in.parquet", "-o", "q.parquet", "--budget", "0"], 2, ["--budget"]),
    ("select-audit-share-2", ["review", "select", "in.parquet", "-o", "q.parquet", "--budget", "3",
                              "--audit-share", "2"], 2, ["--audit-share"]),
    ("ingest-reject-rate-1.5", ["ingest", "src.jsonl", "-o", "o.parquet", "--max-reject-rate", "1.5"], 2,
     ["--max-reject-rate"]),
    ("run-wait-timeout-negative", ["run", "escape.toml", "--wait-timeout", "-1"], 2, ["--wait-timeout"]),
    ("export-seed-negative", ["export", "in.parquet", "--to", "trl", "-o", "o.jsonl", "--seed", "-1"], 2,
     ["--seed"]),
    # 7. `prefcli run` never writes outside its workdir
    ("run-output-escapes", ["run", "escape.toml", "--workdir", "work"], 2, ["escape.toml", "ESCAPED.parquet",
                                                                          "stage directory"]),
    ("run-output-absolute", ["run", "abs.toml", "--workdir", "work"], 2, ["abs.toml", "stage directory"]),
    ("run-option-escapes", ["run", "escape_option.toml", "--workdir", "work"], 2, ["--rejects",
                                                                                 "../outside.parquet"]),
    ("run-option-stdout", ["run", "stdout_option.toml", "--workdir", "work"], 2, ["--rejects", "'-'"]),
    # security: --where is a filter over the table's own columns, parsed before anything runs
    ("where-subquery", ["export", "in.parquet", "--to", "trl", "-o", "o.jsonl", "--where",
                        "pair_id IN (SELECT * FROM read_csv('eval.txt'))"], 2, ["--where", "SELECT"]),
    ("where-table-function", ["export", "in.parquet", "--to", "trl", "-o", "o.jsonl", "--where",
                              "read_parquet('in.parquet') IS NULL"], 2, ["--where", "read_parquet("]),
    ("where-second-statement", ["export", "in.parquet", "--to", "trl", "-o", "o.jsonl", "--where",
                                "tie = false; DROP TABLE t"], 2, ["--where", "';'"]),
    ("where-unknown-column", ["export", "in.parquet", "--to", "trl", "-o", "o.jsonl", "--where",
                              "nosuch > 1"], 2, ["--where", "'nosuch'"]),
    # other bad invocations, one or more per command
    ("stats-missing-file", ["stats", "missing.parquet"], 2, ["missing.parquet"]),
    ("cache-info-dir-is-file", ["cache", "info", "--cache-dir", "notes.txt"], 2, ["notes.txt"]),
    ("export-unknown-format", ["export", "in.parquet", "--to", "csv", "-o", "o.csv"], 2, ["--to"]),
    ("review-export-unknown-format", ["review", "export", "in.parquet", "--to", "xml", "-o", "tasks"], 2,
     ["--to"]),
    ("run-missing-pipeline", ["run", "missing.toml", "--workdir", "work"], 2, ["missing.toml"]),
    ("apply-missing-model", ["length-bias", "apply", "in.parquet", "--model", "none.json", "-o", "o.parquet"], 2,
     ["none.json"]),
]


@pytest.mark.parametrize("argv,code,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(d, argv, code, fragments):
    before = snapshot(d)
    result = cli(*argv)
    assert_one_line_error_result(result, *fragments, code=code)
    assert snapshot(d) == before
    assert not Path(d.parent.parent / "ESCAPED.parquet").exists()


def test_suite_covers_every_command():
    commands = {" ".join(argv[:2]) if argv[0] in ("length-bias", "review", "cache") else argv[0]
                for _, argv, _, _ in CASES}
    assert commands >= {"ingest", "stats", "dedup", "vote", "mine", "length-bias fit", "length-bias apply",
                        "length-bias report", "length-bias rebalance", "review select", "review export",
                        "review import", "calibrate", "export", "run", "cache info", "cache prune"}
    assert len(CASES) >= 60


def test_overwrite_rules_for_directories(d):
    """prefcli replaces its own earlier directory outputs; an unrelated folder only with --overwrite."""
    assert cli("export", "in.parquet", "--to", "hf-dataset", "-o", "ds", "-q").exit_code == 0
    (d / "ds" / "stale.txt").write_text("from an earlier run")
    assert cli("export", "in.parquet", "--to", "hf-dataset", "-o", "ds", "-q").exit_code == 0
    assert not (d / "ds" / "stale.txt").exists() and (d / "ds" / "dataset_info.json").exists()
    result = cli("export", "in.parquet", "--to", "hf-dataset", "-o", "important", "--overwrite", "-q")
    assert result.exit_code == 0, result.stderr
    assert not (d / "important" / "important.txt").exists()
    import datasets

    assert datasets.load_from_disk(str(d / "important")).num_rows == 12
    assert not any(p.name.endswith((".tmp", ".old")) for p in d.iterdir())


def test_duplicate_json_keys_set_the_row_aside(tmp_path):
    """The last duplicate key silently winning would change a label; the row is set aside with a reason."""
    lines = ['{"prompt": "Q0?", "chosen": "Good.", "rejected": "Bad."}',
             '{"prompt": "Q1?", "chosen": "Good.", "rejected": "Bad.", "chosen": "Bad."}',
             '{"prompt": "Q2?", "chosen": "Fine.", "rejected": "Poor."}']
    (tmp_path / "dup.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "dup.json").write_text(
        '[{"prompt": "A?", "chosen": "x1", "rejected": "y1"},\n'
        ' {"chosen": "x2", "rejected": "y2", "prompt": [{"role": "user", "content": "B?", "content": "C?"}]},\n'
        ' {"prompt": "D?", "chosen": "x3", "rejected": "y3"}]')
    for name, bad_line, key in (("dup.jsonl", 2, "chosen"), ("dup.json", 2, "content")):
        out = tmp_path / f"{name}.parquet"
        result = cli("ingest", tmp_path / name, "-o", out, "--json")
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.stdout)
        assert (summary["read"], summary["written"], summary["set_aside"]) == (3, 2, 1)
        rejects = pq.read_table(summary["rejects"]).to_pylist()
        assert [(r["line"], r["set_aside_reason"]) for r in rejects] == [(bad_line, f"duplicate key '{key}'")]
        assert pq.read_table(out).num_rows == 2


def test_commit_is_all_or_nothing(tmp_path, monkeypatch):
    """A rename that fails half-way puts back what the earlier renames replaced."""
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    first.write_bytes(b"old a")
    second.write_bytes(b"old b")
    plan = OutputPlan(inputs=[])
    plan.add("--output", str(first))
    plan.add("--rejects", str(second))
    plan.write(str(first), b"new a")
    plan.write(str(second), b"new b")
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if Path(dst) == second and not str(src).endswith(".old"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(Exception) as caught:
        plan.commit()
    monkeypatch.setattr(os, "replace", real_replace)
    assert caught.value.exit_code == EXIT_IO and "b.parquet" in str(caught.value)
    assert first.read_bytes() == b"old a" and second.read_bytes() == b"old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]


def _limited(limit_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def _run_limited(args: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefcli.cli.main", *args], cwd=cwd, capture_output=True,
                          preexec_fn=_limited(limit), timeout=600, env={**os.environ, "PREFCLI_CACHE_DIR": str(cwd)})


def test_disk_full_keeps_previous_outputs(tmp_path):
    """A file-size limit (as a full disk would) fails the write: exit 74 naming the file, earlier outputs intact."""
    sources = [str(SAMPLE_DATA / name) for name in ("hh_rlhf.jsonl.gz", "trl_standard.jsonl", "oasst_trees.jsonl")]
    first = subprocess.run([sys.executable, "-m", "prefcli.cli.main", "ingest", sources[0], "-o", "pairs.parquet",
                            "-q"], cwd=tmp_path, capture_output=True, timeout=600)
    assert first.returncode == 0, first.stderr
    before = snapshot(tmp_path)
    assert set(before) == {"pairs.parquet", "pairs.rejects.parquet"}
    proc = _run_limited(["ingest", *sources, "-o", "pairs.parquet"], tmp_path, 6000)
    assert_one_line_error(proc, "pairs.parquet", "I/O error", code=EXIT_IO)
    assert snapshot(tmp_path) == before
    proc = _run_limited(["export", "pairs.parquet", "--to", "trl", "-o", "train.jsonl"], tmp_path, 1000)
    assert_one_line_error(proc, "train.jsonl", "File too large", code=EXIT_IO)
    assert snapshot(tmp_path) == before


def test_disk_full_under_run_names_the_stage(tmp_path):
    (tmp_path / "p.toml").write_text(f'[[stage]]\nname = "raw"\ncommand = "ingest"\n'
                                     f'inputs = ["{SAMPLE_DATA / "hh_rlhf.jsonl.gz"}"]\n')
    proc = _run_limited(["run", "p.toml", "--workdir", "work"], tmp_path, 4000)
    assert_one_line_error(proc, "stage 'raw'", "I/O error", code=EXIT_IO)
    assert not (tmp_path / "work" / "raw").exists()


def test_embedding_model_loads_safetensors_only(tmp_path, d):
    """A pickle-only model (pytorch_model.bin) is refused unless --trust-remote-code says otherwise."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from prefcli.models.embed import default_model_path

    model = tmp_path / "pickle-model"
    shutil.copytree(default_model_path(), model)
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    before = snapshot(d)
    result = cli("dedup", "in.parquet", "-o", "o.parquet", "--model", model, "--no-cache")
    assert_one_line_error_result(result, f"--model {model}", "safetensors", "--trust-remote-code")
    assert snapshot(d) == before
    result = cli("dedup", "in.parquet", "-o", "o.parquet", "--model", model, "--no-cache", "--trust-remote-code",
                 "-q")
    assert result.exit_code == 0, result.stderr
    assert pq.read_table(d / "o.parquet").num_rows == 12


def test_valid_roles_pass(tmp_path):
    table = with_prompt(pairs_table(), 0, [{"role": "system", "content": "Be brief."}, *MSG,
                                           {"role": "assistant", "content": "Which language?"},
                                           {"role": "user", "content": "Python."}])
    io.write_table(table, tmp_path / "ok.parquet")
    result = cli("stats", tmp_path / "ok.parquet", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 12


def _ingest_pipeline(tmp_path: Path) -> Path:
    toml = tmp_path / "p.toml"
    toml.write_text(f'[[stage]]\nname = "raw"\ncommand = "ingest"\ninputs = ["{SAMPLE_DATA / "trl_standard.jsonl"}"]\n')
    return toml


def test_run_never_replaces_what_it_did_not_write(tmp_path):
    """--workdir may be a folder with other things in it: a foreign manifest.json or a folder named like a
    stage is refused (exit 73, untouched), and hidden files of other names survive the crash recovery."""
    toml = _ingest_pipeline(tmp_path)
    work = tmp_path / "work"
    (work / "raw").mkdir(parents=True)
    (work / "raw" / "mine.txt").write_text("a user's folder that happens to share the stage's name")
    (work / ".notes.tmp").write_text("hidden, not prefcli's")
    before = snapshot(tmp_path)
    assert_one_line_error_result(cli("run", toml, "--workdir", work), str(work / "raw"), "not written by this "
                                 "pipeline", code=EXIT_CANT_CREATE)
    assert snapshot(tmp_path) == before
    (work / "raw" / "mine.txt").unlink()
    (work / "raw").rmdir()
    (work / "manifest.json").write_text('{"my": "own manifest"}')
    before = snapshot(tmp_path)
    assert_one_line_error_result(cli("run", toml, "--workdir", work), "manifest.json", "not a prefcli run manifest",
                                 code=EXIT_CANT_CREATE)
    assert snapshot(tmp_path) == before
    (work / "manifest.json").unlink()
    result = cli("run", toml, "--workdir", work, "-q")
    assert result.exit_code == 0, result.stderr
    assert (work / ".notes.tmp").read_text() == "hidden, not prefcli's"
    # a stage folder prefcli wrote is recognised even when the manifest lost its record (a kill between the two)
    (work / "manifest.json").unlink()
    result = cli("run", toml, "--workdir", work, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["stages_run"] == 1


def test_cache_prune_touches_only_prefcli_entries(tmp_path):
    """`cache prune --cache-dir` may be pointed at a folder that holds other things: nothing of those is
    removed, however old, even in folders that share a name with prefcli's (ingest, dedup-graphs)."""
    old = 10 * 86400
    user = [tmp_path / "ingest" / "docs" / "notes.txt", tmp_path / "ingest" / "ab" / "draft" / "a.txt",
            tmp_path / "dedup-graphs" / "figure.parquet", tmp_path / "photos" / ".edit.tmp",
            tmp_path / "photos" / ".tmp-1.npz"]
    for path in user:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("user data")
    for path in [*user, *(p.parent for p in user)]:
        os.utime(path, (path.stat().st_atime - old, path.stat().st_mtime - old))
    before = snapshot(tmp_path)
    result = cli("cache", "prune", "--cache-dir", tmp_path, "--older-than", "1", "--json")
    assert result.exit_code == 0, result.stderr
    assert snapshot(tmp_path) == before
    stats = json.loads(result.stdout)
    assert stats["ingest_files_dropped"] == stats["graphs_dropped"] == stats["temps_removed"] == 0
