"""The static embedding tier and cascade dedup (static model proposes, MiniLM verifies) on real prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dedup_data import alpaca_instructions, hh_first_prompts, prompt_pairs, variants_of
from ingest_helpers import cli
from prefcli import io
from prefcli.models.embed import STATIC, build_embedder, ensure_static_model, static_model_dir
from prefcli.stages.dedup import DEFAULT_PROPOSE, DedupOptions, dedup, text_keys
from prefcli.text import texts_for

PROBES = ["How do I sort a list in Python?", "how do i sort a list in python", "What is the capital of France?",
          "Write a haiku about autumn leaves."]


@pytest.fixture(scope="module")
def static():
    return build_embedder(STATIC)


@pytest.fixture(scope="module")
def real_table(shared_data):
    prompts = alpaca_instructions(shared_data)[:250] + hh_first_prompts(shared_data, 250)
    seen, base = set(), []
    for p, key in zip(prompts, text_keys(prompts)):
        if key not in seen:
            seen.add(key)
            base.append(p)
    variants = variants_of(base, seed=11)
    return prompt_pairs(base + [v for _, _, v in variants]), len(base), variants


class Counting:
    """Counts the texts a verifier is asked to embed."""

    def __init__(self, inner):
        self.inner, self.model_id, self.dim, self.computed = inner, inner.model_id, inner.dim, 0

    def encode(self, texts):
        self.computed += len(texts)
        return self.inner.encode(texts)

    def lookup(self, texts):
        return self.inner.lookup(texts)


def test_static_model_is_reused_and_its_vectors_are_deterministic(static):
    path = ensure_static_model()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_static_model() == path == static_model_dir()
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # found, not rebuilt
    first = static.encode(PROBES)
    again = build_embedder(STATIC).encode(PROBES)
    assert first.shape == (len(PROBES), 256) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    assert first[0] @ first[1] > 0.95 > first[0] @ first[2]  # case-only variant close, another question far
    assert static.store is None  # static vectors cost less to compute than to look up: never cached


@pytest.mark.slow
def test_static_model_builds_offline_from_the_packaged_minilm(tmp_path, static):
    """A fresh build (HF_HUB_OFFLINE is set for the whole suite) reproduces the shared model's vectors."""
    built = ensure_static_model(tmp_path)
    assert built.parent == tmp_path and (built / "model.safetensors").is_file()
    from prefcli.models.embed import StaticEmbedder

    np.testing.assert_array_equal(StaticEmbedder(built).encode(PROBES), static.encode(PROBES))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_cascade_finds_the_near_duplicates_minilm_finds(real_table, static, embedder):
    table, n_base, variants = real_table
    minilm = dedup(table, embedder, DedupOptions()).result.out
    verifier = Counting(embedder)
    run = dedup(table, static, DedupOptions(), verifier=verifier)
    cascade = run.result.out
    alone = np.array(minilm.column("dedup_cluster").to_pylist(), dtype=object)
    both = np.array(cascade.column("dedup_cluster").to_pylist(), dtype=object)
    found_alone = [alone[n_base + i] == alone[i] for i, _, _ in variants]
    found_both = [both[n_base + i] == both[i] for i, _, _ in variants]
    assert sum(found_alone) >= 0.9 * len(variants)
    missed = [variants[j] for j, (a, b) in enumerate(zip(found_alone, found_both)) if a and not b]
    assert not missed, missed[:3]
    assert minilm.column("dedup_is_rep").to_pylist() == cascade.column("dedup_is_rep").to_pylist()
    stats = run.result.stats
    unique = stats["unique_texts"]
    assert 0 < verifier.computed == stats["verified_texts"] < unique  # only candidates reach the encoder
    assert stats["proposer"].startswith("static:") and stats["proposed_edges"] > 0


def test_cascade_cli_explain_verify_none_and_graph_reuse(tmp_path, session_cache):
    prompts = [p for p in PROBES] + ["How can I sort a list in Python?", "Write a haiku about autumn leaves!"]
    io.write_table(prompt_pairs(prompts * 2), tmp_path / "in.parquet")
    result = cli("dedup", tmp_path / "in.parquet", "-o", tmp_path / "o.parquet", "--explain", "--json")
    assert result.exit_code == 0, result.stderr
    stats = json.loads(result.stdout)
    assert [s["stage"] for s in stats["explain"]["cascade"]] == ["propose", "verify"]
    assert stats["explain"]["cascade"][0]["threshold"] == DEFAULT_PROPOSE and stats["graph_reused"] is False
    again = json.loads(cli("dedup", tmp_path / "in.parquet", "-o", tmp_path / "o2.parquet", "--json").stdout)
    assert again["graph_reused"] is True and again["embedded"] == 0
    assert io.read_table(tmp_path / "o.parquet").equals(io.read_table(tmp_path / "o2.parquet"))
    alone = json.loads(cli("dedup", tmp_path / "in.parquet", "-o", tmp_path / "o3.parquet", "--verify", "none",
                           "--threshold", "0.95", "--json").stdout)
    assert "verifier" not in alone and alone["embedded"] == alone["unique_texts"] == 6  # static vectors only
    assert alone["exact_duplicates"] == stats["exact_duplicates"]


@pytest.fixture(scope="module")
def alpaca_answer_pairs(shared_data):
    """AlpacaEval pairs: for 100 instructions, six models' answers (chosen) each against the same reference
    answer (rejected), so pairs share their prompt and rejected response and differ in the chosen one; plus
    40 planted copies with two letters swapped in the chosen response."""
    import gzip

    from prefcli.pairs import build_pairs, user_prompt

    answers: dict[str, dict[str, tuple[str, str]]] = {}
    path = shared_data / "alpaca-eval-annotations" / "annotations_compact.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if not rec["output_1"].strip() or not rec["output_2"].strip():
                continue
            if rec["instruction"] not in answers and len(answers) == 100:
                continue
            models = answers.setdefault(rec["instruction"], {})
            if len(models) < 6:
                models.setdefault(rec["generator_2"], (rec["output_2"], rec["output_1"]))
    prompts, chosen, rejected = [], [], []
    for instruction, models in answers.items():
        for answer, reference in models.values():
            prompts.append(user_prompt(instruction))
            chosen.append(answer)
            rejected.append(reference)
    n = len(prompts)
    rng = np.random.default_rng(5)
    for i in rng.choice(n, 40, replace=False):
        j = int(rng.integers(1, len(chosen[i]) - 2))
        prompts.append(prompts[i])
        chosen.append(chosen[i][:j] + chosen[i][j + 1] + chosen[i][j] + chosen[i][j + 2:])
        rejected.append(rejected[i])
    return build_pairs(prompts, chosen, rejected, source="alpaca_eval"), n


def test_pair_dedup_links_pairs_only_when_every_part_is_a_duplicate(alpaca_answer_pairs, static, monkeypatch):
    """--on pair on real pairs that share a prompt and a long rejected answer: the whole-pair texts of two
    different answers to one question look alike, so the whole-pair search only proposes. Every planted copy
    (a typo in the chosen answer) is found; every other linked pair has each part at cosine >= threshold on its
    own (recomputed here); and fewer distinct answers are merged than by the whole-pair cosine alone (the static
    model still merges many at 0.92: see BENCHMARKS.md for the cascade and 0.97)."""
    import prefcli.stages.dedup as dd

    table, n = alpaca_answer_pairs
    options = DedupOptions(on="pair", drop=True)
    run = dedup(table, static, options)
    out, aside = run.result.out, run.result.set_aside
    assert out.num_rows + aside.num_rows == table.num_rows > 500
    ids = table.column("pair_id").to_pylist()
    row_of = {pid: i for i, pid in enumerate(ids)}
    removed = {row_of[p] for p in aside.column("pair_id").to_pylist()}
    assert all(i in removed for i in range(n, table.num_rows))  # every planted copy set aside
    graph, first_row = run.graph, run.groups.first_row
    parts = [texts_for(table, part) for part in dd.PAIR_PARTS]
    linked = np.flatnonzero(graph.sim >= options.threshold)
    assert len(linked) >= 40
    for e in linked:  # each part on its own, recomputed
        i, j = first_row[graph.src[e]], first_row[graph.dst[e]]
        for texts in parts:
            if texts[i] != texts[j]:
                a, b = static.encode([texts[i], texts[j]])
                assert float(a @ b) >= options.threshold - 1e-4, (texts[i][:80], texts[j][:80])
    monkeypatch.setattr(dd, "by_parts", lambda graph, *args, **kwargs: graph)  # the whole-pair cosine alone
    whole = dedup(table, static, options).result.set_aside.num_rows
    distinct_merged = len(removed) - (table.num_rows - n)
    # static model, default 0.92: 433 of 600 distinct answers merged by the whole-pair cosine, 311 by parts
    assert whole - (table.num_rows - n) >= distinct_merged + 100, (whole, len(removed))


def test_static_vectors_do_not_depend_on_the_batch_and_repeats_are_embedded_once(real_table, static):
    """model2vec's batch size only bounds its token-vector gather: the vectors of real prompts are the same bit
    for bit at its default batch (1,024) and at prefcli's (STATIC_BATCH). encode_distinct gives each distinct
    text one row, and those rows, spread back over the texts, are encode's."""
    from prefcli.models.embed import STATIC_BATCH

    table, _, _ = real_table
    prompts = texts_for(table, "prompt")
    model = static.embedder.model
    default = np.asarray(model.encode(prompts, batch_size=1024), np.float32)
    small = np.asarray(model.encode(prompts, batch_size=STATIC_BATCH), np.float32)
    assert STATIC_BATCH < 1024 and len(prompts) > STATIC_BATCH * 4
    np.testing.assert_array_equal(default, small)
    repeated = prompts[:300] + prompts[:100] + prompts[50:150]
    vectors, row_of = static.encode_distinct(repeated)
    assert len(vectors) == len(set(text_keys(repeated))) <= 300
    np.testing.assert_array_equal(vectors[row_of], static.encode(repeated))
    assert row_of[300] == row_of[0] and row_of[400] == row_of[50]


def test_vectors_spilled_to_a_temporary_file_give_the_same_dedup(real_table, alpaca_answer_pairs, static, monkeypatch):
    """dedup keeps the searched vectors in an unnamed temporary file and reads them back a chunk at a time:
    kept and set-aside rows, and every dedup_ column, are the same as with the vectors held in memory, for the
    prompt view and the pair view; and with no writable temporary directory it keeps them in memory."""
    import tempfile

    import prefcli.models.index as index
    import prefcli.stages.dedup as dd

    reads = []
    original = index.SpilledVectors.__getitem__
    monkeypatch.setattr(index.SpilledVectors, "__getitem__", lambda self, rows: reads.append(1) or original(self, rows))
    prompt_table = real_table[0]
    pair_table = alpaca_answer_pairs[0]
    cases = [(prompt_table, DedupOptions(drop=True)), (pair_table, DedupOptions(on="pair", drop=True))]
    spilled_runs = [dedup(table, static, options).result for table, options in cases]
    assert reads  # the search and the similarities read the spilled rows
    with monkeypatch.context() as m:
        m.setattr(dd, "spilled_vectors", lambda model, texts: model.encode(texts))
        m.setattr(dd, "distinct_vectors", lambda model, texts: model.encode_distinct(texts))
        in_memory = [dedup(table, static, options).result for table, options in cases]
    for a, b in zip(spilled_runs, in_memory):
        assert a.out.equals(b.out) and a.set_aside.equals(b.set_aside)
        assert a.set_aside.num_rows > 0
    vectors = static.encode(texts_for(prompt_table, "prompt")[:500])
    spill = index.SpilledVectors(vectors)
    np.testing.assert_array_equal(spill[10:400], vectors[10:400])
    np.testing.assert_array_equal(spill[np.array([499, 3, 3])], vectors[[499, 3, 3]])
    assert len(spill) == 500 and spill.shape == vectors.shape
    spill.close()

    def no_temporary_files(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_temporary_files)
    assert index.spilled(vectors) is vectors


def test_vectors_written_chunk_by_chunk_are_the_encoded_vectors(real_table, static, monkeypatch):
    """encode(spill=True) writes each chunk's vectors to the temporary file as it is computed: the same rows as
    encode, read back by slices, single rows and scattered rows (each run of consecutive rows one read); a file
    that cannot be written
    from the start, or that fails midway (a full disk), keeps the rows in memory, the same rows."""
    import tempfile

    import prefcli.models.embed as embed
    import prefcli.models.index as index

    texts = texts_for(real_table[0], "prompt")[:700] * 2  # repeats: one vector per distinct text, spread back
    expected = static.encode(texts)
    monkeypatch.setattr(embed, "TEXT_CHUNK", 128)
    appended = []
    original = index.SpilledVectors.append
    monkeypatch.setattr(index.SpilledVectors, "append", lambda self, rows: appended.append(len(rows))
                        or original(self, rows))
    distinct, row_of = static.encode_distinct(texts, spill=True)
    assert isinstance(distinct, index.SpilledVectors) and max(appended) <= 128 and len(appended) > 3
    rows = np.random.default_rng(0).integers(0, len(texts), 1000)
    np.testing.assert_array_equal(distinct[row_of[rows]], expected[rows])
    np.testing.assert_array_equal(distinct[5:300], static.encode_distinct(texts)[0][5:300])
    spilled = static.encode(texts, spill=True)
    assert isinstance(spilled, index.SpilledVectors)
    np.testing.assert_array_equal(spilled[np.arange(len(texts))], expected)
    np.testing.assert_array_equal(spilled[-1], expected[-1])
    np.testing.assert_array_equal(spilled[np.array([3, 4, 5, 9, 8, 8, 0])], expected[[3, 4, 5, 9, 8, 8, 0]])
    assert spilled[np.zeros(0, np.int64)].shape == (0, expected.shape[1])
    with pytest.raises(IndexError):
        spilled[np.array([len(texts)])]

    def full_disk(self, rows):
        if len(self):
            raise OSError(28, "No space left on device")
        original(self, rows)

    monkeypatch.setattr(index.SpilledVectors, "append", full_disk)
    kept, row_of = static.encode_distinct(texts, spill=True)
    assert isinstance(kept, np.ndarray)
    np.testing.assert_array_equal(kept[row_of], expected)

    def no_temporary_files(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_temporary_files)
    kept, row_of = static.encode_distinct(texts, spill=True)
    assert isinstance(kept, np.ndarray)
    np.testing.assert_array_equal(kept[row_of], expected)


def test_ivf_lists_sized_once_hold_what_faiss_add_builds(real_table, static, monkeypatch):
    """The CPU IVF index's lists are allocated once at their final size (faiss's add doubles them as they
    grow): every list holds the same ids in the same order with the same vectors as faiss's own add, so the
    searches give the same neighbours; from spilled vectors too, over several add chunks."""
    import faiss
    from faiss.contrib.inspect_tools import get_invlist

    import prefcli.models.index as index

    texts = texts_for(real_table[0], "prompt") + texts_for(real_table[0], "chosen")
    vectors = np.asarray(static.encode(texts), np.float32)
    monkeypatch.setattr(index, "ADD_CHUNK", 333)
    built = index.NeighbourIndex(index.SpilledVectors(vectors), device="cpu", exact_max=0)
    assert built.kind.startswith("ivf") and built.index.ntotal == len(vectors) >= 2000
    reference = faiss.clone_index(built.index)
    reference.reset()
    for start in range(0, len(vectors), 333):
        reference.add(vectors[start:start + 333])
    assert reference.ntotal == built.index.ntotal
    for list_no in range(built.index.nlist):
        ids, codes = get_invlist(built.index.invlists, list_no)
        ref_ids, ref_codes = get_invlist(reference.invlists, list_no)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(codes, ref_codes)
    sims, ids = built.search(vectors[:500], 10)
    reference.nprobe = built.index.nprobe
    ref_sims, ref_ids = reference.search(vectors[:500], 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(sims, ref_sims)
