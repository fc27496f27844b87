"""Evaluation beyond dense retrieval on the test split: BM25, hybrid, two-stage, mteb, extra sets, filters.

Called by the pipeline for the base and the tuned model; each returns flat metric keys -> values by source
(or set name), which the pipeline stores beside the dense ("native") metrics.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from runner.pipeline import Shared, content_key, data_key, fingerprint

if TYPE_CHECKING:
    from runner.spec import Spec

log = logging.getLogger(__name__)


def filtered_ids(spec: Spec, data) -> set[str] | None:
    """The passage ids `eval.filter` lets through (None: no filter)."""
    if not spec.eval.filter:
        return None
    from runner.retrieval import filter_ids

    allowed = filter_ids(data.meta, spec.eval.filter)
    if not allowed:
        raise ValueError(f"eval.filter {spec.eval.filter} matches no passage of {data.source}")
    return allowed


def other_retrievers(spec: Spec, data, dense_run, model, label: str, index, qrels, allowed, shared: Shared) -> dict:
    """Test metrics of the retrievers besides dense: bm25, hybrid (RRF of dense and bm25) and two-stage.

    Args:
        spec: The run's spec (eval.retrievers, eval.two_stage).
        data: The run's data (corpus, queries, coarse chunks and parent links).
        dense_run: Returns the model's dense run of the test queries at full depth (for hybrid).
        model: The model (base or tuned) for hybrid and two-stage.
        label: Its label in `index` ("base" or "tuned"), whose corpus embeddings two-stage reuses.
        index: The corpus index (fine chunks).
        qrels: Test judgements.
        allowed: Passage ids `eval.filter` lets through, or None.
        shared: The experiment's cache (the BM25 run is model-free and computed once).

    Returns:
        Source name -> flat metric key -> value.

    """
    from runner.evaluate import encode, score_run

    cfg, out = spec.eval, {}
    depth = cfg.depth
    queries = {q: data.queries[q] for q in qrels}
    if "bm25" in cfg.retrievers or "hybrid" in cfg.retrievers:
        from runner.retrieval import bm25_run

        bkey = content_key(data_key(spec), sorted(allowed or []), depth, sorted(qrels))
        if bkey not in shared.others:
            shared.others[bkey] = bm25_run(data.corpus, queries, depth, allowed)
        bm25 = shared.others[bkey]
        if "bm25" in cfg.retrievers:
            out["bm25"] = score_run(qrels, bm25, cfg.metrics)[0]
        if "hybrid" in cfg.retrievers:
            from runner.retrieval import fuse_rrf

            out["hybrid"] = score_run(qrels, fuse_rrf([dense_run(), bm25], depth), cfg.metrics)[0]
    if cfg.two_stage:
        from runner.retrieval import two_stage_run

        m = spec.model
        fine_emb = index.embed(
            label, model, m, cfg.batch_size, cfg.precision
        )  # the fine chunks are the corpus: already encoded
        coarse_ids = list(data.coarse)
        coarse_texts = [m.passage_prefix + data.coarse[c] for c in coarse_ids]
        coarse_emb = encode(model, coarse_texts, cfg.batch_size, m.normalize, "encode coarse chunks", cfg.precision)
        qids = list(qrels)
        q_texts = [m.query_prefix + queries[q] for q in qids]
        q_emb = encode(model, q_texts, cfg.batch_size, m.normalize, "encode queries (two-stage)", cfg.precision)
        run = two_stage_run(
            q_emb, coarse_ids, coarse_emb, index.ids, fine_emb, data.parents, qids, cfg.two_stage, depth, allowed
        )
        out["two-stage"] = score_run(qrels, run, cfg.metrics)[0]
    return out


def set_metrics(spec: Spec, model, label: str | None, shared: Shared) -> dict[str, dict[str, float]]:
    """Dense-retrieval metrics of `model` on each `eval.sets` entry, over that set's own corpus."""
    from runner.data import load_source
    from runner.evaluate import CorpusIndex, evaluate

    out = {}
    for entry in spec.eval.sets:
        key = content_key("set", entry.model_dump(mode="json"), fingerprint(entry.path))
        if key not in shared.data:
            shared.data[key] = load_source(entry.source, entry.path, [entry.split])
        data = shared.data[key]
        ikey = content_key(key, spec.model.model_dump(mode="json"), spec.eval.batch_size)
        if ikey not in shared.index:
            shared.index[ikey] = CorpusIndex(data.corpus)
        cfg = spec.eval
        result = evaluate(
            model,
            label,
            shared.index[ikey],
            data.queries,
            data.split(entry.split),
            spec.model,
            cfg.metrics,
            cfg.depth,
            cfg.batch_size,
            precision=cfg.precision,
        )
        out[entry.name] = result.metrics
        log.info("eval set %s (%s): %s %.4f", entry.name, label or "tuned", cfg.main, result.metrics[cfg.main])
    return out


def mteb_metrics(spec: Spec, model, data, test_qrels) -> dict[str, dict[str, float]]:
    """Scores of `model` by mteb's evaluation: the run's test split (``eval.mteb_local``) and hub tasks (``eval.mteb``).

    Returns:
        Split name ("test", or "mteb:<task>") -> flat metric key -> value; empty when mteb is not asked for.

    """
    cfg, out = spec.eval, {}
    if not (cfg.mteb_local or cfg.mteb):
        return out
    from runner import mteb_eval

    if cfg.mteb_local:
        out["test"] = mteb_eval.mteb_local_scores(
            model,
            spec.model,
            data.corpus,
            data.queries,
            test_qrels,
            cfg.metrics,
            cfg.batch_size,
            precision=cfg.precision,
        )
    if cfg.mteb:
        for task, scores in mteb_eval.mteb_hub_scores(
            model, spec.model, cfg.mteb, cfg.metrics, cfg.batch_size, cfg.precision
        ).items():
            out[f"mteb:{task}"] = scores
    return out
