"""train.query_adapter: a linear map on the query side only, trained over the frozen base model's embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import cli, query

from runner.spec import SpecError, load_spec


def _adapter(dim: int, weight: torch.Tensor) -> torch.nn.Linear:
    adapter = torch.nn.Linear(dim, dim, bias=False)
    with torch.no_grad():
        adapter.weight.copy_(weight)
    return adapter


@pytest.fixture
def base(tiny_model):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_model), device="cpu")


TEXTS = ["what causes chest pain", "a low sodium diet lowers blood pressure", "runners need more water"]


def test_the_adapter_moves_queries_and_leaves_passage_embeddings_untouched(base, tmp_path):
    from sentence_transformers import SentenceTransformer

    from runner.evaluate import encode
    from runner.train.query_adapter import adapted_model

    torch.manual_seed(0)
    weight = torch.eye(32) + 0.3 * torch.randn(32, 32)
    model = adapted_model(base, _adapter(32, weight), normalize=True)
    plain = base.encode(TEXTS, convert_to_tensor=True)
    assert torch.allclose(model.encode(TEXTS, task="document", convert_to_tensor=True), plain, atol=1e-6)
    expected = torch.nn.functional.normalize(plain @ weight.T, dim=-1)
    assert torch.allclose(model.encode(TEXTS, task="query", convert_to_tensor=True), expected, atol=1e-5)
    # embx's encoder routes by task, so evaluation, mining and indexing see the adapter on queries only
    routed = encode(model, TEXTS, task="query", batch_size=2, normalize=True, description=None, precision="fp32")
    assert torch.allclose(routed, expected, atol=1e-5)
    documents = encode(model, TEXTS, task="document", batch_size=2, normalize=True, description=None, precision="fp32")
    assert torch.allclose(documents, plain, atol=1e-5)
    # saved and loaded as a plain sentence-transformers model, with encode_query / encode_document
    model.save(str(tmp_path / "m"))
    loaded = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert torch.allclose(loaded.encode_query(TEXTS, convert_to_tensor=True), expected, atol=1e-5)
    assert torch.allclose(loaded.encode_document(TEXTS, convert_to_tensor=True), plain, atol=1e-6)


def test_evaluation_ranks_with_adapted_queries_over_the_base_models_corpus(base):
    from runner.evaluate import CorpusIndex, evaluate
    from runner.spec import ModelSpec
    from runner.train.query_adapter import adapted_model

    corpus = {f"d{i}": text for i, text in enumerate(TEXTS)}
    index = CorpusIndex(corpus)
    spec = ModelSpec(base="tiny")
    common = {"index": index, "queries": {"q": TEXTS[0]}, "qrels": {"q": {"d0": 1}}, "spec": spec}
    common |= {"metrics": ["ndcg@10"], "depth": 3, "batch_size": 4, "precision": "fp32"}
    before = evaluate(base, label="base", **common)
    assert index.encodes == 1
    flipped = adapted_model(base, _adapter(32, -torch.eye(32)), normalize=True)  # every score negated
    after = evaluate(flipped, label="tuned", **common)
    assert index.encodes == 1, "the adapter's passages are the base model's: not encoded again"
    assert list(after.run["q"]) == list(before.run["q"])[::-1]  # the ranking is reversed: queries went through it
    assert after.metrics["ndcg@10"] < before.metrics["ndcg@10"]


def test_a_duplicate_positive_is_masked_not_scored_as_a_negative():
    from runner.train.query_adapter import _info_nce

    torch.manual_seed(0)
    passages = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    adapter = _adapter(8, torch.eye(8))
    # pairs 0 and 1 share positive 0; pair 0's mined negative is passage 0 too (a false negative), pair 1's is 2
    loss = _info_nce(
        adapter, queries, passages, positives=torch.tensor([0, 0]), negatives=[[0], [2]], scale=20, normalize=True
    )
    logits = 20 * queries @ passages.T
    # each query's candidates: its own positive once, and passage 2 (the only true negative)
    expected = torch.stack([-torch.log_softmax(logits[row, [0, 2]], dim=0)[0] for row in range(2)]).mean()
    assert torch.allclose(loss, expected, atol=1e-5)


@pytest.fixture
def adapter_run(write_spec, tmp_path):
    """A finished run of the tiny model with a query adapter: (store, run id, info, printed output)."""
    train = {"query_adapter": {"epochs": 3, "learning_rate": 1e-2}, "early_stopping": None}
    spec = write_spec(train=train, negatives={"mode": "hard", "per_query": 1})
    db = tmp_path / "r.duckdb"
    result = cli("run", spec, "--db", db)
    assert result.exit_code == 0, result.output
    run_id, info = query(db, "SELECT run_id, info FROM runs")[0]
    return db, run_id, json.loads(info), result.output


def test_a_run_trains_only_the_adapter_and_saves_a_router_model(adapter_run, tiny_model):
    from sentence_transformers import SentenceTransformer

    _, _, info, output = adapter_run
    assert "query adapter: test ndcg@10" in output and "no re-indexing" in output
    assert info["train"]["loop"] == "query-adapter" and info["train"]["epochs_run"] == 3
    assert info["train"]["adapter_shift"] > 0
    saved = SentenceTransformer(info["saved_model"]["path"], device="cpu")
    base = SentenceTransformer(str(tiny_model), device="cpu")
    for name, value in base.state_dict().items():  # the base weights did not move
        assert any(torch.equal(value, v) for k, v in saved.state_dict().items() if k.endswith(name.split(".", 1)[1]))
    docs = saved.encode_document(TEXTS, convert_to_tensor=True)
    assert torch.allclose(docs, base.encode(TEXTS, convert_to_tensor=True), atol=1e-6)
    queries = saved.encode_query(TEXTS, convert_to_tensor=True)
    assert not torch.allclose(queries, base.encode(TEXTS, convert_to_tensor=True), atol=1e-4)


def test_the_exported_cards_code_routes_queries_through_the_adapter(adapter_run, tmp_path):
    import re

    from sentence_transformers import SentenceTransformer

    db, run_id, _, _ = adapter_run
    shipped = tmp_path / "shipped"
    result = cli("export", run_id, "-o", shipped, "--format", "sentence-transformers", "--db", db)
    assert result.exit_code == 0, result.output
    (parity,) = query(db, "SELECT parity FROM exports")[0]
    assert json.loads(parity)["ok"]
    code = re.search(r"```python\n(.*?)```", (shipped / "README.md").read_text(), flags=re.S).group(1)
    scope: dict = {}
    exec(code.replace("'path/to/this/folder'", repr(str(shipped))), scope)  # the card's usage, as a user runs it
    model = SentenceTransformer(str(shipped), device="cpu")
    assert torch.allclose(torch.as_tensor(scope["q"]), torch.as_tensor(model.encode_query(["your question"])))
    passages = ["a passage of your corpus", "another passage"]
    assert torch.allclose(torch.as_tensor(scope["p"]), torch.as_tensor(model.encode_document(passages)))


@pytest.mark.onnx
def test_onnx_export_of_an_adapter_model_is_refused_by_name(adapter_run, tmp_path):
    db, run_id, _, _ = adapter_run
    result = cli("export", run_id, "-o", tmp_path / "shipped", "--format", "onnx", "--db", db)
    assert result.exit_code == 2
    assert "Router" in result.output and "export it as sentence-transformers" in result.output
    assert not (tmp_path / "shipped").exists()


@pytest.mark.parametrize(
    ("train", "named"),
    [
        ({"lora": {"r": 4}}, "train.lora"),
        ({"matryoshka_dims": [32, 16]}, "train.matryoshka_dims"),
        ({"loss": "cached-mnrl"}, "train.loss: cached-mnrl"),
        ({"loop": "trainer"}, "train.loop: trainer"),
        ({"backend": "flagembedding"}, "train.backend: flagembedding"),
    ],
)
def test_what_the_adapter_cannot_combine_with_is_named(write_spec, train, named):
    with pytest.raises(SpecError, match=rf"does not combine with {named}"):
        load_spec(write_spec(train={"query_adapter": {}, **train}))


def test_an_adapter_over_an_api_model_is_refused_before_anything_runs(write_spec):
    spec = write_spec(model={"base": "text-embedding-3-small"}, train={"query_adapter": {}})
    result = cli("validate", spec)
    assert result.exit_code == 2
    assert "train.query_adapter" in result.output and "API model" in result.output
    assert Path(spec).name in result.output


def test_an_adapter_run_queries_the_base_models_index_without_reindexing(adapter_run, tmp_path, tiny_beir):
    """`embx index RUN` of an adapter run is the base model's index (nothing encoded again), and `embx query
    INDEX --run RUN` ranks its passages by the adapter's query vector against the base model's passage vectors."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    db, run_id, info, _ = adapter_run
    spec_file = tmp_path / "spec.yaml"  # the spec the run was made from (write_spec's file)
    uri = tmp_path / "vectors"
    base = cli("index", spec_file, "--data", tiny_beir, "--to", uri, "--db", db, "--json")
    assert base.exit_code == 0, base.output
    name = json.loads(base.output)["name"]
    again = cli("index", run_id, "--data", tiny_beir, "--to", uri, "--db", db)
    assert again.exit_code == 0, again.output
    assert f"index {name} in" in again.output and "(0 encoded, 40 already there" in again.output
    assert f"--run {run_id}" in again.output and "not re-indexed" in again.output

    text = "what should someone with high blood pressure eat"
    shown = cli("query", name, text, "-k", 40, "--to", uri, "--db", db, "--run", run_id, "--json")
    assert shown.exit_code == 0, shown.output
    hits = json.loads(shown.output)["hits"]
    assert len(hits) == 40
    from runner.evaluate import encode

    saved = SentenceTransformer(info["saved_model"]["path"], device="cpu")
    saved.max_seq_length = 32  # the spec's, as embx loads it

    def embed(texts: list[str], task: str):  # as embx index and query encode: eval.precision auto
        return encode(saved, texts, task=task, batch_size=None, normalize=True, description=None).numpy()

    expected = embed([h["text"] for h in hits], "document") @ embed([text], "query")[0]
    scores = np.array([h["score"] for h in hits])
    assert np.allclose(scores, expected, atol=1e-4)  # the adapter's query vector against the base passages
    plain = json.loads(cli("query", name, text, "-k", 40, "--to", uri, "--db", db, "--json").output)["hits"]
    by_id = {h["id"]: h["score"] for h in plain}
    moved = np.abs(scores - np.array([by_id[h["id"]] for h in hits]))
    assert moved.max() > 0.01  # without --run: the base model's query vector


def test_query_with_a_run_whose_passages_are_not_the_indexs_is_refused(tmp_path, write_spec, tiny_beir):
    spec = write_spec(train={"epochs": 1, "early_stopping": None}, name="full.yaml")
    db, uri = tmp_path / "r.duckdb", tmp_path / "vectors"
    assert cli("run", spec, "--db", db).exit_code == 0
    ((run_id,),) = query(db, "SELECT run_id FROM runs")
    assert cli("index", spec, "--data", tiny_beir, "--to", uri, "--db", db).exit_code == 0
    result = cli("query", "tiny-base", "chest pain", "--to", uri, "--db", db, "--run", run_id)
    assert result.exit_code == 2
    assert "its queries do not belong in this index" in result.output and f"embx index {run_id}" in result.output
