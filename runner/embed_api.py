"""Embedding models behind an OpenAI-compatible ``/v1/embeddings`` endpoint, with a content-addressed cache.

:class:`ApiEmbedder` answers the part of ``SentenceTransformer``'s interface that embx's evaluation uses
(``device`` and ``encode``), so an API model is scored by the same code as a local one. Requests go through the
official ``openai`` client, whose own retries (exponential backoff, honouring Retry-After) cover timeouts, 429
and 5xx answers; answers are checked (count, dimension, finite numbers) before anything is kept.

Every vector is kept in :class:`EmbeddingCache`, an SQLite file keyed by the endpoint identity and the sha256 of
the exact text sent, committed after every answer: a rerun, another candidate list or an interrupted run asks
the endpoint only for texts it has not embedded yet, so no text is paid for twice. The API key is read from
its environment variable when the client is made and is never stored, logged or cached; error messages are
scrubbed of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from runner.spec import ApiModelSpec

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4.0
"""Estimate used only when an endpoint's answer carries no token usage."""

API_CACHE_FILE = "api-embeddings.sqlite"
"""The API embedding cache, under ``output.dir/embeddings`` (beside the local models' corpus embeddings)."""

API_ADAPTER_FILE = "embx_api_adapter.json"
"""Marks a saved query adapter over an API model (:mod:`runner.api_adapter`): the endpoint's settings."""


def api_adapter_refusal(folder: str | Path) -> str | None:
    """Why `folder` cannot serve where local weights are needed (a saved API adapter), or None when it can."""
    if not (Path(folder) / API_ADAPTER_FILE).is_file():
        return None
    return (
        f"{folder} is a query adapter over an API model (train.query_adapter.api), not a model with weights: it "
        "embeds through its endpoint (runner.api_adapter.AdaptedApiEmbedder.load); embx export, index and push, and "
        "select candidates given by run, take models with local weights"
    )


def api_cache_path(output_dir: str | Path) -> Path:
    """The API embedding cache of a spec's ``output.dir``."""
    return Path(output_dir) / "embeddings" / API_CACHE_FILE


class ApiError(ValueError):
    """An endpoint failure, already worded for the user (and scrubbed of the API key)."""


def read_api_key(env: str | None, *, field: str, placeholder: str = "no-key") -> str:
    """The API key from the environment variable `env` (`placeholder` when the endpoint needs none: env None).

    Args:
        env: The variable's name, from the spec.
        field: The spec field that names it, for the message.
        placeholder: What to send to an endpoint that takes no key.

    Raises:
        ApiError: When the variable is not set.

    """
    if env is None:
        return placeholder
    value = os.environ.get(env)
    if not value:
        raise ApiError(
            f"{field}: environment variable {env} is not set; set it to the endpoint's API key, "
            "or set api_key_env: null for an endpoint that needs none"
        )
    return value


def text_digest(text: str) -> str:
    """Content address of one text as sent (prefix included)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class RequestStats:
    """What the endpoint was asked during one evaluation.

    Attributes:
        requests: Requests answered.
        texts: Texts embedded by the endpoint (not from the cache).
        cached: Texts answered from the cache.
        tokens: Input tokens the endpoint counted (its ``usage``), i.e. what was paid for.
        latencies: Seconds per answered request.
        seconds: Wall time of the encode calls that asked the endpoint.

    """

    requests: int = 0
    texts: int = 0
    cached: int = 0
    tokens: float = 0.0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0


class EmbeddingCache:
    """Vectors by (endpoint key, text digest) in one SQLite file, with each text's token count and a request log.

    Args:
        path: The SQLite file (created with its folder).

    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS vectors (model_key TEXT NOT NULL, digest TEXT NOT NULL, tokens REAL,"
                " dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model_key, digest))"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS requests (model_key TEXT NOT NULL, at REAL NOT NULL, texts INTEGER,"
                " tokens REAL, seconds REAL)"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=60)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            with con:
                yield con
        finally:
            con.close()

    def get(self, model_key: str, digests: list[str]) -> dict[str, tuple[list[float], float | None]]:
        """Cached (vector, tokens) by digest, for the digests present."""
        import numpy as np

        out: dict[str, tuple[Any, float | None]] = {}
        with self._connect() as con:
            for start in range(0, len(digests), 500):
                part = digests[start : start + 500]
                marks = ",".join("?" for _ in part)
                rows = con.execute(
                    f"SELECT digest, tokens, vector FROM vectors WHERE model_key = ? AND digest IN ({marks})",
                    [model_key, *part],
                ).fetchall()
                for digest, tokens, blob in rows:
                    out[digest] = (np.frombuffer(blob, dtype=np.float32), tokens)
        return out

    def put(self, model_key: str, rows: list[tuple[str, float | None, Any]], *, seconds: float) -> None:
        """Keep one answer's vectors ((digest, tokens, float32 vector) rows) and log the request, in one commit."""
        with self._connect() as con:
            con.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?)",
                [(model_key, d, t, len(v), v.astype("float32").tobytes()) for d, t, v in rows],
            )
            tokens = sum(t or 0.0 for _, t, _ in rows)
            con.execute(
                "INSERT INTO requests VALUES (?, ?, ?, ?, ?)", (model_key, time.time(), len(rows), tokens, seconds)
            )

    def request_log(self, model_key: str) -> list[tuple[int, float, float]]:
        """(texts, tokens, seconds) of every request ever answered for this endpoint key."""
        with self._connect() as con:
            return con.execute(
                "SELECT texts, tokens, seconds FROM requests WHERE model_key = ? ORDER BY at", [model_key]
            ).fetchall()


class ApiEmbedder:
    """An API embedding model with the ``device``/``encode`` interface embx's evaluation calls.

    Args:
        api: The candidate's `api:` section.
        cache: The embedding cache.
        model_key: The endpoint identity in the cache (:func:`runner.memo.api_embedding_key`).

    """

    def __init__(self, api: ApiModelSpec, *, cache: EmbeddingCache, model_key: str) -> None:
        import torch

        self.api, self.cache, self.model_key = api, cache, model_key
        self.device = torch.device("cpu")
        self.stats = RequestStats()
        self.dimension: int | None = api.dimensions
        self._key = read_api_key(api.api_key_env, field="api.api_key_env")
        self._client: Any = None

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self.api.api_key_env is not None else text

    @property
    def client(self) -> Any:
        """The ``openai`` client (made on first use; its own retries and timeout from the spec)."""
        if self._client is None:
            import openai

            self._client = openai.OpenAI(
                base_url=self.api.base_url,
                api_key=self._key,
                timeout=self.api.timeout_s,
                max_retries=self.api.max_retries,
            )
        return self._client

    def encode(
        self,
        sentences: list[str],
        *,
        batch_size: int | None = None,
        convert_to_tensor: bool = True,
        normalize_embeddings: bool = False,
        show_progress_bar: bool = False,
        task: str | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """Embed texts: cached ones from the cache, the rest from the endpoint (``api.batch_size`` per request).

        `batch_size` and `show_progress_bar` belong to the local-model interface and are ignored (the endpoint's
        batching is the spec's); the result is an fp32 tensor in input order. `task` ("query", "document") picks
        the request fields of that side (``api.query_extra_body``, ``api.passage_extra_body``).

        Raises:
            ApiError: When the endpoint fails after its retries or answers something unusable.

        """
        import numpy as np
        import torch

        started = time.perf_counter()
        body = self.extra_body(task)
        digests = [self.digest(t, body) for t in sentences]
        found = self.cache.get(self.model_key, sorted(set(digests)))
        self.stats.cached += sum(1 for d in digests if d in found)
        missing: dict[str, str] = {}
        for digest, text in zip(digests, sentences):
            if digest not in found:
                missing.setdefault(digest, text)
        if missing:
            found.update(self._fetch(missing, body=body))
            self.stats.seconds += time.perf_counter() - started
        vectors = np.stack([found[d][0] for d in digests]).astype(np.float32)
        self._check_dimension(vectors.shape[1])
        out = torch.from_numpy(vectors)
        if normalize_embeddings:
            out = torch.nn.functional.normalize(out, dim=1)
        return out

    def extra_body(self, task: str | None) -> dict[str, Any] | None:
        """The request fields the spec adds for `task`'s side: "query" or "document" (passages); None: none."""
        if task == "query":
            return self.api.query_extra_body
        return self.api.passage_extra_body if task == "document" else None

    @staticmethod
    def digest(text: str, body: dict[str, Any] | None) -> str:
        """The cache address of `text` embedded with the request fields `body` (the text's own digest if none)."""
        return text_digest(text if not body else json.dumps(body, sort_keys=True) + "\n" + text)

    def cached(self, texts: list[str], *, task: str | None = None) -> int:
        """How many of the distinct `texts` the cache holds a vector for (nothing is sent to the endpoint)."""
        body = self.extra_body(task)
        return len(self.cache.get(self.model_key, sorted({self.digest(t, body) for t in texts})))

    def parameters(self) -> Iterator[Any]:
        """None: an API model has no local weights (the interface of a torch module, for weight fingerprints)."""
        return iter(())

    def tokens(self, texts: list[str], *, task: str | None = None) -> list[float | None]:
        """Input tokens of each text as the endpoint counted them (None for a text never embedded)."""
        body = self.extra_body(task)
        digests = [self.digest(t, body) for t in texts]
        found = self.cache.get(self.model_key, sorted(set(digests)))
        return [found[d][1] if d in found else None for d in digests]

    def _check_dimension(self, dim: int) -> None:
        if self.dimension is None:
            self.dimension = dim
        elif dim != self.dimension:
            expected = "asked for" if self.api.dimensions else "of its earlier answers"
            raise ApiError(
                f"{self.api.model} at {self.api.base_url}: answered vectors of {dim} dimensions, not the "
                f"{self.dimension} {expected}"
            )

    def _fetch(self, missing: dict[str, str], *, body: dict[str, Any] | None) -> dict[str, tuple[Any, float | None]]:
        """Ask the endpoint for the missing texts, `concurrency` requests at once; each answer is cached at once."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        items = list(missing.items())
        size = self.api.batch_size
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        out: dict[str, tuple[Any, float | None]] = {}
        with ThreadPoolExecutor(max_workers=self.api.concurrency, thread_name_prefix="embx-api") as pool:
            pending = {pool.submit(self._request, [text for _, text in batch], body): batch for batch in batches}
            failure: BaseException | None = None
            for future in as_completed(pending):
                # Answers are kept as they come; after a failure, requests not yet sent are cancelled and those
                # in flight still kept (they are paid for), then the first failure is raised.
                if future.cancelled():
                    continue
                try:
                    vectors, tokens, seconds = future.result()
                except Exception as exc:
                    failure = failure or exc
                    for other in pending:
                        other.cancel()
                    continue
                batch = pending[future]
                rows = [(d, t, v) for (d, _), v, t in zip(batch, vectors, tokens)]
                self.cache.put(self.model_key, rows, seconds=seconds)
                out.update({d: (v, t) for d, t, v in rows})
                self.stats.requests += 1
                self.stats.texts += len(batch)
                self.stats.tokens += sum(t or 0.0 for t in tokens)
                self.stats.latencies.append(seconds)
            if failure is not None:
                raise failure
        return out

    def _request(self, texts: list[str], body: dict[str, Any] | None) -> tuple[list[Any], list[float | None], float]:
        """One request, `body`'s fields added: (vectors in input order, each text's share of its tokens, seconds)."""
        import numpy as np
        import openai

        api = self.api
        where = f"{api.model} at {api.base_url}"
        kwargs: dict[str, Any] = {"model": api.model, "input": texts, "encoding_format": "float"}
        if api.dimensions is not None:
            kwargs["dimensions"] = api.dimensions
        if body:
            kwargs["extra_body"] = body
        started = time.perf_counter()
        try:
            answer = self.client.embeddings.create(**kwargs)
        except openai.AuthenticationError as exc:
            raise ApiError(
                f"{where}: the endpoint refused the API key from {api.api_key_env} (HTTP {exc.status_code}): "
                f"{self._scrub(_detail(exc))}"
            ) from None
        except openai.APITimeoutError:
            raise ApiError(
                f"{where}: timeout: no answer within {api.timeout_s:g} s ({api.max_retries} retries)"
            ) from None
        except openai.APIStatusError as exc:
            raise ApiError(
                f"{where}: HTTP {exc.status_code} after {api.max_retries} retries: {self._scrub(_detail(exc))}"
            ) from None
        except openai.APIConnectionError as exc:
            raise ApiError(
                f"{where}: connection failed ({api.max_retries} retries): {self._scrub(_detail(exc))}"
            ) from None
        except (openai.OpenAIError, ValueError, TypeError, KeyError) as exc:  # unparseable answers
            raise ApiError(f"{where}: malformed answer: {self._scrub(f'{type(exc).__name__}: {exc}')}") from None
        seconds = time.perf_counter() - started
        data = getattr(answer, "data", None)
        if not isinstance(data, list) or len(data) != len(texts):
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise ApiError(f"{where}: malformed answer: {got} embeddings for {len(texts)} texts")
        try:
            ordered = sorted(data, key=lambda item: item.index)
            vectors = [np.asarray(item.embedding, dtype=np.float32) for item in ordered]
        except (AttributeError, TypeError, ValueError) as exc:
            raise ApiError(f"{where}: malformed answer: {type(exc).__name__}: {exc}") from None
        for vector in vectors:
            if vector.ndim != 1 or not vector.size or not np.isfinite(vector).all():
                raise ApiError(f"{where}: malformed answer: an embedding is empty or holds non-numbers")
            self._check_dimension(int(vector.shape[0]))
        usage = getattr(answer, "usage", None)
        counted = getattr(usage, "prompt_tokens", None) or getattr(usage, "total_tokens", None)
        return vectors, apportion(texts, counted), seconds


def apportion(texts: list[str], counted: float | None) -> list[float]:
    """Each text's share of a request's counted tokens, by its length (chars / 4 when the answer has no usage).

    Endpoints count tokens per request, not per text; the share is exact for a one-text request and a close
    estimate otherwise (the truncation and cost columns say so).
    """
    lengths = [max(len(t), 1) for t in texts]
    if not counted:
        return [n / CHARS_PER_TOKEN for n in lengths]
    total = sum(lengths)
    return [counted * n / total for n in lengths]


def _detail(exc: Exception) -> str:
    """The endpoint's own error message (its JSON `error.message` when present), one line, at most 300 chars."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else str(inner)
    text = " ".join(str(message or exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def latency_summary(latencies: list[float]) -> dict[str, float | None]:
    """p50 and p95 of request latencies in milliseconds, nearest-rank (None when nothing was asked)."""
    if not latencies:
        return {"p50_ms": None, "p95_ms": None}
    import numpy as np

    p50, p95 = np.percentile(np.asarray(latencies) * 1000, [50, 95], method="inverted_cdf")
    return {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1)}
