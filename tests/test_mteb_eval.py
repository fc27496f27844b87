"""mteb's own evaluation of an embx split agrees with embx's native evaluation; task names are checked offline.

mteb rounds ndcg/map/recall/precision to 5 decimals (mteb's parse_metrics_from_scores), hence the 1e-4
tolerance. MRR@k and MAP@k share their definitions with embx: both rank by score with ties broken by document
id descending (trec_eval's order), MRR@k is the reciprocal rank of the first relevant document within the top k
(0 past k), and MAP@k is trec_eval's map_cut_k, computed by pytrec_eval in both.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import runner.evaluate
from runner.data.beir import load_beir
from runner.evaluate import CorpusIndex, evaluate
from runner.models import load_model
from runner.mteb_eval import check_task_names, mteb_hub_scores, mteb_key, mteb_local_scores
from runner.spec import ModelSpec

# recall@100 is 1 for every query (40 passages, depth 100) unless a passage is dropped from a ranking.
METRICS = ["ndcg@10", "recall@10", "recall@1", "recall@100", "mrr@10", "map@100", "precision@5"]
TOLERANCE = 1e-4


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


@pytest.fixture(scope="module", autouse=True)
def nothing_written(tmp_path_factory):
    """mteb writes no result cache and no prediction files (cache=None, prediction_folder=None)."""
    cache = Path(os.environ.get("MTEB_CACHE") or Path.home() / ".cache" / "mteb")
    before_cache, before_cwd = _files(cache), _files(Path.cwd())
    yield
    assert _files(cache) == before_cache, "mteb wrote into its result cache"
    runs = Path.cwd() / "runs"  # embx's own saved models (output.dir), not mteb's
    assert {p for p in _files(Path.cwd()) if runs not in p.parents} == {
        p for p in before_cwd if runs not in p.parents
    }, "mteb wrote files into the working directory"


@pytest.fixture(scope="module")
def tiny_data(tiny_beir):
    data = load_beir(tiny_beir)
    return data.corpus, data.queries, data.split("test")


def compare(model, spec, corpus, queries, qrels, label):
    """Native and mteb metrics of one model on one split, printed side by side; returns both."""
    native = evaluate(
        model,
        label=None,
        index=CorpusIndex(corpus),
        queries=queries,
        qrels=qrels,
        spec=spec,
        metrics=METRICS,
        depth=100,
        batch_size=16,
    )
    # batch_size None: the spec's default (eval.batch_size by device), which mteb's dataloader must get as a number.
    via_mteb = mteb_local_scores(
        model, model_spec=spec, corpus=corpus, queries=queries, qrels=qrels, metrics=METRICS, batch_size=None
    )
    print(f"\n{label} ({len(qrels)} queries, {len(corpus)} passages)")
    for key in METRICS:
        print(f"  {key:12s} native {native.metrics[key]:.6f}  mteb {via_mteb[key]:.6f}")
    assert set(via_mteb) == set(METRICS)
    for key in METRICS:
        assert abs(native.metrics[key] - via_mteb[key]) <= TOLERANCE, key
    return native.metrics, via_mteb


def test_tiny_model_agrees(tiny_model, tiny_data):
    spec = ModelSpec(base=str(tiny_model))
    compare(load_model(spec, "cpu"), spec, *tiny_data, "tiny model")


def test_prefixes_and_truncation_match_native(tiny_model, tiny_data, monkeypatch):
    # 16 tokens: the prefixed passages are truncated, by the model's max_seq_length in both evaluations.
    spec = ModelSpec(base=str(tiny_model), max_seq_length=16, query_prefix="query: ", passage_prefix="passage: ")
    model = load_model(spec, "cpu")
    corpus, queries, qrels = tiny_data
    embedded: list[list[str]] = []
    original = runner.evaluate.encode

    def recording(model, texts, *args, **kwargs):
        embedded.append(list(texts))
        return original(model, texts, *args, **kwargs)

    monkeypatch.setattr(runner.evaluate, "encode", recording)
    prefixed, _ = compare(model, spec, corpus, queries, qrels, "tiny model, prefixes, max_seq_length 16")
    # Native: corpus, then queries; mteb: queries, then corpus. Each side embeds exactly the same texts.
    passages = sorted("passage: " + t for t in corpus.values())
    questions = sorted("query: " + queries[q] for q in qrels)
    assert sorted(sorted(texts) for texts in embedded) == sorted([passages, passages, questions, questions])
    assert max(len(model.tokenizer.tokenize(t)) + 2 for t in passages) > 16  # + [CLS] and [SEP]

    plain = ModelSpec(base=str(tiny_model), max_seq_length=16)
    unprefixed = evaluate(
        model,
        label=None,
        index=CorpusIndex(corpus),
        queries=queries,
        qrels=qrels,
        spec=plain,
        metrics=METRICS,
        depth=100,
        batch_size=16,
    )
    assert unprefixed.metrics != prefixed, "the prefixes should change this model's ranking"


def test_document_with_a_query_id_is_kept(tiny_model, tiny_data):
    corpus, queries, qrels = tiny_data
    qid = sorted(qrels)[0]
    (did,) = qrels[qid]
    renamed = {qid if d == did else d: text for d, text in corpus.items()}
    qrels = {q: {qid if d == did else d: g for d, g in docs.items()} for q, docs in qrels.items()}
    spec = ModelSpec(base=str(tiny_model))
    native, via_mteb = compare(load_model(spec, "cpu"), spec, renamed, queries, qrels, "tiny model, doc id = query id")
    # Had mteb dropped the passage named like the query (ignore_identical_ids), that query's recall@100 would be 0.
    assert via_mteb["recall@100"] == native["recall@100"] == 1.0


def test_bundled_minilm_agrees(tiny_data):
    spec = ModelSpec(base="all-MiniLM-L6-v2")
    native, _ = compare(load_model(spec, "cpu"), spec, *tiny_data, "all-MiniLM-L6-v2")
    assert native["ndcg@10"] > 0.5


def test_unreported_metric_is_left_out(tiny_model, tiny_data, caplog):
    spec = ModelSpec(base=str(tiny_model))
    with caplog.at_level(logging.WARNING, logger="runner.mteb_eval"):
        corpus, queries, qrels = tiny_data
        scores = mteb_local_scores(
            load_model(spec, "cpu"),
            model_spec=spec,
            corpus=corpus,
            queries=queries,
            qrels=qrels,
            metrics=["ndcg@10", "bogus@3"],
            batch_size=16,
        )
    assert list(scores) == ["ndcg@10"]
    assert "bogus@3" in caplog.text
    with pytest.raises(ValueError, match="name@k"):
        mteb_key("ndcg")


def test_hub_path_on_preloaded_data(tiny_model, tiny_data, monkeypatch):
    """The hub path end to end, offline: the registered SciFact task, its data replaced by the tiny split."""
    import mteb
    from datasets import Dataset
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    corpus, queries, qrels = tiny_data
    task = mteb.get_task("SciFact")
    task.dataset = {
        "default": {
            "test": RetrievalSplitData(
                corpus=Dataset.from_dict({"id": list(corpus), "text": list(corpus.values())}),
                queries=Dataset.from_dict({"id": list(qrels), "text": [queries[q] for q in qrels]}),
                relevant_docs=qrels,
                top_ranked=None,
            )
        }
    }
    task.data_loaded = True
    monkeypatch.setattr(mteb, "get_tasks", lambda tasks: [task])
    spec = ModelSpec(base=str(tiny_model), query_prefix="query: ")
    model = load_model(spec, "cpu")
    metrics = [*METRICS, "recall@7"]  # a cutoff SciFact does not report by itself
    scores = mteb_hub_scores(model, model_spec=spec, task_names=["SciFact"], metrics=metrics, batch_size=16)
    native = evaluate(
        model,
        label=None,
        index=CorpusIndex(corpus),
        queries=queries,
        qrels=qrels,
        spec=spec,
        metrics=metrics,
        depth=100,
        batch_size=16,
    )
    assert list(scores) == ["SciFact"] and set(scores["SciFact"]) == set(metrics)
    for key in metrics:
        assert abs(scores["SciFact"][key] - native.metrics[key]) <= TOLERANCE, key
    assert mteb_hub_scores(model, model_spec=spec, task_names=[], metrics=metrics, batch_size=16) == {}


def test_unknown_task_names_get_suggestions():
    check_task_names(["SciFact", "NFCorpus"])
    with pytest.raises(ValueError, match=r"unknown mteb task 'SciFakt' \(did you mean 'SciFact'") as info:
        check_task_names(["SciFakt", "NFCorpus", "nfcorpus"])
    assert "'NFCorpus'" in str(info.value).split("'nfcorpus'")[1]
    # Checked before any model or download is touched.
    with pytest.raises(ValueError, match="SciFakt"):
        mteb_hub_scores(None, model_spec=ModelSpec(), task_names=["SciFakt"], metrics=["ndcg@10"], batch_size=16)


def test_a_run_stores_mteb_scores_beside_native_ones(tmp_path, write_spec):
    from runner import store
    from runner.pipeline import run_spec
    from runner.spec import load_spec

    train = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}
    path = write_spec(train=train, eval={"batch_size": 16, "mteb_local": True})
    db = tmp_path / "runs.duckdb"
    result = run_spec(load_spec(path), db)
    test = store.get_run(db, result.run_id)["metrics_by_split"]["test"]
    assert set(test) == {"native", "mteb"}
    for stage in ("base", "tuned"):
        native, by_mteb = test["native"][stage], test["mteb"][stage]
        assert set(by_mteb) == set(native)
        for key in native:
            assert by_mteb[key] == pytest.approx(native[key], abs=TOLERANCE), (stage, key)
    assert test["native"]["tuned"] != test["native"]["base"]


def test_unknown_mteb_task_in_a_spec_is_a_located_error(write_spec):
    from runner.spec import SpecError, load_spec

    path = write_spec(eval={"mteb": ["SciFakt"]})
    with pytest.raises(SpecError) as err:
        load_spec(path)
    (problem,) = err.value.problems
    assert problem.path == "eval.mteb" and problem.line is not None
    assert "SciFakt" in problem.message and "SciFact" in problem.message
