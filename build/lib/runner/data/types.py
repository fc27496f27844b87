"""Plain data containers shared by the data sources, negatives, training and evaluation."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


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


@dataclass
class RetrievalData:
    """A retrieval dataset: one corpus, queries and graded relevance judgements per split.

    Attributes:
        corpus: Document id -> text to embed (title and body joined by a space).
        queries: Query id -> text.
        qrels: Split -> query id -> {document id: relevance grade}; only grades > 0 count as positives.
        train_pairs: Explicit training pairs (JSONL sources); None means "derive them from the train qrels".
        source: Human-readable origin, for the store.

    """

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]
    train_pairs: list[Pair] | None = None
    source: str = ""

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
                Pair(self.queries[q], self.corpus[d], query_id=q, positive_id=d)
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
