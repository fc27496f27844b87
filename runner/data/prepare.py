"""The documents source: a folder of documents -> chunks -> queries -> train/dev/test split by document.

The result is an ordinary :class:`RetrievalData` (corpus = fine chunks, one qrels split per role), so
negatives, training and evaluation treat it like any other source.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from runner.data.types import DataError, RetrievalData, Skipped

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from runner.spec import Spec

log = logging.getLogger(__name__)

NOT_CORPUS = ("SOURCE.md", "README.md")
"""Files at the top of a documents folder that describe it and are not part of it."""


def embedder(model: SentenceTransformer, batch_size: int | None = None, precision: str = "auto"):
    """A function texts -> L2-normalised embeddings (numpy rows) with `model`, through embx's own encoder."""
    from runner.evaluate import encode

    def embed(texts: list[str]) -> np.ndarray:
        return (
            encode(
                model,
                texts,
                task="document",
                batch_size=batch_size,
                normalize=True,
                description="embed texts (checks, chunking)",
                precision=precision,
            )
            .cpu()
            .numpy()
        )

    return embed


def split_documents(doc_ids: list[str], shares: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Assign whole documents to train/dev/test by the given shares (seeded; every non-empty share gets >= 1)."""
    ids = sorted(doc_ids)
    random.Random(seed).shuffle(ids)
    n = len(ids)
    n_test = max(1, round(shares[2] * n)) if shares[2] > 0 else 0
    n_dev = max(1, round(shares[1] * n)) if shares[1] > 0 else 0
    if n - n_test - n_dev < 1:
        raise DataError([f"{n} document(s) with queries are too few for train/dev/test shares {list(shares)}"])
    roles = ["test"] * n_test + ["dev"] * n_dev + ["train"] * (n - n_test - n_dev)
    return dict(zip(ids, roles))


def prepare_documents(spec: Spec, model: SentenceTransformer, cache_dir: Path) -> RetrievalData:
    """Read, chunk and generate queries for the documents folder of `spec`.

    Args:
        spec: The run's spec (data.source documents; chunking; queries).
        model: The base model: its tokenizer sizes the chunks; it embeds sentences for semantic chunking.
        cache_dir: Folder for the LLM answer cache when ``queries.llm.cache`` is not set.

    Returns:
        The data, with splits named as ``data.splits`` says, chunk metadata, coarse chunks and parent links,
        everything skipped (with reasons) and the preparation statistics.

    Raises:
        DataError: When no usable document, chunk or query remains.

    """
    from runner.data.chunking import chunk_documents
    from runner.data.documents import read_documents
    from runner.data.queries import generate_queries

    folder = Path(spec.data.path)
    if not folder.is_dir():
        raise DataError([f"{folder}: documents folder not found"])
    docs, skipped = read_documents(folder)
    kept = []
    for doc in docs:
        if doc.doc_id in NOT_CORPUS:
            skipped.append(Skipped(doc.doc_id, "describes the folder (not part of the corpus)"))
        else:
            kept.append(doc)
    if not kept:
        raise DataError([f"{folder}: no readable document", *(f"{s.item}: {s.reason}" for s in skipped)])
    chunks, chunk_skips = chunk_documents(
        kept, spec.chunking, model.tokenizer, embedder(model, spec.eval.batch_size, spec.eval.precision)
    )
    skipped += chunk_skips
    fine = [c for c in chunks if c.level == "fine"]
    if not fine:
        raise DataError([f"{folder}: chunking produced no passage"])
    by_id = {d.doc_id: d for d in kept}
    llm_cache = None
    if spec.queries.generator == "llm":
        llm_cache = Path(spec.queries.llm.cache) if spec.queries.llm.cache else cache_dir / f"{spec.name}.jsonl"
    generated = generate_queries(fine, by_id, spec.queries, llm_cache, folder)
    skipped += generated.skipped
    if not generated.queries:
        raise DataError([f"{folder}: no query was generated ({spec.queries.generator})"])

    roles = split_documents(list({q.doc_id for q in generated.queries}), spec.data.split_shares, spec.queries.seed)
    names = {"train": spec.data.splits.train, "dev": spec.data.splits.dev, "test": spec.data.splits.test}
    # One query per distinct (document, text): a heading shared by several chunks has several positives.
    grouped: dict[tuple[str, str], list] = defaultdict(list)
    for q in generated.queries:
        grouped[q.doc_id, q.text].append(q)
    queries, qrels, positives = {}, defaultdict(dict), {}
    texts = {c.chunk_id: c.text for c in fine}
    masked: dict[str, list[str]] = defaultdict(list)  # chunk -> sentences taken out of it by eval queries
    for n, ((doc_id, text), group) in enumerate(sorted(grouped.items())):
        qid = f"q{n}"
        role = roles[doc_id]
        if names[role] is None:  # no dev split in the spec: its documents are not used
            continue
        queries[qid] = text
        qrels[names[role]][qid] = {q.chunk_id: 1 for q in group}
        for q in group:
            if q.masked:
                if role == "train":
                    positives[qid] = _without(texts[q.chunk_id], [q.masked])
                else:
                    masked[q.chunk_id].append(q.masked)
    corpus = {c.chunk_id: _without(c.text, masked.get(c.chunk_id, [])) for c in fine}
    # A coarse chunk holds its fine chunks' text: the sentences taken out of them go from it too.
    coarse_masked: dict[str, list[str]] = defaultdict(list)
    for c in fine:
        if c.parent_id and c.chunk_id in masked:
            coarse_masked[c.parent_id] += masked[c.chunk_id]
    coarse = {c.chunk_id: _without(c.text, coarse_masked.get(c.chunk_id, [])) for c in chunks if c.level == "coarse"}
    meta = {c.chunk_id: {**c.meta, "heading_path": c.heading_path, "doc_id": c.doc_id} for c in fine}
    split_docs = defaultdict(int)
    for role in roles.values():
        split_docs[role] += 1
    notes = {
        "documents": len(kept),
        "skipped": len(skipped),
        "chunks_fine": len(fine),
        "chunks_coarse": sum(1 for c in chunks if c.level == "coarse"),
        "documents_by_split": dict(split_docs),
        "queries": generated.stats,
        "generator": spec.queries.generator,
        "chunking": spec.chunking.strategy,
    }
    log.info(
        "documents: %d read, %d chunks, %d queries (%s); documents by split %s; %d item(s) skipped",
        len(kept),
        len(fine),
        len(queries),
        spec.queries.generator,
        dict(split_docs),
        len(skipped),
    )
    return RetrievalData(
        corpus=corpus,
        queries=queries,
        qrels=dict(qrels),
        source=str(folder),
        positives=positives,
        meta=meta,
        coarse=coarse,
        parents={c.chunk_id: c.parent_id for c in fine if c.parent_id},
        skipped=skipped,
        notes=notes,
    )


def _without(text: str, sentences: list[str]) -> str:
    """`text` with each of `sentences` removed once (whitespace tidied)."""
    import re

    for sentence in sentences:
        text = text.replace(sentence, " ", 1)
    return re.sub(r"[ \t]+", " ", text).strip()
