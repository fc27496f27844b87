"""The arithmetic of a candidate's profile, held to hand-computed values."""

from __future__ import annotations

import pytest

from runner.profile import api_cost, detect_languages, index_bytes, language_fit, token_lengths, truncation


def test_truncation_counts_passages_and_tokens_beyond_the_limit():
    # lengths 100, 300, 600 at limit 256: two passages cut; 44 + 344 = 388 of 1000 tokens never read
    found = truncation([100, 300, 600], 256)
    assert found["passages"] == 2
    assert found["passages_share"] == pytest.approx(2 / 3)
    assert found["tokens_share"] == pytest.approx(388 / 1000)
    assert found["max_tokens"] == 600 and found["mean_tokens"] == pytest.approx(1000 / 3)
    assert truncation([10, 20], 256)["tokens_share"] == 0.0
    assert truncation([], 256)["passages_share"] == 0.0


def test_index_size_and_api_cost():
    assert index_bytes(passages=1000, dim=384) == {"fp32": 1_536_000, "int8": 384_000}
    # 2.5M corpus tokens at 0.02 per million = 0.05 once; 12 tokens x 100k queries = 1.2M tokens = 0.024 a month
    cost = api_cost(price_per_million=0.02, corpus_tokens=2_500_000, query_tokens_mean=12, queries_per_month=100_000)
    assert cost == {"corpus_once": pytest.approx(0.05), "per_month": pytest.approx(0.024)}


def test_token_lengths_count_special_tokens_without_truncating(tiny_model):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model), device="cpu")
    long = " ".join(["pressure"] * 300)
    assert token_lengths(model, ["blood pressure", long]) == [4, 302]  # [CLS] blood pressure [SEP]


def test_languages_and_the_main_metric_per_language():
    languages = detect_languages({"a": "高血压患者应该吃什么", "b": "what should runners drink", "c": "糖尿病怎么办"})
    assert languages == {"a": "zh", "b": "en", "c": "zh"}
    per_query = {"a": {"ndcg@10": 1.0}, "b": {"ndcg@10": 0.5}, "c": {"ndcg@10": 0.0}}
    fit = language_fit(languages, declared=["en"], per_query=per_query, main="ndcg@10")
    assert fit["queries"] == {"zh": 2, "en": 1} and fit["undeclared"] == {"zh": 2}
    assert fit["by_language"] == {"zh": 0.5, "en": 0.5}
    assert language_fit(languages, declared=None, per_query=per_query, main="ndcg@10")["undeclared"] == {}
