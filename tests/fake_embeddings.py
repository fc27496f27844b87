"""A real HTTP server on loopback speaking OpenAI's `/v1/embeddings`, for tests of API candidates.

Vectors are feature hashes of the text's words (and of each CJK character), so retrieval through it works and
is deterministic; `usage.prompt_tokens` counts those features. `failures` queues answers to give instead of a
good one: "429", "500", "timeout", "dim" (a vector of the wrong size), "malformed" (not JSON), "count" (one
embedding short). Like Voyage's API, a request with `input_type` embeds each text behind that word, so queries and
passages asked for with different input types get different vectors; `bodies` keeps each request's fields but
`input`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_FEATURE = re.compile(r"[a-z0-9]+|[\u3400-\u9fff]")


def features(text: str) -> list[str]:
    return _FEATURE.findall(text.lower())


def embed(text: str, dim: int) -> list[float]:
    vec = [0.0] * dim
    for word in features(text):
        h = int(hashlib.md5(word.encode()).hexdigest(), 16)
        vec[h % dim] += 1.0 if (h >> 64) % 2 else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


class FakeEmbeddings:
    """The server; `url` is its base URL (…/v1). Use as a context manager or call close()."""

    def __init__(self, *, key: str = "sk-test-secret-0123456789", dim: int = 64, slow_s: float = 3.0) -> None:
        self.key, self.dim, self.slow_s = key, dim, slow_s
        self.failures: list[str] = []
        self.inputs: list[list[str]] = []
        self.bodies: list[dict] = []
        self.calls = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake.lock:
                    fake.calls += 1
                    failure = fake.failures.pop(0) if fake.failures else None
                if not self.path.endswith("/embeddings"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                given = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if given != fake.key:
                    # Worst case on purpose: the endpoint echoes the key it got.
                    return self._send(401, {"error": {"message": f"Incorrect API key provided: {given}"}})
                if failure == "429":
                    return self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})
                if failure == "500":
                    return self._send(500, {"error": {"message": "server error"}})
                if failure == "timeout":
                    time.sleep(fake.slow_s)
                    return self._send(500, {"error": {"message": "too late"}})
                if failure == "malformed":
                    raw = b'{"data": [{"embedding": [0.1, '
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return None
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                dim = body.get("dimensions") or fake.dim
                if failure == "dim":
                    dim += 1
                with fake.lock:
                    fake.inputs.append(list(texts))
                    fake.bodies.append({k: v for k, v in body.items() if k != "input"})
                kind = f"{body['input_type']} " if body.get("input_type") else ""
                data = [
                    {"object": "embedding", "index": i, "embedding": embed(kind + t, dim)} for i, t in enumerate(texts)
                ]
                if failure == "count":
                    data = data[:-1]
                data.reverse()  # the client must order by index
                tokens = sum(max(len(features(t)), 1) for t in texts)
                return self._send(
                    200,
                    {
                        "object": "list",
                        "data": data,
                        "model": body.get("model"),
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                    },
                )

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def texts_embedded(self) -> list[str]:
        return [t for batch in self.inputs for t in batch]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeEmbeddings:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
