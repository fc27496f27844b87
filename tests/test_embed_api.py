"""The API embedder against a real OpenAI-compatible server on loopback: retries, bad answers, the cache, the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_embeddings import FakeEmbeddings

from runner.embed_api import ApiEmbedder, ApiError, EmbeddingCache, apportion, latency_summary
from runner.memo import api_embedding_key
from runner.spec import ApiModelSpec

KEY_ENV = "EMBX_TEST_API_KEY"
KEY = "sk-test-secret-0123456789"
TEXTS = [f"passage number {i} about blood pressure and salt" for i in range(10)]


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeEmbeddings(key=KEY, slow_s=2.0) as server:
        yield server


def _embedder(fake: FakeEmbeddings, cache: Path, **fields) -> ApiEmbedder:
    api = ApiModelSpec(
        base_url=fake.url,
        model="fake-embedding",
        api_key_env=KEY_ENV,
        **{"batch_size": 4, "max_retries": 1, "timeout_s": 1.0, "concurrency": 2, **fields},
    )
    return ApiEmbedder(api, cache=EmbeddingCache(cache / "api.sqlite"), model_key=api_embedding_key(api))


def test_vectors_come_back_in_input_order_normalised_and_cached(fake, tmp_path):
    embedder = _embedder(fake, tmp_path)
    vectors = embedder.encode(TEXTS + TEXTS[:2], normalize_embeddings=True)
    assert vectors.shape == (12, 64)
    assert (vectors[0] == vectors[10]).all() and not (vectors[0] == vectors[1]).all()
    assert float(vectors.norm(dim=1).min()) == pytest.approx(1.0, abs=1e-5)
    assert sorted(fake.texts_embedded()) == sorted(TEXTS)  # each distinct text asked once
    assert embedder.stats.requests == 3 and embedder.stats.texts == 10 and embedder.stats.tokens > 0
    again = _embedder(fake, tmp_path)  # another process: the SQLite cache answers
    calls = fake.calls
    assert (again.encode(TEXTS) == embedder.encode(TEXTS)).all()
    assert fake.calls == calls and again.stats.cached == 10


def test_429_is_retried_and_answered(fake, tmp_path):
    fake.failures = ["429"]
    embedder = _embedder(fake, tmp_path, batch_size=16)
    assert embedder.encode(TEXTS).shape == (10, 64)
    assert fake.calls == 2


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ("timeout", "timeout: no answer within 1 s"),
        ("500", "HTTP 500 after 1 retries: server error"),
        ("dim", "answered vectors of 65 dimensions, not the 64"),
        ("malformed", "malformed answer"),
        ("count", "malformed answer: 9 embeddings for 10 texts"),
    ],
)
def test_bad_answers_are_named(fake, tmp_path, failure, message):
    fake.failures = [failure] * 4
    embedder = _embedder(fake, tmp_path, batch_size=16, dimensions=64 if failure == "dim" else None)
    with pytest.raises(ApiError, match=message):
        embedder.encode(TEXTS)


def test_a_rerun_asks_only_for_texts_not_yet_cached(fake, tmp_path):
    fake.failures = ["pass", "500", "500"]  # the first request answers, the second fails after its retry
    first = _embedder(fake, tmp_path, concurrency=1, batch_size=5)
    with pytest.raises(ApiError):
        first.encode(TEXTS)
    answered = set(fake.texts_embedded())
    assert len(answered) == 5
    fake.inputs.clear()
    second = _embedder(fake, tmp_path, concurrency=1, batch_size=5)
    assert second.encode(TEXTS).shape == (10, 64)
    assert set(fake.texts_embedded()) == set(TEXTS) - answered


def test_a_refused_key_is_named_and_never_shown(fake, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-42")
    embedder = _embedder(fake, tmp_path)
    with pytest.raises(ApiError) as caught:
        embedder.encode(TEXTS)
    assert f"refused the API key from {KEY_ENV} (HTTP 401)" in str(caught.value)
    assert "sk-wrong-key-42" not in str(caught.value)  # the fake endpoint echoes it; embx scrubs it
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ApiError, match=f"environment variable {KEY_ENV} is not set"):
        _embedder(fake, tmp_path)


def test_unreachable_endpoint_fails_fast(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv(KEY_ENV, KEY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = ApiModelSpec(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key_env=KEY_ENV, max_retries=0)
    embedder = ApiEmbedder(api, cache=EmbeddingCache(tmp_path / "c.sqlite"), model_key=api_embedding_key(api))
    with pytest.raises(ApiError, match="connection failed"):
        embedder.encode(["x"])


def test_token_apportioning_and_latency_percentiles():
    assert apportion(["ab", "abcdef"], 8) == [2.0, 6.0]
    assert apportion(["abcd", "abcdefgh"], None) == [1.0, 2.0]  # no usage: chars / 4
    assert latency_summary([0.1, 0.2, 0.3, 0.4]) == {"p50_ms": 200.0, "p95_ms": 400.0}
    assert latency_summary([]) == {"p50_ms": None, "p95_ms": None}


def test_the_cache_key_ignores_the_key_and_price_but_not_the_endpoint_or_dimensions():
    base = ApiModelSpec(base_url="https://user:pw@api.example.com/v1/", model="m", api_key_env=None)
    same = ApiModelSpec(base_url="https://api.example.com/v1", model="m", api_key_env=None, price_per_million_tokens=9)
    assert api_embedding_key(base) == api_embedding_key(same)
    assert api_embedding_key(base) != api_embedding_key(base.model_copy(update={"dimensions": 256}))
    assert api_embedding_key(base) != api_embedding_key(base.model_copy(update={"base_url": "https://other/v1"}))


def test_queries_and_passages_carry_their_own_request_fields_and_are_cached_apart(fake, tmp_path):
    sides = {"query_extra_body": {"input_type": "query"}, "passage_extra_body": {"input_type": "document"}}
    embedder = _embedder(fake, tmp_path, **sides)
    text = ["blood pressure and salt"]
    as_query = embedder.encode(text, task="query")
    as_passage = embedder.encode(text, task="document")
    plain = embedder.encode(text)  # no side: no extra fields
    assert [b.get("input_type") for b in fake.bodies] == ["query", "document", None]
    assert not (as_query == as_passage).all() and not (as_query == plain).all()
    assert embedder.tokens(text, task="query")[0] is not None and embedder.cached(text, task="document") == 1
    calls = fake.calls
    again = _embedder(fake, tmp_path, **sides)  # each side's vector comes back from the cache, not the other's
    assert (again.encode(text, task="query") == as_query).all()
    assert (again.encode(text, task="document") == as_passage).all()
    assert fake.calls == calls


def test_extra_request_fields_change_the_store_name_and_cannot_replace_embx_fields():
    from runner.api_adapter import api_identity

    api = ApiModelSpec(model="voyage-3", base_url="https://api.voyageai.com/v1", api_key_env="VOYAGE_API_KEY")
    typed = api.model_copy(update={"query_extra_body": {"input_type": "query"}})
    assert api_identity(api) == "api:voyage-3@https://api.voyageai.com/v1"
    assert api_identity(typed).startswith(api_identity(api) + "~") and api_identity(typed) != api_identity(
        api.model_copy(update={"query_extra_body": {"input_type": "document"}})
    )
    with pytest.raises(ValueError, match="dimensions: embx sets model, input, encoding_format and dimensions"):
        ApiModelSpec(model="m", api_key_env=None, passage_extra_body={"dimensions": 256})
