"""BM25, RRF fusion, two-stage retrieval and metadata filters."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from runner.evaluate import score_run
from runner.retrieval import bm25_run, filter_ids, fuse_rrf, two_stage_run

CORPUS = {
    "d1": "The heart pumps blood through the arteries of the body.",
    "d2": "Lungs exchange oxygen and carbon dioxide while breathing.",
    "d3": "Chronic urticaria presents with recurrent pruritic wheals lasting weeks.",
    "d4": "The kidneys filter blood and produce urine.",
    "d5": "Skin rashes can itch and the heart of the matter is allergy.",
}


def test_bm25_finds_the_passage_sharing_rare_words():
    run = bm25_run(CORPUS, {"q1": "what are pruritic wheals in urticaria", "q2": "zzz qqq"}, k=3)
    assert next(iter(run["q1"])) == "d3"
    assert len(run["q1"]) <= 3
    assert run["q2"] == {}  # no term in common: no result rather than arbitrary zero-score passages
    means, _ = score_run({"q1": {"d3": 1}}, run, ["mrr@10"])
    assert means["mrr@10"] == 1.0


def test_bm25_caps_k_and_restricts_to_allowed():
    run = bm25_run(CORPUS, {"q": "blood heart urticaria"}, k=100)
    assert set(run["q"]) <= set(CORPUS)
    allowed = {"d1", "d4"}
    run = bm25_run(CORPUS, {"q": "blood heart urticaria"}, k=100, allowed=allowed)
    assert set(run["q"]) <= allowed and run["q"]
    assert bm25_run(CORPUS, {"q": "blood"}, k=5, allowed=set()) == {"q": {}}


def test_fuse_rrf_orders_and_handles_edge_cases():
    a = {"q": {"x": 0.9, "y": 0.8, "w": 0.1}, "only_a": {"é-doc": 1.0}, "empty": {}}
    b = {"q": {"y": 12.0, "z": 3.0}}
    fused = fuse_rrf([a, b], k=3)
    # y is 2nd and 1st: above x, 1st and absent.
    assert list(fused["q"]) == ["y", "x", "z"]
    assert fused["q"]["y"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["q"]["x"] == pytest.approx(1 / 61)
    # Queries of one run only, non-ASCII ids and queries without results survive.
    assert list(fused["only_a"]) == ["é-doc"]
    assert fused["empty"] == {}
    # Ties are broken as trec_eval does (higher id first), whatever the input order.
    tied = fuse_rrf([{"q": {"a": 1.0, "b": 1.0}}, {"q": {"c": 5.0}}], k=2)
    assert list(tied["q"]) == ["c", "b"]
    assert fuse_rrf([{"q": {}}, {}], k=5) == {"q": {}}
    assert list(fuse_rrf([{"q": {"a": 1.0, "b": 2.0}}], k=1)["q"]) == ["b"]


def _unit(rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


def test_two_stage_returns_only_fine_chunks_of_retrieved_coarse():
    q = _unit([[1.0, 0.0, 0.0]])
    coarse_ids = ["c1", "c2"]
    coarse = _unit([[1.0, 0.1, 0.0], [0.5, 1.0, 0.0]])  # c1 is the closer coarse chunk
    fine_ids = ["f1", "f2", "f3", "f4"]
    fine = _unit([[0.6, 0.4, 0.0], [0.4, 0.6, 0.0], [1.0, 0.0, 0.01], [0.0, 0.0, 1.0]])
    parents = {"f1": "c1", "f2": "c1", "f3": "c2"}  # f3 is the best fine chunk but sits under c2; f4 is an orphan
    retrieve = partial(
        two_stage_run,
        q,
        coarse_ids=coarse_ids,
        coarse_emb=coarse,
        fine_ids=fine_ids,
        fine_emb=fine,
        parent_of=parents,
        qids=["q"],
    )
    run = retrieve(
        top_coarse=1,
        k=10,
    )
    assert list(run["q"]) == ["f1", "f2"]
    assert run["q"]["f1"] == pytest.approx(float(q[0] @ fine[0]))
    run = retrieve(
        top_coarse=2,
        k=2,
    )
    assert list(run["q"]) == ["f3", "f1"]
    # Filtered: c1 holds no allowed chunk, so the single coarse slot goes to c2.
    run = retrieve(
        top_coarse=1,
        k=10,
        allowed={"f3"},
    )
    assert list(run["q"]) == ["f3"]
    run = retrieve(
        top_coarse=1,
        k=10,
        allowed={"f4"},
    )
    assert run == {"q": {}}


def test_filter_ids_semantics():
    meta = {
        "a": {"lang": "en", "tags": ["cardio", "adult"], "year": 2021},
        "b": {"lang": "de", "tags": ["cardio"]},
        "c": {"lang": "en", "tags": "paediatric"},
        "d": {},
    }
    assert filter_ids(meta, {}) == set(meta)
    assert filter_ids(meta, {"lang": "en"}) == {"a", "c"}
    assert filter_ids(meta, {"lang": ["en", "de"]}) == {"a", "b", "c"}
    assert filter_ids(meta, {"tags": "cardio"}) == {"a", "b"}  # list metadata: contains
    assert filter_ids(meta, {"tags": ["adult", "paediatric"]}) == {"a", "c"}  # both lists: share a value
    assert filter_ids(meta, {"lang": "en", "tags": "cardio"}) == {"a"}  # every key must match
    assert filter_ids(meta, {"year": 2021}) == {"a"}  # a missing key never matches
    assert filter_ids(meta, {"lang": "fr"}) == set()


def test_bm25_segments_chinese_text():
    from runner.retrieval import bm25_run

    corpus = {
        "htn": "高血压患者应该减少钠的摄入量。每天食盐不超过五克。",
        "run": "耐力跑步者需要补充钠和水分。",
        "en": "Patients with high blood pressure should eat less salt.",
    }
    queries = {"zh": "高血压患者吃什么", "mixed": "跑步 hydration 补充水分", "en": "blood pressure salt"}
    run = bm25_run(corpus, queries, 3)
    assert max(run["zh"], key=run["zh"].get) == "htn"  # one unspaced sentence would be a single token
    assert max(run["mixed"], key=run["mixed"].get) == "run"
    assert max(run["en"], key=run["en"].get) == "en"
