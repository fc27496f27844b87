"""Metrics against hand-computed values, exact top-k against a brute-force sort, evaluate() end to end."""

from __future__ import annotations

from math import log2

import pytest
import torch

from runner.evaluate import CorpusIndex, evaluate, score_run, top_k, trec_measures

# Graded judgements: grade 2 is "highly relevant", grade 0 is judged non-relevant.
QRELS = {
    "q1": {"d1": 2, "d3": 1, "d5": 1, "d9": 0},  # 3 relevant documents
    "q2": {"d7": 1},  # 1 relevant document
    "q3": {"d1": 1},  # judged, but nothing retrieved for it
}
# Scores descending; no ties.
RUN = {
    # rank: 1=d2(0) 2=d1(2) 3=d4(-) 4=d3(1) 5=d9(0) 6=d6(-); d5 is never retrieved
    "q1": {"d2": 0.9, "d1": 0.8, "d4": 0.7, "d3": 0.6, "d9": 0.5, "d6": 0.4},
    # rank: 1=d8 2=d6 3=d7(1)
    "q2": {"d8": 0.9, "d6": 0.8, "d7": 0.7},
}

# Hand-computed per-query values (trec_eval definitions: ndcg gain = grade, discount log2(rank + 1)).
EXPECTED = {
    "q1": {
        # relevant in top 2: d1 -> 1 of 3; in top 5: d1, d3 -> 2 of 3
        "recall@2": 1 / 3,
        "recall@5": 2 / 3,
        # precision@k divides by k
        "precision@2": 1 / 2,
        "precision@5": 2 / 5,
        # first relevant at rank 2
        "mrr@1": 0.0,
        "mrr@2": 1 / 2,
        "mrr@10": 1 / 2,
        # DCG@2 = 2/log2(3); ideal order 2,1,1: IDCG@2 = 2/log2(2) + 1/log2(3)
        "ndcg@2": (2 / log2(3)) / (2 / log2(2) + 1 / log2(3)),
        # DCG@5 = 2/log2(3) + 1/log2(5); IDCG@5 = 2/log2(2) + 1/log2(3) + 1/log2(4)
        "ndcg@5": (2 / log2(3) + 1 / log2(5)) / (2 + 1 / log2(3) + 1 / log2(4)),
        # AP@2 = P@2 (at d1) / R = (1/2) / 3 ; AP@5 = (P@2 + P@4) / R = (1/2 + 2/4) / 3
        "map@2": (1 / 2) / 3,
        "map@5": (1 / 2 + 2 / 4) / 3,
    },
    "q2": {
        "recall@2": 0.0,
        "recall@5": 1.0,
        "precision@2": 0.0,
        "precision@5": 1 / 5,
        "mrr@1": 0.0,
        "mrr@2": 0.0,  # the first relevant hit (rank 3) is past k: 0, not 1/3
        "mrr@10": 1 / 3,
        "ndcg@2": 0.0,
        "ndcg@5": (1 / log2(4)) / 1.0,
        "map@2": 0.0,
        "map@5": (1 / 3) / 1,
    },
}
METRICS = sorted(EXPECTED["q1"])


def test_trec_measures():
    assert trec_measures(["ndcg@10", "recall@5", "map@100", "precision@3", "mrr@10"]) == {
        "ndcg@10": "ndcg_cut_10",
        "recall@5": "recall_5",
        "map@100": "map_cut_100",
        "precision@3": "P_3",
        "mrr@10": "recip_rank",
    }


def test_score_run_matches_hand_computed_values():
    means, per_query = score_run(QRELS, RUN, METRICS)
    assert set(per_query) == {"q1", "q2", "q3"}
    for qid in ("q1", "q2"):
        for key in METRICS:
            assert per_query[qid][key] == pytest.approx(EXPECTED[qid][key], abs=1e-4), (qid, key)
    # A judged query with nothing retrieved scores 0 on everything, and counts in the mean.
    assert per_query["q3"] == {key: 0.0 for key in METRICS}
    for key in METRICS:
        assert means[key] == pytest.approx((EXPECTED["q1"][key] + EXPECTED["q2"][key]) / 3, abs=1e-4), key
    # Spot-check two means as plain numbers too.
    assert means["recall@5"] == pytest.approx((2 / 3 + 1) / 3)
    assert means["mrr@10"] == pytest.approx((1 / 2 + 1 / 3) / 3)


def test_ndcg_uses_linear_gain():
    # One query, grades 3 and 1; the grade-1 document ranked first.
    qrels = {"q": {"a": 3, "b": 1}}
    run = {"q": {"b": 2.0, "a": 1.0}}
    means, _ = score_run(qrels, run, ["ndcg@2"])
    # linear gain: (1/1 + 3/log2(3)) / (3/1 + 1/log2(3)); exponential gain (2^g - 1) would give a different value
    linear = (1 + 3 / log2(3)) / (3 + 1 / log2(3))
    exponential = (1 + 7 / log2(3)) / (7 + 1 / log2(3))
    assert means["ndcg@2"] == pytest.approx(linear, abs=1e-4)
    assert abs(means["ndcg@2"] - exponential) > 1e-2


def test_mrr_agrees_with_other_metrics_on_tied_scores():
    # Two documents with identical scores (e.g. duplicate passages); the relevant one is "b".
    qrels = {"q": {"b": 1}}
    run = {"q": {"a": 1.0, "b": 1.0}}
    means, _ = score_run(qrels, run, ["mrr@1", "recall@1", "precision@1"])
    # Whatever the tie-break, the document at rank 1 is either relevant for all three metrics or for none.
    assert means["mrr@1"] == means["recall@1"] == means["precision@1"]


@pytest.mark.parametrize(("n_q", "n_c", "k", "chunk"), [(7, 50, 5, 3), (4, 6, 10, 1024), (1, 1, 1, 1)])
def test_top_k_equals_brute_force_sort(n_q, n_c, k, chunk):
    gen = torch.Generator().manual_seed(n_q * 100 + n_c)
    queries, corpus = torch.randn(n_q, 8, generator=gen), torch.randn(n_c, 8, generator=gen)
    scores, indices = top_k(queries, corpus, k, chunk=chunk)
    kk = min(k, n_c)
    assert scores.shape == indices.shape == (n_q, kk)
    for row in range(n_q):
        sims = [float(queries[row] @ corpus[j]) for j in range(n_c)]
        expected = sorted(range(n_c), key=lambda j: -sims[j])[:kk]
        assert indices[row].tolist() == expected
        assert scores[row].tolist() == pytest.approx([sims[j] for j in expected], abs=1e-5)


def test_evaluate_end_to_end(tiny_model, tiny_beir):
    from runner.data.beir import load_beir
    from runner.models import load_model
    from runner.spec import ModelSpec

    data = load_beir(tiny_beir)
    qrels = data.split("test")
    spec = ModelSpec(base=str(tiny_model), max_seq_length=32)
    model = load_model(spec, "cpu")
    index = CorpusIndex(data.corpus)
    metrics = ["recall@1", "recall@10", "ndcg@10", "mrr@10", "map@100"]
    result = evaluate(
        model,
        label="base",
        index=index,
        queries=data.queries,
        qrels=qrels,
        spec=spec,
        metrics=metrics,
        depth=100,
        batch_size=16,
    )

    assert set(result.per_query) == set(qrels)
    assert all(set(row) == set(metrics) for row in result.per_query.values())
    for key in metrics:
        mean = sum(row[key] for row in result.per_query.values()) / len(qrels)
        assert result.metrics[key] == pytest.approx(mean)
        assert 0.0 <= result.metrics[key] <= 1.0
    # The corpus has 40 documents: depth 100 retrieves all of them, so recall@100-like coverage is full.
    assert set(result.run) == set(qrels)
    assert all(len(docs) == len(data.corpus) for docs in result.run.values())
    assert result.metrics["recall@1"] <= result.metrics["recall@10"]
    # The index caches the corpus embeddings under the label, in corpus order.
    assert index.embeddings["base"].shape == (len(data.corpus), 32)
    # Scores in the run are dot products of normalised embeddings: cosine similarities.
    assert all(-1.0001 <= s <= 1.0001 for docs in result.run.values() for s in docs.values())
    # Re-scoring the stored run gives the same metrics.
    assert score_run(qrels, result.run, metrics)[0] == pytest.approx(result.metrics)


def test_base_corpus_embeddings_are_cached_on_disk(tmp_path, tiny_model, monkeypatch):
    import torch

    import runner.evaluate as ev
    from runner.models import load_model
    from runner.spec import ModelSpec

    spec = ModelSpec(base=str(tiny_model), max_seq_length=32)
    model = load_model(spec, "cpu")
    corpus = {"a": "the heart pumps blood", "b": "the lungs move air", "c": "bones hold calcium"}
    calls = []
    real = ev.encode
    monkeypatch.setattr(ev, "encode", lambda *a, **k: calls.append(k["description"]) or real(*a, **k))

    first = ev.CorpusIndex(corpus, tmp_path / "emb", "model-key").embed("base", model, spec, 8)
    again = ev.CorpusIndex(corpus, tmp_path / "emb", "model-key").embed("base", model, spec, 8)
    assert calls == ["encode corpus (base)"]  # the second index read the file
    assert torch.equal(first.cpu(), again.cpu()) and len(list((tmp_path / "emb").glob("*.pt"))) == 1
    # Another corpus text, another model key, another prefix or the tuned model: encoded, never read from disk.
    ev.CorpusIndex({**corpus, "c": "bones hold iron"}, tmp_path / "emb", "model-key").embed("base", model, spec, 8)
    ev.CorpusIndex(corpus, tmp_path / "emb", "other-model").embed("base", model, spec, 8)
    prefixed = ModelSpec(base=str(tiny_model), max_seq_length=32, passage_prefix="passage: ")
    ev.CorpusIndex(corpus, tmp_path / "emb", "model-key").embed("base", model, prefixed, 8)
    ev.CorpusIndex(corpus, tmp_path / "emb", "model-key").embed("tuned", model, spec, 8)
    assert len(calls) == 5 and len(list((tmp_path / "emb").glob("*.pt"))) == 4
    # A broken file is ignored (encoded again) and rewritten.
    index = ev.CorpusIndex(corpus, tmp_path / "emb", "model-key")
    index._disk_path(spec, "cpu", ev.inference_settings(model, 8, "auto")[1]).write_bytes(b"broken")
    index.embed("base", model, spec, 8)
    assert len(calls) == 6
    ev.CorpusIndex(corpus, tmp_path / "emb", "model-key").embed("base", model, spec, 8)
    assert len(calls) == 6


def linear_output_dtypes(model) -> tuple[set, list]:
    """Record the dtype of every Linear layer's output in `model` (a set) and the hook handles to remove."""
    seen: set = set()
    handles = [
        m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    return seen, handles


def test_bf16_inference_on_any_cpu(tiny_model, tiny_beir, monkeypatch):
    """eval.precision bf16 embeds under bf16 autocast on any CPU (AMX or not: the detector is forced off) and
    stays close to fp32: cosine > 0.99 per text, yet not the fp32 numbers (the autocast really ran)."""
    from helpers import force_amx

    from runner.data.beir import load_beir
    from runner.evaluate import encode
    from runner.models import load_model
    from runner.spec import ModelSpec

    force_amx(monkeypatch, False)  # an AVX2-only CPU
    texts = list(load_beir(tiny_beir).corpus.values())
    model = load_model(ModelSpec(base=str(tiny_model), max_seq_length=32), "cpu")
    seen, handles = linear_output_dtypes(model)
    fp32 = encode(model, texts, task="document", batch_size=16, normalize=True, description="fp32", precision="fp32")
    assert seen == {torch.float32}
    seen.clear()
    bf16 = encode(model, texts, task="document", batch_size=16, normalize=True, description="bf16", precision="bf16")
    for handle in handles:
        handle.remove()
    assert seen == {torch.bfloat16}
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    cosine = torch.nn.functional.cosine_similarity(bf16, fp32, dim=1)
    assert cosine.min() > 0.99
    assert (bf16 - fp32).abs().max() > 1e-6
