"""What a base-model candidate costs besides its quality: input length, speed, index size, money, languages.

Measured by `embx select` for each candidate on the spec's own corpus and queries, and stored in the selection
run's ``info.select``. The arithmetic is in small pure functions (:func:`truncation`, :func:`index_bytes`,
:func:`api_cost`) so tests hold it to hand-computed values.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from runner.embed_api import ApiEmbedder
    from runner.spec import ApiModelSpec, ModelSpec

log = logging.getLogger(__name__)

INT8_BYTES, FP32_BYTES = 1, 4


def truncation(lengths: list[float], limit: int) -> dict[str, float | int]:
    """How much of a corpus a model cuts off at its input limit.

    Args:
        lengths: Each passage's length in the model's tokens (special tokens included).
        limit: The model's max input tokens.

    Returns:
        ``passages`` (count longer than the limit), ``passages_share`` (their share of all passages),
        ``tokens_share`` (share of all tokens beyond the limit, i.e. never seen by the model), ``max_tokens``
        and ``mean_tokens``.

    """
    n = len(lengths)
    total = float(sum(lengths))
    over = [length for length in lengths if length > limit]
    lost = float(sum(length - limit for length in over))
    return {
        "limit": limit,
        "passages": len(over),
        "passages_share": len(over) / n if n else 0.0,
        "tokens_share": lost / total if total else 0.0,
        "max_tokens": max(lengths, default=0),
        "mean_tokens": total / n if n else 0.0,
    }


def index_bytes(*, passages: int, dim: int) -> dict[str, int]:
    """Flat index size for the corpus: passages x dim x bytes, at fp32 and int8 (scalar-quantised)."""
    return {"fp32": passages * dim * FP32_BYTES, "int8": passages * dim * INT8_BYTES}


def api_cost(
    *, price_per_million: float, corpus_tokens: float, query_tokens_mean: float, queries_per_month: int
) -> dict[str, float]:
    """Projected API cost: embedding the corpus once and embedding a month of queries.

    Returns:
        ``corpus_once`` = corpus_tokens x price / 1e6 and ``per_month`` = query_tokens_mean x queries_per_month x
        price / 1e6, in the currency of the price.

    """
    return {
        "corpus_once": corpus_tokens * price_per_million / 1e6,
        "per_month": query_tokens_mean * queries_per_month * price_per_million / 1e6,
    }


def token_lengths(model: SentenceTransformer, texts: list[str]) -> list[int]:
    """Length of each text in the model's tokens, special tokens included, not truncated."""
    tokenizer = model.tokenizer
    lengths: list[int] = []
    previous = getattr(tokenizer, "model_max_length", None)
    try:
        tokenizer.model_max_length = 10**9  # no "longer than the maximum" warning: measuring is the point
        for start in range(0, len(texts), 1024):
            encoded = tokenizer(texts[start : start + 1024], add_special_tokens=True, truncation=False)
            lengths += [len(ids) for ids in encoded["input_ids"]]
    finally:
        if previous is not None:
            tokenizer.model_max_length = previous
    return lengths


def local_profile(
    model: SentenceTransformer,
    *,
    spec: ModelSpec,
    corpus: list[str],
    sample: int,
    batch_size: int | None,
    precision: str,
) -> dict[str, Any]:
    """Dimensions, parameters, truncation and encode speed of a local model on this corpus, on this machine.

    Speed: `sample` passages drawn with a fixed seed, encoded after a warm-up batch as the evaluation encodes
    (``eval.batch_size``, ``eval.precision``); tokens/s counts the tokens the model actually reads.
    """
    from runner.evaluate import encode
    from runner.models import embedding_dim

    texts = [spec.passage_prefix + t for t in corpus]
    lengths = token_lengths(model, texts)
    limit = int(model.max_seq_length)
    dim = embedding_dim(model)
    picked = random.Random(0).sample(range(len(texts)), min(sample, len(texts)))
    chosen = [texts[i] for i in picked]
    speed = {"task": "document", "batch_size": batch_size, "normalize": spec.normalize, "precision": precision}
    encode(model, chosen[:8], description="warm up", **speed)
    started = time.perf_counter()
    encode(model, chosen, description="speed", **speed)
    seconds = time.perf_counter() - started
    read = sum(min(lengths[i], limit) for i in picked)
    return {
        "dimensions": dim,
        "max_tokens": limit,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "truncation": truncation(lengths, limit),
        "throughput": {
            "texts_per_s": round(len(chosen) / seconds, 2) if seconds > 0 else None,
            "tokens_per_s": round(read / seconds, 1) if seconds > 0 else None,
            "sample": len(chosen),
            "device": model.device.type,
        },
        "index_bytes": index_bytes(passages=len(texts), dim=dim),
        "cost": {"price_per_million": 0.0, "tokens_spent": 0, "corpus_once": 0.0, "per_month": 0.0},
    }


def api_profile(
    embedder: ApiEmbedder,
    *,
    api: ApiModelSpec,
    corpus: list[str],
    queries: list[str],
    queries_per_month: int,
) -> dict[str, Any]:
    """Dimensions, truncation, latency, throughput and cost of an API model, from what the evaluation asked.

    Token counts are the endpoint's own (its ``usage``), apportioned to the texts of a request by length; the
    texts were embedded by the evaluation, so nothing more is paid for here.
    """
    from runner.embed_api import latency_summary

    passages = [api.passage_prefix + t for t in corpus]
    corpus_tokens = [t or 0.0 for t in embedder.tokens(passages, task="document")]
    query_tokens = [t or 0.0 for t in embedder.tokens([api.query_prefix + q for q in queries], task="query")]
    stats = embedder.stats
    logged = embedder.cache.request_log(embedder.model_key)
    latencies = stats.latencies or [seconds for _, _, seconds in logged]
    dim = int(embedder.dimension or 0)
    cost = api_cost(
        price_per_million=api.price_per_million_tokens,
        corpus_tokens=sum(corpus_tokens),
        query_tokens_mean=sum(query_tokens) / len(query_tokens) if query_tokens else 0.0,
        queries_per_month=queries_per_month,
    )
    return {
        "dimensions": dim,
        "max_tokens": api.max_input_tokens,
        "parameters": None,
        "truncation": {**truncation(corpus_tokens, api.max_input_tokens), "estimated": True},
        "throughput": {
            "texts_per_s": round(stats.texts / stats.seconds, 2) if stats.texts and stats.seconds > 0 else None,
            **latency_summary(latencies),
            "requests": stats.requests,
            "from_cache": stats.cached,
        },
        "index_bytes": index_bytes(passages=len(passages), dim=dim),
        "cost": {
            "price_per_million": api.price_per_million_tokens,
            "tokens_spent": round(stats.tokens, 1),
            "corpus_tokens": round(sum(corpus_tokens), 1),
            "spent": stats.tokens * api.price_per_million_tokens / 1e6,
            "queries_per_month": queries_per_month,
            **cost,
        },
    }


def detect_languages(texts: dict[str, str]) -> dict[str, str]:
    """Language (ISO 639-1) of each text, by py3langid (a maintained fork of langid.py, its model bundled).

    Only the model's two-letter (ISO 639-1) languages are candidates: with its regional and historical
    varieties as well, short English questions came out as Nigerian Pidgin (3 of the demo's 102 test queries).
    """
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE)
    identifier.set_languages([code for code in identifier.nb_classes if len(code) == 2])
    return {key: identifier.classify(text)[0] for key, text in texts.items()}


def language_fit(
    languages: dict[str, str], *, declared: list[str] | None, per_query: dict[str, dict[str, float]], main: str
) -> dict[str, Any]:
    """Queries by detected language, those a candidate does not declare, and the main metric per language.

    Args:
        languages: Query id -> detected language.
        declared: The candidate's `languages` (None: not declared).
        per_query: The candidate's per-query test scores.
        main: The main metric.

    """
    counts = Counter(languages[q] for q in per_query if q in languages)
    by_language: dict[str, float] = {}
    for lang in counts:
        values = [row[main] for q, row in per_query.items() if languages.get(q) == lang and main in row]
        if values:
            by_language[lang] = sum(values) / len(values)
    undeclared = {lang: n for lang, n in counts.items() if declared is not None and lang not in declared}
    return {
        "declared": declared,
        "queries": dict(counts),
        "undeclared": undeclared,
        "by_language": by_language,
    }
