"""train.query_adapter.api: a query adapter over an API model's cached embeddings, against a real loopback server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import dump_yaml, spec_data
from fake_embeddings import FakeEmbeddings, embed
from helpers import cli, query

from runner.spec import SpecError, load_spec

KEY_ENV = "EMBX_TEST_API_KEY"
KEY = "sk-test-secret-0123456789"


def _api(url: str) -> dict:
    return {"base_url": url, "model": "fake-embedding", "api_key_env": KEY_ENV, "batch_size": 16, "max_retries": 0}


def _spec(tiny_model, tiny_beir, path, url: str, **adapter) -> dict:
    data = spec_data(
        tiny_model,
        tiny_beir,
        name="tiny-api-adapter",
        select={"candidates": [{"label": "api", "api": _api(url)}], "throughput_sample": 8},
        train={"query_adapter": {"epochs": 4, "learning_rate": 1e-2, **adapter}, "early_stopping": None},
        negatives={"mode": "hard", "per_query": 1},
    )
    return dump_yaml(data, path)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, tiny_model, tiny_beir):
    """`embx run` before the corpus is cached (refused), `embx select`, then the run: what each sent and recorded."""
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, KEY)
    root = tmp_path_factory.mktemp("api-adapter")
    mp.chdir(root)
    db = root / "results.duckdb"
    fake = FakeEmbeddings(key=KEY, dim=48)
    spec = _spec(tiny_model, tiny_beir, root / "spec.yaml", fake.url, api=_api(fake.url))
    early = cli("run", spec, "--db", db)
    calls_before_select = fake.calls
    assert cli("select", spec, "--db", db).exit_code == 0
    sent_by_select = len(fake.texts_embedded())
    result = cli("run", spec, "--db", db)
    out = {"root": root, "db": db, "spec": spec, "fake": fake, "early": early, "result": result}
    out |= {"calls_before_select": calls_before_select, "sent_by_run": fake.texts_embedded()[sent_by_select:]}
    yield out
    fake.close()
    mp.undo()


def _run(db, status: str = "ok") -> tuple[str, dict]:
    run_id, info = query(
        db, f"SELECT run_id, info FROM runs WHERE variant = 'base' AND status = '{status}' ORDER BY started_at"
    )[-1]
    return run_id, json.loads(info)


def test_without_the_corpus_in_the_cache_the_run_is_refused_before_the_endpoint_is_asked(adapted):
    early = adapted["early"]
    assert early.exit_code == 2, early.output
    assert "no cached embedding" in early.output and "embx select" in early.output
    assert "api-embeddings.sqlite" in early.output and "train.query_adapter.api" in early.output
    assert adapted["calls_before_select"] == 0
    _, info = _run(adapted["db"], status="failed")
    assert "train" not in info  # refused before training


def test_the_adapter_trains_over_the_cached_corpus_without_sending_a_passage_again(adapted, tiny_beir):
    result = adapted["result"]
    assert result.exit_code == 0, result.output
    assert "API model fake-embedding" in result.output and "no re-indexing" in result.output
    corpus = {json.loads(line)["text"] for line in (tiny_beir / "corpus.jsonl").read_text().splitlines()}
    sent = adapted["sent_by_run"]
    assert sent, "the training queries are embedded through the endpoint"
    assert not corpus & set(sent), "no corpus passage is sent to the endpoint again"
    _, info = _run(adapted["db"])
    assert info["model"]["api"] == "fake-embedding" and info["model"]["base"].startswith("api:fake-embedding@")
    assert info["train"]["loop"] == "query-adapter" and info["train"]["adapter_shift"] > 0
    assert info["negatives"]["mode"] == "hard"  # mined with the API model's vectors


def test_the_saved_adapter_moves_queries_and_leaves_passage_vectors_as_the_endpoint_gave_them(adapted):
    from safetensors.torch import load_file

    from runner.api_adapter import AdaptedApiEmbedder
    from runner.embed_api import api_cache_path
    from runner.models import documents_are_base

    _, info = _run(adapted["db"])
    folder = info["saved_model"]["path"]
    settings = json.loads((adapted["root"] / folder / "embx_api_adapter.json").read_text())
    assert KEY not in json.dumps(settings) and settings["api"]["api_key_env"] == KEY_ENV
    model = AdaptedApiEmbedder.load(folder, cache=api_cache_path(adapted["root"] / "runs"))
    texts = ["what causes chest pain", "a low sodium diet lowers blood pressure"]
    plain = torch.tensor([embed(t, 48) for t in texts])
    assert torch.allclose(model.encode(texts, task="document"), plain, atol=1e-6)
    assert documents_are_base(model)  # scoring reuses the API base's passage vectors, kept base or tuned
    weight = load_file(f"{folder}/adapter.safetensors")["weight"]
    expected = torch.nn.functional.normalize(plain @ weight.T, dim=-1)
    queries = model.encode(texts, task="query")
    assert torch.allclose(queries, expected, atol=1e-5)
    assert not torch.allclose(queries, plain, atol=1e-3)
    card = (Path(folder) / "README.md").read_text()
    assert "fake-embedding" in card and "no re-indexing" in card
    code = re.search(r"```python\n(.*?)```", card, flags=re.S).group(1)
    code = code.replace('"path/to/this/folder"', repr(folder))
    code = code.replace('"api-embeddings.sqlite"', repr(str(api_cache_path(adapted["root"] / "runs"))))
    scope: dict = {}
    exec(code, scope)  # the card's usage, as a user runs it
    assert torch.allclose(scope["q"], model.encode(["your question"], task="query"))


def test_the_adapter_is_scored_on_the_test_split_against_the_api_base(adapted):
    run_id, _ = _run(adapted["db"])
    sql = "SELECT stage, value FROM metrics WHERE run_id = ? AND split = 'test' AND name = 'ndcg@10'"
    rows = dict(query(adapted["db"], sql, [run_id]))
    assert set(rows) == {"base", "tuned"} and rows["base"] != rows["tuned"]


def test_tools_that_need_local_weights_refuse_the_saved_adapter_by_name(adapted, tmp_path):
    run_id, _ = _run(adapted["db"])
    result = cli("export", run_id, "-o", tmp_path / "out", "--db", adapted["db"])
    assert result.exit_code == 2, result.output
    assert "query adapter over an API model" in result.output
    assert not (tmp_path / "out").exists()


def test_select_tune_trains_the_adapter_over_the_chosen_api_candidate(adapted, tiny_model, tiny_beir, tmp_path):
    url = adapted["fake"].url
    spec = _spec(tiny_model, tiny_beir, adapted["root"] / "tune.yaml", url, epochs=2)
    result = cli("select", spec, "--db", adapted["db"], "--tune", "--candidate", "api")
    assert result.exit_code == 0, result.output
    run_id, info = _run(adapted["db"])
    assert info["selected_by"]["candidate"] == "api" and info["model"]["api"] == "fake-embedding"
    assert info["train"]["epochs_run"] == 2


def test_an_api_adapter_with_mteb_is_refused_by_name(tiny_model, tiny_beir, tmp_path):
    data = spec_data(
        tiny_model,
        tiny_beir,
        train={"query_adapter": {"api": _api("http://127.0.0.1:9/v1")}},
        eval={"mteb": ["NFCorpus"]},
    )
    with pytest.raises(SpecError, match=r"does not combine with eval.mteb"):
        load_spec(dump_yaml(data, tmp_path / "s.yaml"))


def test_the_report_names_the_api_model_as_the_base(adapted, tmp_path):
    out = tmp_path / "report.html"
    result = cli("report", "--db", adapted["db"], "-o", out, "--experiment", "tiny-api-adapter")
    assert result.exit_code == 0, result.output
    assert "api:fake-embedding@" in out.read_text()


def test_the_adapted_model_asks_the_endpoint_with_each_sides_request_fields(tmp_path, monkeypatch):
    from runner.api_adapter import AdaptedApiEmbedder
    from runner.embed_api import ApiEmbedder, EmbeddingCache
    from runner.memo import api_embedding_key
    from runner.spec import ApiModelSpec

    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeEmbeddings(key=KEY, dim=48) as fake:
        api = ApiModelSpec(
            **_api(fake.url), query_extra_body={"input_type": "query"}, passage_extra_body={"input_type": "document"}
        )
        base = ApiEmbedder(api, cache=EmbeddingCache(tmp_path / "c.sqlite"), model_key=api_embedding_key(api))
        model = AdaptedApiEmbedder(base, torch.nn.Linear(48, 48, bias=False), normalize=True)
        model.encode(["salt"], task="query")
        passage = model.encode(["salt"], task="document")
        assert [body["input_type"] for body in fake.bodies] == ["query", "document"]
    assert torch.allclose(passage, torch.tensor([embed("document salt", 48)]), atol=1e-6)
