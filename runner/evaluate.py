"""Encoding, exact top-k retrieval and IR metrics (computed by pytrec_eval, the trec_eval bindings)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from runner.matrix import DiskMatrix
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
    """Resolve ``eval.batch_size`` and ``eval.precision`` for the model's device (see runner.device)."""
    from runner.device import inference_settings as settings

    return settings(model.device.type, batch_size, precision)


def encode(
    model: SentenceTransformer,
    texts: list[str],
    *,
    task: Literal["query", "document"],
    batch_size: int | None,
    normalize: bool,
    description: str | None,
    precision: str = "auto",
) -> torch.Tensor:
    """Embed texts on the model's device, longest first, under autocast, with a progress bar.

    Args:
        model: The model.
        texts: Texts, prefixes already applied.
        task: What the texts are: sentence-transformers routes them through the matching branch of a model with a
            Router (a query adapter applies to queries only); a plain model encodes both alike.
        batch_size: Texts per forward pass (None: by device, see :func:`inference_settings`).
        normalize: L2-normalise the embeddings.
        description: Label of the progress bar (None: no bar, the caller draws its own).
        precision: auto, fp32, bf16 or fp16 autocast (see :func:`inference_settings`).

    Returns:
        A (len(texts), dim) fp32 tensor in input order, on the model's device.

    """
    import torch

    from runner.progress import task as progress_task

    batch_size, precision = inference_settings(model, batch_size, precision)
    device = model.device.type
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: torch.Tensor | None = None
    chunk = batch_size * 8
    bar_task = progress_task(description or "", len(texts), show=description is not None)
    with bar_task as (bar, tid), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        for start in range(0, len(order), chunk):
            idx = order[start : start + chunk]
            emb = model.encode(
                [texts[i] for i in idx],
                task=task,
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


def top_k_blocks(
    queries: torch.Tensor, blocks: Iterable[tuple[torch.Tensor, torch.Tensor]], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by dot product over blocks of rows, each block's top k merged into a running top k.

    The result is the top k of the whole matrix (ties aside), with one block in memory at a time.

    Args:
        queries: (n_queries, dim) query embeddings.
        blocks: (global row numbers (n,), (n, dim) rows) per block; the rows may be a subset (a filter).
        k: Results per query.

    Returns:
        (scores, row numbers), each (n_queries, min(k, rows seen)), best first, on the CPU.

    """
    import torch

    best_s = torch.empty((queries.shape[0], 0))
    best_i = torch.empty((queries.shape[0], 0), dtype=torch.long)
    for rows, block in blocks:
        if block.shape[0] == 0:
            continue
        s, i = top_k(queries, block.to(queries.device, dtype=queries.dtype), k)
        s = torch.cat([best_s, s], dim=1)
        i = torch.cat([best_i, rows.cpu()[i]], dim=1)
        best_s, order = torch.topk(s, min(k, s.shape[1]), dim=1)
        best_i = torch.gather(i, 1, order)
    return best_s, best_i


def exact_top_k(
    queries: torch.Tensor,
    corpus: torch.Tensor | DiskMatrix,
    k: int,
    *,
    dim: int | None = None,
    keep: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k over corpus embeddings in memory or on disk (``eval.memory_mb``), with truncation and a filter.

    Args:
        queries: (n_queries, d) query embeddings.
        corpus: (n_corpus, d) embeddings: a tensor, or a :class:`~runner.matrix.DiskMatrix` searched block by block.
        k: Results per query (capped at the rows searched).
        dim: Score the first `dim` dimensions only, re-normalised (a Matryoshka model's smaller index); None: all.
        keep: Corpus rows that may be returned, ascending (a metadata filter); None: all.

    Returns:
        (scores, corpus row numbers), each (n_queries, min(k, rows searched)), best first, on the CPU.

    """
    import torch

    from runner.matrix import DiskMatrix

    def shaped(block: torch.Tensor) -> torch.Tensor:
        return block if dim is None else torch.nn.functional.normalize(block[:, :dim], dim=1)

    queries = shaped(queries)
    if not isinstance(corpus, DiskMatrix):
        if keep is None:
            return top_k(queries.to(corpus.device), shaped(corpus), k)
        rows = torch.as_tensor(keep, dtype=torch.long)
        scores, indices = top_k(queries.to(corpus.device), shaped(corpus[rows.to(corpus.device)]), k)
        return scores, rows[indices] if indices.numel() else indices
    wanted = None
    if keep is not None:
        wanted = torch.zeros(corpus.shape[0], dtype=torch.bool)
        wanted[torch.as_tensor(keep, dtype=torch.long)] = True

    def blocks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start, block in corpus.blocks():
            rows = torch.arange(start, start + block.shape[0])
            if wanted is not None:
                picked = wanted[start : start + block.shape[0]]
                rows, block = rows[picked], block[picked]
            yield rows, shaped(block)

    return top_k_blocks(queries, blocks(), k)


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

    With `memory_mb` set and a corpus whose embedding matrix (passages x dim x 4 bytes) is larger, embeddings
    are encoded a block at a time into a :class:`~runner.matrix.DiskMatrix` (``<key>.npy`` for the base model,
    a temporary file for others, in `disk`, or else `spill`) and searched block by block: the same top k, with
    one block in memory.
    """

    def __init__(
        self,
        corpus: dict[str, str],
        disk: Path | None = None,
        base_key: str | None = None,
        *,
        memory_mb: float | None = None,
        spill: Path | None = None,
    ):
        self.ids = list(corpus)
        self.texts = [corpus[i] for i in self.ids]
        self.embeddings: dict[str, torch.Tensor | DiskMatrix] = {}
        self.disk = disk
        self.base_key = base_key
        self.memory_mb = memory_mb
        self.spill = spill
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
    ) -> torch.Tensor | DiskMatrix:
        """Corpus embeddings of `model`, computed once per label ("base", "tuned"); label None: no caching.

        A tensor, or a :class:`~runner.matrix.DiskMatrix` when the matrix would exceed `memory_mb`. A query
        adapter's passages embed as the base model's: its label is "base", so they are not encoded again.
        """
        import torch

        from runner.models import documents_are_base

        label = "base" if documents_are_base(model) else label
        if label is not None and label in self.embeddings:
            return self.embeddings[label]
        batch_size, precision = inference_settings(model, batch_size, precision)
        path = self._disk_path(spec, model.device.type, precision) if label == "base" else None
        if self._over_budget(model):
            emb = self._embed_to_disk(label, model, spec, batch_size, precision, path)
            if label is not None:
                self.embeddings[label] = emb
            return emb
        if path is not None and path.exists():
            try:
                emb = torch.load(path, map_location=model.device, weights_only=True)
                if emb.shape[0] == len(self.texts):
                    log.info("corpus embeddings of the base model read from %s", path)
                    self.embeddings[label] = emb
                    return emb
            except Exception as exc:  # a damaged cache file (torch raises many kinds) is encoded again
                log.warning("ignoring unreadable embedding cache %s: %s: %s", path, type(exc).__name__, exc)
        self.encodes += 1
        emb = self._encode(self.texts, model, spec, batch_size, precision, f"encode corpus ({label or 'dev'})")
        if label is not None:
            self.embeddings[label] = emb
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(emb.cpu(), tmp)
            tmp.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one
        return emb

    def _encode(self, texts, model, spec: ModelSpec, batch_size: int, precision: str, description: str | None):
        """Passages of this corpus, prefixed and encoded as documents."""
        prefixed = [spec.passage_prefix + t for t in texts]
        common = {"batch_size": batch_size, "normalize": spec.normalize, "precision": precision}
        return encode(model, prefixed, task="document", description=description, **common)

    def _over_budget(self, model: SentenceTransformer) -> bool:
        from runner.matrix import matrix_bytes
        from runner.models import embedding_dim

        if self.memory_mb is None:
            return False
        dim = embedding_dim(model)
        return matrix_bytes(len(self.texts), dim) > self.memory_mb * 2**20

    def _embed_to_disk(
        self,
        label: str | None,
        model: SentenceTransformer,
        spec: ModelSpec,
        batch_size: int,
        precision: str,
        cache: Path | None,
    ) -> DiskMatrix:
        """Encode the corpus a block at a time into a DiskMatrix (read back from `cache` when it is there)."""
        import tempfile

        from runner.matrix import DiskMatrix, block_rows
        from runner.models import embedding_dim
        from runner.progress import task

        assert self.memory_mb is not None
        dim = embedding_dim(model)
        rows = block_rows(self.memory_mb, dim)
        npy = cache.with_suffix(".npy") if cache is not None else None
        if npy is not None and npy.exists():
            try:
                found = DiskMatrix(npy, block=rows)
                if found.shape == (len(self.texts), dim):
                    log.info("corpus embeddings of the base model read block by block from %s", npy)
                    return found
            except ValueError as exc:
                log.warning("ignoring unreadable embedding cache %s: %s", npy, exc)
        folder = self.disk or self.spill
        if folder is None:
            raise ValueError("eval.memory_mb needs a folder for the corpus embeddings (output.dir)")
        folder.mkdir(parents=True, exist_ok=True)
        if npy is None:
            handle, name = tempfile.mkstemp(prefix=f"embx-{label or 'dev'}-", suffix=".npy", dir=folder)
            os.close(handle)
            target = Path(name)
        else:
            target = npy
        log.info(
            "corpus embeddings (%d x %d) exceed eval.memory_mb=%g: encoding blocks of %d passages into %s",
            len(self.texts),
            dim,
            self.memory_mb,
            rows,
            target,
        )
        self.encodes += 1

        def blocks():
            with task(f"encode corpus ({label or 'dev'}, to disk)", len(self.texts)) as (bar, tid):
                for start in range(0, len(self.texts), rows):
                    part = self.texts[start : start + rows]
                    yield self._encode(part, model, spec, batch_size, precision, None)
                    bar.advance(tid, len(part))

        try:
            return DiskMatrix.write(target, blocks(), rows=len(self.texts), dim=dim, block=rows, temporary=npy is None)
        except BaseException:
            if npy is None:
                target.unlink(missing_ok=True)
            raise


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

    started = time.perf_counter()
    corpus_emb = index.embed(label, model, spec, batch_size, precision)
    qids = list(qrels)
    q_emb = encode(
        model,
        [spec.query_prefix + queries[q] for q in qids],
        task="query",
        batch_size=batch_size,
        normalize=spec.normalize,
        description=f"encode queries ({label or 'dev'})",
        precision=precision,
    )
    keep = None if allowed is None else [i for i, d in enumerate(index.ids) if d in allowed]
    scores, indices = exact_top_k(q_emb, corpus_emb, depth, dim=dim, keep=keep)
    ids = index.ids
    run = {
        qid: {ids[j]: float(s) for s, j in zip(scores[row].tolist(), indices[row].tolist())}
        for row, qid in enumerate(qids)
    }
    means, per_query = score_run(qrels, run, metrics)
    return EvalResult(means, per_query, run, time.perf_counter() - started)
