"""Data checks: train/eval leakage (exact, near, positives), the leak policy and the other findings."""

from __future__ import annotations

import json
import logging
import zlib

import numpy as np
import pytest

from runner.data.checks import apply_leak_policy, check_data, normalize
from runner.data.types import DataError, Pair, RetrievalData


def _check(data, pairs, **settings):
    """check_data with the settings most tests share; keyword arguments override them."""
    defaults = {
        "train": "train",
        "evals": ["test"],
        "negatives_mode": "in-batch",
        "per_query": 3,
        "min_chars": 10,
        "leak_similarity": 0.95,
        "embed": None,
        "positives_are_leaks": False,
    }
    return check_data(data, pairs=pairs, **{**defaults, **settings})


def fake_embed(texts: list[str]) -> np.ndarray:
    """Character-trigram counts hashed into 512 dims, L2-normalised: light edits keep a high cosine."""
    out = np.zeros((len(texts), 512), dtype=np.float32)
    for row, text in enumerate(texts):
        t = f"  {normalize(text)}  "
        for i in range(len(t) - 2):
            out[row, zlib.crc32(t[i : i + 3].encode()) % 512] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def make_data() -> RetrievalData:
    corpus = {
        "d1": "Asthma is treated with inhaled corticosteroids and bronchodilators.",
        "d2": "Eczema causes dry, itchy and inflamed skin on the hands.",
        "d3": "Kidney stones form when minerals crystallise in the urine.",
        "d4": "Migraine attacks bring throbbing headache and nausea.",
        "d5": "Kidney stones form when minerals crystallise in the urine!",  # duplicate of d3
        "d6": "short",
        "d7": "   ",
    }
    queries = {
        "t1": "how is asthma treated",
        "t2": "why does my skin itch",
        "t3": "what causes kidney stones",
        "t4": "what causes kidney stones",  # duplicate query text
        "e1": "How is ASTHMA treated?",  # t1 after normalisation
        "e2": "what are the symptoms of a migraine attack",
        "e3": "why is my skin so itchy",  # near t2? no: only loosely related
        "e4": "what causes kidney stone",  # lightly edited copy of t3
        "e5": "ok",
    }
    qrels = {
        "train": {"t1": {"d1": 1}, "t2": {"d2": 1}, "t3": {"d3": 1}, "t4": {"d3": 0}},
        "test": {"e1": {"d1": 1}, "e2": {"d4": 1}, "e3": {"d6": 1}, "e4": {"d5": 1}, "e5": {"d4": 0}},
    }
    return RetrievalData(corpus, queries, qrels, source="unit")


def run_checks(data: RetrievalData, **kw):
    pairs = data.pairs("train")
    return pairs, _check(data, pairs, **{"leak_similarity": 0.8, "embed": fake_embed, **kw})


def test_normalize():
    assert normalize("  How is ASTHMA\ttreated?! ") == normalize("how is asthma treated") == "how is asthma treated"
    assert normalize("ﬁle “x”") == "file x"  # NFKC folds the ligature, curly quotes are punctuation


def test_query_leaks_exact_and_near():
    pairs, report = run_checks(make_data())
    kinds = {(leak.kind, leak.train_query, leak.eval_query) for leak in report.leaks}
    assert ("query-exact", "t1", "e1") in kinds
    assert ("query-near", "t3", "e4") in kinds
    assert not any(leak.train_query == "t2" for leak in report.leaks)  # a related but different query
    assert report.counts["test_query_exact"] == 1 and report.counts["test_query_near"] == 1
    near = next(leak for leak in report.leaks if leak.kind == "query-near")
    assert 0.8 <= near.similarity < 1.0
    assert any("1 training queries also appear in test (exact" in n for n in report.notes)
    leaking = {pairs[i].query_id for i in report.leaking_pair_indices()}
    assert leaking == {"t1", "t3"}
    json.dumps(report.as_dict())  # JSON-able for the store and the data card


def test_no_embedder_skips_near_checks():
    _, report = run_checks(make_data(), embed=None)
    assert {leak.kind for leak in report.leaks} == {"query-exact"}
    assert any("skipped" in n for n in report.notes)


def test_positive_overlap_is_a_leak_only_when_asked():
    data = make_data()
    data.queries["e1"] = "inhaler therapy options"  # no query leak for t1 any more
    _, shared = run_checks(data, embed=None)
    # t1's positive d1 is also a test positive (same id); t3's d3 equals test positive d5 after normalisation.
    assert shared.counts["test_positive_exact"] == 2
    assert not any(leak.kind.startswith("positive") for leak in shared.leaks)
    assert any("not counted as leaks" in n for n in shared.notes)

    pairs, split = run_checks(data, embed=None, positives_are_leaks=True)
    positive = {(leak.train_query, leak.eval_query) for leak in split.leaks if leak.kind == "positive-exact"}
    assert positive == {("t1", "e1"), ("t3", "e4")}
    assert {pairs[i].query_id for i in split.leaking_pair_indices()} == {"t1", "t3"}


def test_positive_near_with_embedder():
    data = make_data()
    data.queries["e1"] = "inhaler therapy options"
    data.qrels["test"]["e1"] = {"d8": 1}
    data.corpus["d8"] = "Asthma is treated with inhaled corticosteroids and bronchodilator sprays."
    _, report = run_checks(data, positives_are_leaks=True)
    near = [leak for leak in report.leaks if leak.kind == "positive-near"]
    assert [(leak.train_query, leak.eval_query) for leak in near] == [("t1", "e1")]


def test_apply_leak_policy(caplog):
    pairs, report = run_checks(make_data())
    with pytest.raises(DataError) as err:
        apply_leak_policy(report, pairs, "error")
    message = str(err.value)
    assert "'t1'" in message and "'e1'" in message and "query-exact" in message and "data.on_leak" in message
    with caplog.at_level(logging.WARNING, logger="runner.data.checks"):
        assert apply_leak_policy(report, pairs, "warn") == pairs
    assert "leak" in caplog.text
    kept = apply_leak_policy(report, pairs, "drop")
    assert [p.query_id for p in kept] == ["t2"]
    with pytest.raises(ValueError):
        apply_leak_policy(report, pairs, "ignore")  # type: ignore[arg-type]
    clean = [Pair("unrelated question about bones", "Bones need calcium.", "x1", "dx")]
    clean_report = _check(make_data(), clean, embed=fake_embed)
    assert not clean_report.leaks
    assert apply_leak_policy(clean_report, clean, "error") == clean


def test_drop_refuses_to_remove_every_pair():
    data = make_data()
    pairs = [data.pairs("train")[0]]  # t1 only: leaks
    report = _check(data, pairs)
    with pytest.raises(DataError, match="removed all"):
        apply_leak_policy(report, pairs, "drop")


def test_other_findings():
    data = make_data()
    pairs = [*data.pairs("train"), Pair("empty positive", "  ", "t9", "d7")]
    report = _check(data, pairs, negatives_mode="hard", per_query=8)
    c, ex = report.counts, report.examples
    assert c["corpus_duplicates"] == 1 and ex["corpus_duplicates"] == ["d3 = d5"]
    assert c["queries_duplicates"] == 2  # t4 repeats t3, e1 is t1 after normalisation
    assert c["corpus_empty"] == 1 and ex["corpus_empty"] == ["d7"]
    assert c["corpus_short"] == 1 and ex["corpus_short"] == ["d6"]
    assert c["queries_short"] == 1 and ex["queries_short"] == ["e5"]
    assert c["train_queries_without_positive"] == 1 and ex["train_queries_without_positive"] == ["t4"]
    assert c["test_queries_without_positive"] == 1 and ex["test_queries_without_positive"] == ["e5"]
    assert c["pairs_empty_positive"] == 1 and ex["pairs_empty_positive"] == ["t9"]
    assert c["negatives_per_positive"] == 8
    assert any("1:8" in n and "outside" in n for n in report.notes)
    _, in_batch = run_checks(data)
    assert any("in-batch only" in n for n in in_batch.notes)
    ok = _check(data, pairs, negatives_mode="random", per_query=4)
    assert any("1:4" in n and "outside" not in n for n in ok.notes)
