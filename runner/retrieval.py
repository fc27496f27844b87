"""Retrieval besides exact dense search, for evaluation: BM25, RRF fusion, two-stage (coarse then fine), filters.

Every retriever returns a run, query id -> {document id: score} holding the top k, which
:func:`runner.evaluate.score_run` scores.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]

RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al. 2009)


def _stemmer() -> Any | None:
    """PyStemmer's English Snowball stemmer when installed (bm25s's recommended stemmer), else None."""
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        log.info("bm25: PyStemmer is not installed, tokens are not stemmed")
        return None
    return Stemmer.Stemmer("english")


_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_TOKEN = r"(?u)\b\w\w+\b|[\u3400-\u9fff\uf900-\ufaff]"
"""bm25s's own token pattern (words of 2+ characters), plus single CJK characters (one-character words)."""


def _segmented(texts: list[str]) -> list[str]:
    """Texts with Chinese runs cut into words (jieba's search mode, via rjieba) and spaced, others unchanged.

    Chinese puts no spaces between words, so a whitespace/regex tokenizer would make a sentence one token;
    search mode also emits the shorter words inside long ones (高血压 -> 血压, 高血压), as jieba advises for
    search engines.
    """
    if not any(_CJK.search(t) for t in texts):
        return texts
    import rjieba

    return [" ".join(rjieba.cut_for_search(t)) if _CJK.search(t) else t for t in texts]


def bm25_run(corpus: dict[str, str], queries: dict[str, str], k: int, allowed: set[str] | None = None) -> Run:
    """BM25 (bm25s, Lucene variant) over the corpus, or over the `allowed` passages only.

    Tokenisation: bm25s's (lowercase, words of 2+ characters), English stopwords removed, Snowball-stemmed when
    PyStemmer is installed; Chinese text is cut into words first (:func:`_segmented`) and its one-character
    words kept. Passages with no query term in common (score 0) are left out of the run.

    Args:
        corpus: Passage id -> text.
        queries: Query id -> text.
        k: Results per query (capped at the number of passages searched).
        allowed: Passage ids to search (a metadata filter); None searches the whole corpus.

    Returns:
        Query id -> {passage id: BM25 score}, every query present (possibly with no result).

    """
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its own logger to DEBUG when imported
    started = time.perf_counter()
    ids = [d for d in corpus if allowed is None or d in allowed]
    qids = list(queries)
    k = min(k, len(ids))
    if k <= 0 or not qids:
        return {q: {} for q in qids}
    stemmer = _stemmer()
    tokens = bm25s.tokenize(
        _segmented([corpus[d] for d in ids]), token_pattern=_TOKEN, stopwords="en", stemmer=stemmer, show_progress=False
    )
    if not tokens.vocab:  # no passage holds an indexable word: bm25s cannot build an index
        log.warning("bm25: none of the %d passages holds an indexable word", len(ids))
        return {q: {} for q in qids}
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    # Query tokens as strings: bm25s maps them onto the corpus vocabulary and ignores unknown ones.
    q_tokens = bm25s.tokenize(
        _segmented([queries[q] for q in qids]),
        token_pattern=_TOKEN,
        stopwords="en",
        stemmer=stemmer,
        return_ids=False,
        show_progress=False,
    )
    docs, scores = retriever.retrieve(q_tokens, k=k, show_progress=False)
    run = {
        qid: {ids[j]: float(s) for j, s in zip(docs[row].tolist(), scores[row].tolist()) if s > 0}
        for row, qid in enumerate(qids)
    }
    log.info(
        "bm25: %d queries over %d passages, top %d, in %.1fs", len(qids), len(ids), k, time.perf_counter() - started
    )
    return run


def fuse_rrf(runs: list[Run], k: int, rrf_k: int = RRF_K) -> Run:
    """Reciprocal rank fusion (Cormack et al. 2009) of runs, keeping the top k per query.

    A document at rank r (1-based, trec_eval's order: score, then document id, descending) of a run adds
    1 / (rrf_k + r); documents are ranked by the sum. Written out rather than taken from ranx: ranx.fuse computes
    the same sums but compiles numba kernels on its first call in a process, measured at 42 s on this project's
    2-core machine for a 53-query fusion that takes 0.2 ms here, and needs aligned query sets, non-empty runs and
    its own tie order.

    Args:
        runs: Query id -> {document id: score} runs (any score scale; only ranks matter).
        k: Results kept per fused query.
        rrf_k: The RRF constant (60, as in the paper and in ranx).

    Returns:
        The fused run over every query of any input run.

    """
    from runner.evaluate import ranked

    fused: Run = {}
    for q in dict.fromkeys(q for run in runs for q in run):
        scores: dict[str, float] = {}
        for run in runs:
            for rank, (doc, _) in enumerate(ranked(run.get(q, {})), start=1):
                scores[doc] = scores.get(doc, 0.0) + 1.0 / (rrf_k + rank)
        fused[q] = dict(ranked(scores)[:k])
    return fused


def two_stage_run(
    q_emb: torch.Tensor,
    *,
    coarse_ids: list[str],
    coarse_emb: torch.Tensor,
    fine_ids: list[str],
    fine_emb: torch.Tensor,
    parent_of: dict[str, str],
    qids: list[str],
    top_coarse: int,
    k: int,
    allowed: set[str] | None = None,
    chunk: int = 512,
) -> Run:
    """Coarse-to-fine dense retrieval: the top coarse chunks, then their fine chunks ranked by their own score.

    A query's candidates are the fine chunks whose parent is among its `top_coarse` best coarse chunks (dot
    product); they are ranked by their own dot product with the query. With `allowed`, only allowed fine chunks
    are candidates and only coarse chunks holding one are searched. Fine chunks without a known parent are never
    returned.

    Args:
        q_emb: (n_queries, dim) query embeddings, rows in `qids` order (L2-normalised).
        coarse_ids: Coarse chunk ids, rows of `coarse_emb`.
        coarse_emb: (n_coarse, dim) coarse chunk embeddings.
        fine_ids: Fine chunk ids, rows of `fine_emb`.
        fine_emb: (n_fine, dim) fine chunk embeddings.
        parent_of: Fine chunk id -> coarse chunk id.
        qids: Query ids.
        top_coarse: Coarse chunks kept per query.
        k: Fine chunks returned per query.
        allowed: Fine chunk ids that may be returned; None: all.
        chunk: Queries scored at a time (bounds memory at chunk x n_fine scores).

    Returns:
        Query id -> {fine chunk id: dense score} of at most k chunks.

    """
    import torch

    started = time.perf_counter()
    device = fine_emb.device
    coarse_row = {c: i for i, c in enumerate(coarse_ids)}
    # Parent row of each fine chunk; n_coarse (an always-unselected extra column) when it cannot be returned.
    n_coarse = len(coarse_ids)
    parent_rows = [
        coarse_row.get(parent_of.get(f, ""), n_coarse) if allowed is None or f in allowed else n_coarse
        for f in fine_ids
    ]
    orphans = sum(1 for f in fine_ids if parent_of.get(f) not in coarse_row)
    if orphans:
        log.warning(
            "two-stage: %d of %d fine chunks have no known coarse parent and are never returned", orphans, len(fine_ids)
        )
    parent_idx = torch.as_tensor(parent_rows, dtype=torch.long, device=device)
    # Coarse chunks with at least one returnable fine chunk.
    live = torch.zeros(n_coarse + 1, dtype=torch.bool, device=device)
    live[parent_idx] = True
    live = live[:n_coarse]
    n_live = int(live.sum())
    run: Run = {q: {} for q in qids}
    if n_live == 0 or k <= 0 or top_coarse <= 0:
        return run
    top_c = min(top_coarse, n_live)
    k = min(k, len(fine_ids))
    q_emb = q_emb.to(device=device, dtype=fine_emb.dtype)
    coarse_emb = coarse_emb.to(device=device, dtype=fine_emb.dtype)
    for start in range(0, len(qids), chunk):
        q = q_emb[start : start + chunk]
        c_scores = (q @ coarse_emb.T).float().masked_fill(~live, float("-inf"))
        top = torch.topk(c_scores, top_c, dim=1).indices
        selected = torch.zeros((q.shape[0], n_coarse + 1), dtype=torch.bool, device=device)
        selected.scatter_(1, top, True)
        selected[:, n_coarse] = False
        f_scores = (q @ fine_emb.T).float().masked_fill(~selected[:, parent_idx], float("-inf"))
        scores, idx = torch.topk(f_scores, k, dim=1)
        for row, (srow, irow) in enumerate(zip(scores.cpu().tolist(), idx.cpu().tolist())):
            run[qids[start + row]] = {fine_ids[j]: s for s, j in zip(srow, irow) if s != float("-inf")}
    log.info(
        "two-stage: %d queries, top %d of %d coarse, top %d fine, in %.1fs",
        len(qids),
        top_c,
        n_coarse,
        k,
        time.perf_counter() - started,
    )
    return run


def _matches(value: Any, wanted: Any) -> bool:
    """A metadata value against a filter value: a list filter means any of, a list value means contains."""
    values = value if isinstance(value, (list, tuple, set)) else [value]
    options = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
    return any(v == o for v in values for o in options)


def filter_ids(meta: dict[str, dict], where: dict[str, Any]) -> set[str]:
    """Ids whose metadata matches every key of `where`.

    A list in the filter means "any of these"; a list in the metadata means "contains". Both lists: they share a
    value. A key missing from an item's metadata never matches. An empty filter matches every id.

    Args:
        meta: Id -> metadata fields.
        where: Field -> wanted value (or list of accepted values).

    Returns:
        The matching ids.

    """
    return {i for i, m in meta.items() if all(key in m and _matches(m[key], want) for key, want in where.items())}
