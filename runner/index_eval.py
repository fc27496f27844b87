"""What a vector database's approximate search costs: the test split through its own index beside exact search.

Given the corpus and query embeddings of one model, :func:`evaluate_index` builds a collection (Chroma's HNSW,
see :mod:`runner.vectordb`), asks it every query one at a time (latency p50/p95), and scores both rankings with
pytrec_eval: NDCG@k and Recall@k of the approximate and the exact top k, and the share of the exact top k that
the approximate search finds (its recall against exact search). Build time and size on disk are measured too.
The collection is a throwaway: it is dropped afterwards (and a temporary embedded folder removed).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from runner.matrix import DiskMatrix
    from runner.spec import IndexEvalSpec

log = logging.getLogger(__name__)

WRITE_BATCH = 5000


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def evaluate_index(
    *,
    corpus_ids: list[str],
    corpus_emb: torch.Tensor | DiskMatrix,
    query_ids: list[str],
    query_emb: torch.Tensor,
    qrels: dict[str, dict[str, int]],
    settings: IndexEvalSpec,
) -> dict[str, Any]:
    """Score approximate (the database's index) against exact top-k retrieval.

    Args:
        corpus_ids: Passage ids, rows of `corpus_emb`.
        corpus_emb: (n, dim) passage embeddings of the model, in memory or on disk (``eval.memory_mb``: written
            and searched exactly a block at a time).
        query_ids: Query ids, rows of `query_emb`.
        query_emb: (m, dim) query embeddings (prefix applied, normalised as the model's spec says).
        qrels: Judgements of the split.
        settings: ``eval.index``: database URI (None: a temporary embedded folder), k, HNSW settings.

    Returns:
        ``{backend, uri, k, hnsw, passages, queries, build_seconds, size_bytes, latency_ms: {p50, p95},
        exact: {ndcg@k, recall@k}, ann: {...}, recall_vs_exact@k}``.

    """
    from runner.evaluate import exact_top_k, score_run
    from runner.matrix import iter_blocks
    from runner.vectordb import drop_collection, open_collection, redact

    k = settings.k
    metrics = [f"ndcg@{k}", f"recall@{k}"]
    hnsw = {
        "ef_construction": settings.ef_construction,
        "ef_search": settings.ef_search,
        "max_neighbors": settings.max_neighbors,
    }
    temp = None if settings.uri else Path(tempfile.mkdtemp(prefix="embx-index-eval-"))
    uri = settings.uri or str(temp)
    name = f"embx-eval-{secrets.token_hex(4)}"
    queries = query_emb.detach().float().cpu()
    try:
        index = open_collection(uri, name, create=True, hnsw=hnsw)
        started = time.perf_counter()
        for first, block in iter_blocks(corpus_emb, WRITE_BATCH):
            vectors = block.detach().float().cpu().numpy()
            for start in range(0, len(vectors), WRITE_BATCH):
                part = vectors[start : start + WRITE_BATCH]
                ids = corpus_ids[first + start : first + start + len(part)]
                index.upsert(ids, part, [""] * len(ids), [{"passage_id": i} for i in ids])
        build = time.perf_counter() - started
        size = index.size_bytes()
        ann: dict[str, dict[str, float]] = {}
        latencies: list[float] = []
        q_vectors = queries.numpy()
        for row, qid in enumerate(query_ids):
            began = time.perf_counter()
            hits = index.search(q_vectors[row : row + 1], k)[0]
            latencies.append((time.perf_counter() - began) * 1000)
            ann[qid] = {h.id: h.score for h in hits}
    finally:
        try:
            drop_collection(uri, name)
        finally:
            if temp is not None:
                shutil.rmtree(temp, ignore_errors=True)
    scores, idx = exact_top_k(queries, corpus_emb, k)
    exact = {
        qid: {corpus_ids[j]: float(s) for s, j in zip(scores[row].tolist(), idx[row].tolist())}
        for row, qid in enumerate(query_ids)
    }
    judged = {q: d for q, d in qrels.items() if q in exact}
    exact_metrics, _ = score_run(judged, exact, metrics)
    ann_metrics, _ = score_run(judged, ann, metrics)
    overlap = [len(set(ann[q]) & set(exact[q])) / max(len(exact[q]), 1) for q in query_ids]
    result = {
        "backend": "chroma-hnsw",
        "uri": "temporary embedded folder" if temp else redact(str(uri)),
        "k": k,
        "hnsw": hnsw,
        "passages": len(corpus_ids),
        "queries": len(query_ids),
        "build_seconds": round(build, 3),
        "size_bytes": size,
        "latency_ms": {"p50": round(_percentile(latencies, 50), 3), "p95": round(_percentile(latencies, 95), 3)},
        "exact": {m: round(v, 4) for m, v in exact_metrics.items()},
        "ann": {m: round(v, 4) for m, v in ann_metrics.items()},
        f"recall_vs_exact@{k}": round(sum(overlap) / max(len(overlap), 1), 4),
    }
    log.info(
        "index eval: %d passages, ANN ndcg@%d %.4f vs exact %.4f, recall vs exact %.4f, p50 %.2f ms",
        len(corpus_ids),
        k,
        result["ann"][f"ndcg@{k}"],
        result["exact"][f"ndcg@{k}"],
        result[f"recall_vs_exact@{k}"],
        result["latency_ms"]["p50"],
    )
    return result
