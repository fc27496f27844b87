"""Plain data containers shared by the data sources, negatives, training and evaluation."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DataError(Exception):
    """Bad input data: every problem found, each naming its file and, where known, its line."""

    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        n = len(self.problems)
        shown = self.problems[:20]
        more = [f"... and {n - len(shown)} more"] if n > len(shown) else []
        return "\n".join([f"{n} data problem{'s' if n != 1 else ''}:", *(f"  {p}" for p in shown), *more])


@dataclass
class Pair:
    """One training example: a query, one positive passage and optional explicit negatives."""

    query: str
    positive: str
    query_id: str | None = None
    positive_id: str | None = None
    negatives: list[str] = field(default_factory=list)
    teacher_scores: list[float] | None = None
    """The teacher's logits for the positive, then each negative (distillation losses); None without one."""


@dataclass
class RetrievalData:
    """A retrieval dataset: one corpus, queries and graded relevance judgements per split.

    Attributes:
        corpus: Document id -> text to embed (title and body joined by a space).
        queries: Query id -> text.
        qrels: Split -> query id -> {document id: relevance grade}; only grades > 0 count as positives.
        train_pairs: Explicit training pairs (JSONL sources); None means "derive them from the train qrels".
        source: Human-readable origin, for the store.
        positives: Query id -> the positive text to train on when it differs from the corpus passage (ICT
            queries: the chunk without the sentence that became the query).
        meta: Document id -> metadata (documents source: source file, title, heading path, front matter),
            used by `eval.filter`.
        coarse: Coarse chunk id -> text (chunking levels [coarse, fine]).
        parents: Fine chunk id -> its coarse chunk id.
        skipped: Inputs left out while preparing the data, with reasons (for the data card).
        notes: Preparation statistics (documents, chunks, query generation counts) for the data card.

    """

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]
    train_pairs: list[Pair] | None = None
    source: str = ""
    positives: dict[str, str] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    coarse: dict[str, str] = field(default_factory=dict)
    parents: dict[str, str] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> dict[str, dict[str, int]]:
        """Relevance judgements of one split.

        Raises:
            DataError: If the split does not exist or holds no query with a positive.

        """
        if name not in self.qrels:
            known = ", ".join(sorted(self.qrels)) or "none"
            raise DataError([f"{self.source}: split {name!r} not found (splits present: {known})"])
        judged = {q: docs for q, docs in self.qrels[name].items() if any(g > 0 for g in docs.values())}
        if not judged:
            raise DataError([f"{self.source}: split {name!r} has no query with a positive document"])
        return judged

    def pairs(self, split: str, limit: int | None = None, seed: int = 42) -> list[Pair]:
        """Training pairs: explicit ones, or one (query, positive) per positive judgement of `split`.

        Args:
            split: The qrels split to draw from when no explicit pairs were loaded.
            limit: Keep at most this many pairs, a seeded random sample (stable for a given seed).
            seed: Seed of that sample.

        """
        if self.train_pairs is not None:
            pairs = list(self.train_pairs)
        else:
            pairs = [
                Pair(self.queries[q], self.positives.get(q, self.corpus[d]), query_id=q, positive_id=d)
                for q, docs in sorted(self.split(split).items())
                for d, grade in sorted(docs.items())
                if grade > 0
            ]
        if limit is not None and limit < len(pairs):
            keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
            pairs = [pairs[i] for i in keep]
        return pairs

    def stats(self) -> dict[str, int]:
        """Counts for the store and the summary."""
        out = {"corpus": len(self.corpus), "queries": len(self.queries)}
        for name, qrels in self.qrels.items():
            out[f"{name}_queries"] = len(qrels)
            out[f"{name}_qrels"] = sum(len(d) for d in qrels.values())
        if self.train_pairs is not None:
            out["jsonl_pairs"] = len(self.train_pairs)
        return out


@dataclass
class Section:
    """A run of a document's text under one heading path (e.g. ["Asthma", "Treatment"])."""

    heading_path: list[str]
    text: str


@dataclass
class Document:
    """One source document, read into plain text with its structure.

    Attributes:
        doc_id: Stable id: the file's path relative to the documents folder (POSIX separators).
        path: Absolute path of the file.
        title: Front-matter title, else the first heading, else the file name without suffix.
        sections: The text in reading order, split at headings (one section with an empty path when there are none).
        meta: Front-matter fields (Markdown YAML front matter; HTML <meta name=... content=...>), JSON-able values.

    """

    doc_id: str
    path: str
    title: str
    sections: list[Section]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """All section texts joined by blank lines."""
        return "\n\n".join(s.text for s in self.sections if s.text.strip())


@dataclass
class Chunk:
    """A piece of a document that becomes one corpus passage.

    Attributes:
        chunk_id: Unique id, ``<doc_id>#<level>-<position>``.
        doc_id: The document it comes from.
        text: The passage text.
        level: "fine" (the retrieval unit) or "coarse" (a parent of fine chunks, for two-stage retrieval).
        position: 0-based order of the chunk within its document and level.
        heading_path: Headings the chunk sits under.
        parent_id: For a fine chunk when coarse chunks are built: the coarse chunk containing it.
        meta: The document's front-matter fields plus ``source`` (the doc_id).

    """

    chunk_id: str
    doc_id: str
    text: str
    level: str = "fine"
    position: int = 0
    heading_path: list[str] = field(default_factory=list)
    parent_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skipped:
    """An input left out, and why (an unreadable file, an empty document, a failed LLM call...)."""

    item: str
    reason: str


@dataclass
class GeneratedQuery:
    """A training/evaluation query made for a chunk (by an LLM, ICT, a heading, or an existing QA pair).

    Attributes:
        text: The query.
        chunk_id: The chunk that answers it (its positive).
        doc_id: That chunk's document (splits are made by document).
        generator: llm, ict, heading or qa_pairs.
        masked: ICT only: the sentence taken out of the chunk as the query; it is removed from the positive
            passage (in training pairs and in the evaluation corpus), so the query is not found verbatim.

    """

    text: str
    chunk_id: str
    doc_id: str
    generator: str
    masked: str | None = None


def resolve_path(path: str | Path, base: Path) -> Path:
    """A spec path: absolute as given (with ~ expanded), else relative to `base`."""
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else base / expanded
