"""`prefcli dedup` end to end through the entry point: outputs, --drop accounting, re-threshold from the graph,
errors (those once more in a subprocess)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


from conftest import assert_one_line_error, run_cli, run_inproc
from dedup_data import alpaca_instructions, hh_first_prompts, prompt_pairs, variants_of
from ingest_helpers import cli
from prefcli import io



@pytest.fixture(scope="module")
def files(shared_data, tmp_path_factory, session_cache):
    root = tmp_path_factory.mktemp("dedup-cli")
    base = alpaca_instructions(shared_data)[:30] + hh_first_prompts(shared_data, 30)
    variants = [v for _, _, v in variants_of(base, seed=2)][:30]
    io.write_table(prompt_pairs(base + variants), root / "in.parquet")
    (root / "eval.txt").write_text("\n".join(base[:3]) + "\n")
    (root / "eval.jsonl").write_text("\n".join(json.dumps({"instruction": p}) for p in base[3:5]) + "\n")
    return root


def summary(proc) -> dict:
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def test_drop_writes_kept_and_removed_rows_with_reasons(files):
    out, removed = files / "out.parquet", files / "removed.parquet"
    stats = summary(run_inproc("dedup", str(files / "in.parquet"), "-o", str(out), "--drop", "--removed", str(removed),
                               "--against", str(files / "eval.txt"), "--against", str(files / "eval.jsonl"),
                               "--json", "--seed", "1"))
    kept, gone = pq.read_table(out), pq.read_table(removed)
    assert kept.num_rows + gone.num_rows == stats["rows_in"] == 90
    assert stats["rows_removed"] == gone.num_rows > 0
    reasons = gone.column("set_aside_reason").to_pylist()
    assert reasons.count("contaminated") >= 5 and {"exact", "semantic"} <= set(reasons)
    assert all(kept.column("dedup_is_rep").to_pylist())


def test_rethreshold_reuses_graph_and_explain(files):
    first = summary(run_inproc("dedup", str(files / "in.parquet"), "-o", str(files / "a.parquet"), "--json",
                               "--graph", str(files / "g.parquet")))
    assert (files / "g.parquet").exists()
    again = summary(run_inproc("dedup", str(files / "in.parquet"), "-o", str(files / "b.parquet"), "--json",
                               "--threshold", "0.8", "--explain"))
    assert again["graph_reused"] and again["embedded"] == 0
    assert again["semantic_duplicates"] >= first["semantic_duplicates"]
    assert sum(h["texts"] for h in again["explain"]["histogram"]) == again["unique_texts"]
    # same input, same options: byte-identical output
    run_inproc("dedup", str(files / "in.parquet"), "-o", str(files / "c.parquet"), "-q")
    assert (files / "a.parquet").read_bytes() == (files / "c.parquet").read_bytes()
    # --explain alone prints tables and writes nothing
    plain = run_inproc("dedup", str(files / "in.parquet"), "--explain")
    assert plain.returncode == 0 and "threshold" in plain.stdout.decode()


def test_pipes_through_stdin_and_stdout(files):
    data = (files / "in.parquet").read_bytes()
    proc = run_inproc("dedup", "-", "-o", "-", "-q", input=data)
    assert proc.returncode == 0 and proc.stderr == b""
    assert pq.read_table(__import__("io").BytesIO(proc.stdout)).num_rows == 90


@pytest.mark.parametrize("args,fragments", [
    (["--on", "bogus"], ["--on", "bogus"]),
    (["--keep", "oldest"], ["--keep", "oldest"]),
    (["--threshold", "0"], ["--threshold"]),
    (["--threshold", "0.3"], ["--threshold", "floor"]),
    (["--device", "tpu"], ["--device"]),
    (["--removed", "r.parquet"], ["--removed needs --drop"]),
    (["--keep", "strongest"], ["--keep strongest", "pref_mean"]),
    (["--against", "missing-eval.txt"], ["missing-eval.txt"]),
])
def test_bad_options_give_one_line_errors(files, args, fragments):
    """In process, through the real entry point, to keep the suite fast; a subprocess is covered below."""
    result = cli("dedup", str(files / "in.parquet"), "-o", str(files / "bad.parquet"), *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("prefcli: error:"), result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    assert not (files / "bad.parquet").exists()


def test_bad_input_gives_one_line_error(files):
    (files / "broken.parquet").write_bytes(b"not parquet")
    assert_one_line_error(run_cli("dedup", str(files / "broken.parquet"), "-o", str(files / "x.parquet")),
                          "broken.parquet")
    assert_one_line_error(run_cli("dedup", str(files / "in.parquet"), "--keep", "strongest", "-o",
                                  str(files / "x.parquet")), "--keep strongest")
    assert not (files / "x.parquet").exists()


def test_texts_read_a_chunk_at_a_time_give_the_same_outputs(files, monkeypatch):
    """dedup never holds every text: the view is read from the table TEXT_CHUNK rows at a time (keys, blank
    check, embedding, edit distances, each pair part, decontamination). With a 7-row chunk the outputs equal
    the defaults' (where 90 rows fit one chunk): flagging, dropping with --against, --on pair, --keep longest."""
    from prefcli import text
    from prefcli.models import embed
    from prefcli.stages import dedup as dd

    src = str(files / "in.parquet")
    runs = {
        "flag": ["--seed", "1", "--keep", "longest"],
        "drop": ["--drop", "--against", str(files / "eval.txt"), "--seed", "1"],
        "pair": ["--on", "pair", "--drop", "--threshold", "0.9"],
    }
    whole = {}
    for name, args in runs.items():
        whole[name] = files / f"one-chunk-{name}.parquet"
        run_inproc("dedup", src, "-o", str(whole[name]), "-q", *args)
    read: list[int] = []
    real_take = text.TableTexts.take

    def counting(self, positions):
        read.append(len(positions))
        return real_take(self, positions)

    for module in (text, embed, dd):
        monkeypatch.setattr(module, "TEXT_CHUNK", 7)
    monkeypatch.setattr(text.TableTexts, "take", counting)
    for name, args in runs.items():
        out = files / f"chunked-{name}.parquet"
        run_inproc("dedup", src, "-o", str(out), "-q", *args)
        assert pq.read_table(out).equals(pq.read_table(whole[name])), name
        if "--drop" in args:
            rejects = [p.with_name(p.name.replace(".parquet", ".rejects.parquet")) for p in (whole[name], out)]
            assert pq.read_table(rejects[1]).equals(pq.read_table(rejects[0])) and pq.read_table(rejects[1]).num_rows
    assert read and max(read) <= 7


def test_table_texts_are_the_text_view_read_when_asked_for(files, monkeypatch):
    from prefcli import text

    table = pq.read_table(files / "in.parquet")
    monkeypatch.setattr(text, "TEXT_CHUNK", 4)
    for on in ("prompt", "chosen", "pair"):
        full = text.texts_for(table, on)
        lazy = text.TableTexts(table, on)
        assert len(lazy) == len(full) and list(lazy) == full
        assert lazy[-1] == full[-1] and lazy[5] == full[5] and lazy[3:11:2] == full[3:11:2]
        picked = np.array([40, 2, 2, 17, 89, 3])
        assert lazy.take(picked) == [full[i] for i in picked]
        sub = text.pick(lazy, picked)
        assert isinstance(sub, text.TableTexts) and list(sub) == [full[i] for i in picked]
        assert text.take_texts(sub, np.array([5, 0])) == [full[3], full[40]]
        assert text.text_keys(lazy) == [text.text_key(t) for t in full]
    with pytest.raises(IndexError):
        text.TableTexts(table, "prompt")[table.num_rows]


def test_rows_are_taken_batch_by_batch_as_arrow_takes_them(files):
    """take_rows equals Table.take on a many-chunk table (sorted, unsorted, repeated, empty, every row) without
    Arrow's concatenation of each whole column first; an out-of-range row is an IndexError, as with take."""
    from prefcli.io import take_rows

    table = pq.read_table(files / "in.parquet")
    chunked = pa.concat_tables([table.slice(start, 7) for start in range(0, table.num_rows, 7)])
    assert chunked.column("prompt").num_chunks > 10
    n = table.num_rows
    rng = np.random.default_rng(3)
    for rows in (np.sort(rng.choice(n, n // 2, replace=False)), rng.integers(0, n, 3 * n),
                 np.array([n - 1, 0, 0, 7, 6]), np.zeros(0, np.int64), np.arange(n)):
        assert take_rows(chunked, rows).equals(table.take(pa.array(rows, pa.int64())))
    with pytest.raises(IndexError):
        take_rows(chunked, np.array([n]))


def test_projected_columns_give_the_whole_table_outputs(files, monkeypatch):
    """Past one stream batch the local engine hands dedup only the columns it needs (prompt, pair_id, the keep
    scores; the responses too with --on pair) and joins the rest back as rows are written: the same kept and
    set-aside tables as a whole-table run, flagging or dropping; a bad row in a column dedup does not read
    still fails the command first, named from the file's start, with nothing written."""
    from prefcli.engines import project, stream

    src = str(files / "in.parquet")
    against = ["--against", str(files / "eval.txt")]
    runs = {
        "flag": ["--seed", "1"],
        "drop": ["--drop", *against, "--seed", "1"],
        "pair": ["--on", "pair", "--drop", "--threshold", "0.9"],
    }
    whole = {}
    for name, args in runs.items():
        out = files / f"whole-{name}.parquet"
        run_inproc("dedup", src, "-o", str(out), "-q", *args)
        whole[name] = out
    seen: list[list[str]] = []
    returned: list[list[str]] = []
    real, real_rejoin = project.run_projected, project.rejoin

    def recording(stage, source, ctx):
        seen.append(source.table.column_names)
        return real(stage, source, ctx)

    def rejoin(source, rows):
        if rows is not None:
            returned.append(rows.column_names)
        return real_rejoin(source, rows)

    monkeypatch.setattr(stream, "STREAM_BATCH_ROWS", 16)
    monkeypatch.setattr(project, "run_projected", recording)
    monkeypatch.setattr(project, "rejoin", rejoin)
    for name, args in runs.items():
        out = files / f"projected-{name}.parquet"
        run_inproc("dedup", src, "-o", str(out), "-q", *args)
        assert pq.read_table(out).equals(pq.read_table(whole[name])), name
        rejects = [p.with_name(p.name.replace(".parquet", ".rejects.parquet")) for p in (whole[name], out)]
        if "--drop" in args:
            assert pq.read_table(rejects[1]).equals(pq.read_table(rejects[0])) and pq.read_table(rejects[1]).num_rows
    assert len(seen) == 3
    assert "chosen" not in seen[0] and "meta" not in seen[0] and "prompt" in seen[0] and "pair_id" in seen[0]
    assert {"prompt", "chosen", "rejected"} <= set(seen[2]) and "meta" not in seen[2]
    # the stage leaves the projected input columns out of its kept and set-aside rows (Context.restored): the
    # texts are not copied to split the rows, they come back from the file with the rest
    assert len(returned) == 5 and all(not {"prompt", "chosen", "pair_id"} & set(names) for names in returned)
    assert all("dedup_cluster" in names for names in returned)
    table = pq.read_table(src)
    chosen = table.column("chosen").to_pylist()
    chosen[50] = None
    bad = files / "bad-chosen.parquet"
    io.write_table(table.set_column(table.column_names.index("chosen"), "chosen", pa.array(chosen, pa.large_string())),
                   bad)
    result = run_inproc("dedup", str(bad), "-o", str(files / "never.parquet"))
    assert_one_line_error(result, "row 50")
    assert not (files / "never.parquet").exists() and len(seen) == 3
