"""Encoding, exact top-k retrieval and IR metrics (computed by pytrec_eval, the trec_eval bindings)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from runner.spec import ModelSpec

log = logging.getLogger(__name__)

_TREC_MEASURE = {"recall": "recall", "ndcg": "ndcg_cut", "map": "map_cut", "precision": "P"}


@dataclass
class EvalResult:
    """Metrics of one model on one split.

    Attributes:
        metrics: Mean over the split's judged queries, by flat key (``ndcg@10``).
        per_query: Query id -> metric key -> value.
        run: Query id -> {document id: score} of the retrieved top-k (kept for reports and examples).
        seconds: Wall time spent encoding and ranking.

    """

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    run: dict[str, dict[str, float]] = field(repr=False, default_factory=dict)
    seconds: float = 0.0


def inference_settings(model: SentenceTransformer, batch_size: int | None, precision: str) -> tuple[int, str]:
    """Resolve ``eval.batch_size`` (None: 512 on GPUs, 64 elsewhere) and ``eval.precision`` for the model's device."""
    from runner.device import inference_settings as settings

    return settings(model.device.type, batch_size, precision)


def encode(
    model: SentenceTransformer,
    texts: list[str],
    *,
    batch_size: int | None,
    normalize: bool,
    description: str | None,
    precision: str = "auto",
) -> torch.Tensor:
    """Embed texts on the model's device, longest first, under autocast, with a progress bar.

    Args:
        model: The model.
        texts: Texts, prefixes already applied.
        batch_size: Texts per forward pass (None: by device, see :func:`inference_settings`).
        normalize: L2-normalise the embeddings.
        description: Label of the progress bar (None: no bar, the caller draws its own).
        precision: auto, fp32, bf16 or fp16 autocast (see :func:`inference_settings`).

    Returns:
        A (len(texts), dim) fp32 tensor in input order, on the model's device.

    """
    import torch

    from runner.progress import task

    batch_size, precision = inference_settings(model, batch_size, precision)
    device = model.device.type
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: torch.Tensor | None = None
    chunk = batch_size * 8
    bar_task = task(description or "", len(texts), show=description is not None)
    with bar_task as (bar, tid), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        for start in range(0, len(order), chunk):
            idx = order[start : start + chunk]
            emb = model.encode(
                [texts[i] for i in idx],
                batch_size=batch_size,
                convert_to_tensor=True,
                normalize_embeddings=normalize,
                show_progress_bar=False,
            ).float()
            if out is None:
                out = torch.empty((len(texts), emb.shape[1]), dtype=torch.float32, device=emb.device)
            out[torch.as_tensor(idx, device=emb.device)] = emb
            bar.advance(tid, len(idx))
    if out is None:
        raise ValueError("nothing to encode")
    return out


def top_k(queries: torch.Tensor, corpus: torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by dot product, in query chunks so memory stays bounded.

    Returns:
        (scores, indices), each (n_queries, min(k, n_corpus)), best first.

    """
    import torch

    k = min(k, corpus.shape[0])
    scores, indices = [], []
    if k == 0:
        empty = torch.empty((queries.shape[0], 0))
        return empty, empty.long()
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start : start + chunk] @ corpus.T
        s, i = torch.topk(sim, k, dim=1)
        scores.append(s)
        indices.append(i)
    return torch.cat(scores).cpu(), torch.cat(indices).cpu()


def trec_measures(metrics: list[str]) -> dict[str, str]:
    """Map flat metric keys to pytrec_eval measure names (``ndcg@10`` -> ``ndcg_cut_10``)."""
    out = {}
    for key in metrics:
        name, k = key.split("@")
        out[key] = "recip_rank" if name == "mrr" else f"{_TREC_MEASURE[name]}_{k}"
    return out


def ranked(docs: dict[str, float]) -> list[tuple[str, float]]:
    """Documents in trec_eval's order: score descending, ties broken by document id descending."""
    return sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)


def score_run(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], metrics: list[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Compute metrics of a ranked run with pytrec_eval.

    MRR@k is trec_eval's reciprocal rank over the run truncated to its top k.

    Args:
        qrels: Query id -> {document id: grade}; grades > 0 are relevant.
        run: Query id -> {document id: score}.
        metrics: Flat keys (``recall@10``, ``ndcg@10``, ``mrr@10``, ``map@100``, ``precision@5``).

    Returns:
        (means over the judged queries, per-query values).

    """
    import pytrec_eval

    mapping = trec_measures(metrics)
    per_query: dict[str, dict[str, float]] = {q: {} for q in qrels}
    plain = {k: v for k, v in mapping.items() if v != "recip_rank"}
    if plain:
        cutoffs: dict[str, set[str]] = {}
        for measure in plain.values():
            family, k = measure.rsplit("_", 1)
            cutoffs.setdefault(family, set()).add(k)
        requested = {f"{family}.{','.join(sorted(ks, key=int))}" for family, ks in cutoffs.items()}
        result = pytrec_eval.RelevanceEvaluator(qrels, requested).evaluate(run)
        for key, measure in plain.items():
            for qid in qrels:
                # trec_eval leaves out queries without any retrieved document: they score 0.
                per_query[qid][key] = result[qid][measure] if qid in result else 0.0
    for key, measure in mapping.items():
        if measure != "recip_rank":
            continue
        k = int(key.split("@")[1])
        cut = {q: dict(ranked(d)[:k]) for q, d in run.items()}
        result = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
        for qid in qrels:
            per_query[qid][key] = result.get(qid, {}).get("recip_rank", 0.0)
    means = {key: sum(v[key] for v in per_query.values()) / max(len(per_query), 1) for key in metrics}
    return means, per_query


class CorpusIndex:
    """Document ids and texts of a corpus, with embeddings cached per model label.

    With `disk` set, the base model's embeddings are also kept on disk as ``<disk>/<key>.pt``, where the key
    (given by the caller) identifies the model's files and settings; the corpus text is hashed into it here.
    """

    def __init__(self, corpus: dict[str, str], disk: Path | None = None, base_key: str | None = None):
        self.ids = list(corpus)
        self.texts = [corpus[i] for i in self.ids]
        self.embeddings: dict[str, torch.Tensor] = {}
        self.disk = disk
        self.base_key = base_key
        self.encodes = 0
        """How many times a model encoded the whole corpus here (reads from the disk cache do not count)."""

    def _disk_path(self, spec: ModelSpec, device: str, precision: str) -> Path | None:
        if self.disk is None or self.base_key is None:
            return None
        from runner.memo import embedding_cache_path

        return embedding_cache_path(
            self.disk,
            base_key=self.base_key,
            model=spec,
            ids=self.ids,
            texts=self.texts,
            device=device,
            precision=precision,
        )

    def embed(
        self,
        label: str | None,
        model: SentenceTransformer,
        spec: ModelSpec,
        batch_size: int | None,
        precision: str = "auto",
    ) -> torch.Tensor:
        """Corpus embeddings of `model`, computed once per label ("base", "tuned"); label None: no caching."""
        import torch

        if label is not None and label in self.embeddings:
            return self.embeddings[label]
        batch_size, precision = inference_settings(model, batch_size, precision)
        path = self._disk_path(spec, model.device.type, precision) if label == "base" else None
        if path is not None and path.exists():
            try:
                emb = torch.load(path, map_location=model.device, weights_only=True)
                if emb.shape[0] == len(self.texts):
                    log.info("corpus embeddings of the base model read from %s", path)
                    self.embeddings[label] = emb
                    return emb
            except Exception as exc:  # a damaged cache file (torch raises many kinds) is encoded again
                log.warning("ignoring unreadable embedding cache %s: %s: %s", path, type(exc).__name__, exc)
        texts = [spec.passage_prefix + t for t in self.texts]
        self.encodes += 1
        emb = encode(
            model,
            texts,
            batch_size=batch_size,
            normalize=spec.normalize,
            description=f"encode corpus ({label or 'dev'})",
            precision=precision,
        )
        if label is not None:
            self.embeddings[label] = emb
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(emb.cpu(), tmp)
            tmp.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one
        return emb


def evaluate(
    model: SentenceTransformer,
    *,
    label: str | None,
    index: CorpusIndex,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    spec: ModelSpec,
    metrics: list[str],
    depth: int,
    batch_size: int | None,
    allowed: set[str] | None = None,
    precision: str = "auto",
    dim: int | None = None,
) -> EvalResult:
    """Retrieve for every judged query over the whole corpus (or its `allowed` part) and score the ranking.

    Args:
        model: The model to evaluate.
        label: Cache label of the model's corpus embeddings in `index` (None: encode afresh, uncached).
        index: The corpus.
        queries: All query texts (only judged ones are used).
        qrels: Judgements of the split.
        spec: Model section (prefixes, normalisation).
        metrics: Flat metric keys.
        depth: Results retrieved per query.
        batch_size: Encoding batch size (None: by device).
        allowed: Only these document ids are retrieved (a metadata filter); None: all.
        precision: Inference precision (``eval.precision``).
        dim: Score the first `dim` dimensions of the embeddings only, re-normalised (cosine), as a Matryoshka
            model is used with a smaller index; None: all of them.

    """
    import time

    import torch

    started = time.perf_counter()
    corpus_emb = index.embed(label, model, spec, batch_size, precision)
    qids = list(qrels)
    q_emb = encode(
        model,
        [spec.query_prefix + queries[q] for q in qids],
        batch_size=batch_size,
        normalize=spec.normalize,
        description=f"encode queries ({label or 'dev'})",
        precision=precision,
    )
    if dim is not None:
        corpus_emb = torch.nn.functional.normalize(corpus_emb[:, :dim], dim=1)
        q_emb = torch.nn.functional.normalize(q_emb[:, :dim], dim=1)
    ids = index.ids
    if allowed is not None:
        keep = [i for i, d in enumerate(index.ids) if d in allowed]
        corpus_emb = corpus_emb[torch.as_tensor(keep, dtype=torch.long, device=corpus_emb.device)]
        ids = [index.ids[i] for i in keep]
    scores, indices = top_k(q_emb.to(corpus_emb.device), corpus_emb, depth)
    run = {
        qid: {ids[j]: float(s) for s, j in zip(scores[row].tolist(), indices[row].tolist())}
        for row, qid in enumerate(qids)
    }
    means, per_query = score_run(qrels, run, metrics)
    return EvalResult(means, per_query, run, time.perf_counter() - started)
