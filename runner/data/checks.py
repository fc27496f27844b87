"""Data checks run before training: train/eval leakage, duplicates, short texts, unjudged queries, negative ratio.

Leakage compares the training pairs actually used with every evaluation split:

- ``query-exact``: a training query equal to an eval query after normalisation (Unicode NFKC, lowercase,
  punctuation stripped, whitespace collapsed), found by hashing.
- ``query-near``: cosine similarity >= ``leak_similarity`` between embeddings of the two queries.
- ``positive-exact`` / ``positive-near``: a training positive passage equal (same id or same normalised text) or
  near-identical to an eval positive. BEIR-style datasets share one corpus between train and test, so there this
  overlap is legitimate and only counted; it is a leak when ``positives_are_leaks`` is true (data generated from
  documents split by document, where no passage should feed both sides).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from runner.data.types import DataError, Pair, RetrievalData

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

LeakKind = Literal["query-exact", "query-near", "positive-exact", "positive-near"]

EXAMPLES = 5  # ids kept per finding
LEAKS_IN_DICT = 100  # leaks written by DataReport.as_dict (all are counted in counts["leaks"])
RATIO_GUIDANCE = (3, 5)  # the usual 1:3 to 1:5 positive:negative range
_SPACES = re.compile(r"\s+")


@dataclass
class Leak:
    """One training item found again in an evaluation split.

    Attributes:
        kind: query-exact, query-near, positive-exact or positive-near.
        split: The evaluation split it leaks into.
        train_query: The training query's id, or its text when the pair has no id.
        eval_query: Id of the eval query matched (for positive leaks: a query judging the matched passage).
        similarity: Cosine similarity (1.0 for exact matches).
        text: The training query text (query leaks) or the start of the training positive (positive leaks).
        pair_indices: Indices into the checked `pairs` of the training pairs involved.

    """

    kind: LeakKind
    split: str
    train_query: str
    eval_query: str
    similarity: float
    text: str = ""
    pair_indices: list[int] = field(default_factory=list)

    def describe(self) -> str:
        """One human line naming both sides."""
        what = "query" if self.kind.startswith("query") else "positive of training query"
        how = "identical" if self.kind.endswith("exact") else f"near-identical, cosine {self.similarity:.3f}"
        snippet = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return (
            f"{self.kind}: training {what} {self.train_query!r} ({snippet!r}) leaks into {self.split} "
            f"query {self.eval_query!r} ({how})"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (without the pair indices, which only mean something within one run)."""
        out = asdict(self)
        out.pop("pair_indices")
        out["similarity"] = round(float(self.similarity), 4)
        out["pairs"] = len(self.pair_indices)
        return out


@dataclass
class DataReport:
    """What the data checks found.

    Attributes:
        leaks: Train/eval leaks (positive overlaps only when they count as leaks).
        counts: Flat counts per finding (``test_query_exact``, ``corpus_duplicates``...), zeros included.
        examples: A few ids per finding, keyed like `counts`.
        notes: Human sentences, one per non-trivial finding.

    """

    leaks: list[Leak] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for the store and the data card (the first LEAKS_IN_DICT leaks)."""
        return {
            "leaks": [leak.as_dict() for leak in self.leaks[:LEAKS_IN_DICT]],
            "counts": dict(self.counts),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "notes": list(self.notes),
        }

    def leaking_pair_indices(self) -> set[int]:
        """Indices into the checked pairs of every training pair involved in a leak."""
        return {i for leak in self.leaks for i in leak.pair_indices}

    def _add(self, key: str, ids: Iterable[str], note: str | None = None) -> None:
        ids = list(ids)
        self.counts[key] = len(ids)
        if ids:
            self.examples[key] = ids[:EXAMPLES]
            if note:
                self.notes.append(note.format(n=len(ids)))


@functools.cache
def _punctuation_table() -> dict[int, None]:
    """str.translate table deleting every Unicode punctuation character (categories P*)."""
    return {c: None for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")}


def normalize(text: str) -> str:
    """Text for exact-duplicate matching: NFKC, lowercase, punctuation stripped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_punctuation_table())
    return _SPACES.sub(" ", text).strip()


def _digest(text: str) -> bytes:
    """A 16-byte hash of the normalised text (keeps memory small on large corpora)."""
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).digest()


def _duplicates(texts: dict[str, str]) -> tuple[int, list[str]]:
    """(number of texts repeating an earlier one, examples ``"id1 = id2"``)."""
    groups: dict[bytes, list[str]] = {}
    for tid, text in texts.items():
        if text.strip():
            groups.setdefault(_digest(text), []).append(tid)
    dup = [ids for ids in groups.values() if len(ids) > 1]
    examples = [" = ".join(ids[:3]) + (" = ..." if len(ids) > 3 else "") for ids in dup[:EXAMPLES]]
    return sum(len(ids) - 1 for ids in dup), examples


def _best_matches(
    left: np.ndarray, right: np.ndarray, threshold: float, chunk: int = 2048
) -> list[tuple[int, int, float]]:
    """For each row of `left`, its most similar row of `right` when the cosine is >= threshold.

    Both matrices hold L2-normalised rows; the product is computed `chunk` rows of `left` at a time.

    Returns:
        (left row, right row, similarity) triples.

    """
    import numpy as np

    out: list[tuple[int, int, float]] = []
    if len(left) == 0 or len(right) == 0:
        return out
    right_t = np.ascontiguousarray(np.asarray(right, dtype=np.float32).T)
    left = np.asarray(left, dtype=np.float32)
    for start in range(0, len(left), chunk):
        sim = left[start : start + chunk] @ right_t
        best = sim.argmax(axis=1)
        value = sim[np.arange(len(best)), best]
        for row in np.nonzero(value >= threshold - 1e-6)[0].tolist():
            out.append((start + row, int(best[row]), min(float(value[row]), 1.0)))
    return out


def _embed(embed: Callable[[list[str]], np.ndarray], texts: list[str]) -> np.ndarray:
    import numpy as np

    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    return np.asarray(embed(texts), dtype=np.float32)


def _query_leaks(
    report: DataReport,
    *,
    data: RetrievalData,
    evals: list[str],
    pairs: list[Pair],
    threshold: float,
    embed: Callable[[list[str]], np.ndarray] | None,
) -> None:
    """Training queries found (exactly or nearly) among the queries of each eval split."""
    # One entry per distinct normalised training query: its pair indices and a representative pair.
    train: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        train.setdefault(normalize(pair.query), []).append(i)
    keys = list(train)
    train_emb = None
    for split in evals:
        eval_ids = [q for q in data.qrels.get(split, {}) if q in data.queries]
        by_text: dict[str, str] = {}
        for qid in eval_ids:
            by_text.setdefault(normalize(data.queries[qid]), qid)
        exact = set()
        for key in keys:
            if key in by_text:
                exact.add(key)
                first = pairs[train[key][0]]
                report.leaks.append(
                    Leak(
                        "query-exact", split, first.query_id or first.query, by_text[key], 1.0, first.query, train[key]
                    )
                )
        report._add(
            f"{split}_query_exact",
            [pairs[train[k][0]].query_id or pairs[train[k][0]].query for k in keys if k in exact],
            f"{{n}} training queries also appear in {split} (exact, after normalisation)",
        )
        if embed is None:
            continue
        if train_emb is None:
            train_emb = _embed(embed, [pairs[train[k][0]].query for k in keys])
        eval_emb = _embed(embed, [data.queries[q] for q in eval_ids])
        near = []
        for row, col, sim in _best_matches(train_emb, eval_emb, threshold):
            key = keys[row]
            if key in exact:
                continue
            first = pairs[train[key][0]]
            near.append(first.query_id or first.query)
            report.leaks.append(Leak("query-near", split, near[-1], eval_ids[col], sim, first.query, list(train[key])))
        report._add(
            f"{split}_query_near",
            near,
            f"{{n}} training queries are near-identical to {split} queries (cosine >= {threshold})",
        )


def _positive_leaks(
    report: DataReport,
    *,
    data: RetrievalData,
    evals: list[str],
    pairs: list[Pair],
    threshold: float,
    embed: Callable[[list[str]], np.ndarray] | None,
    positives_are_leaks: bool,
) -> None:
    """Training positives found among the positives of each eval split (a leak or an informational overlap)."""
    train: dict[bytes, list[int]] = {}
    for i, pair in enumerate(pairs):
        if pair.positive.strip():
            train.setdefault(_digest(pair.positive), []).append(i)
    keys = list(train)
    train_emb = None
    for split in evals:
        # Eval positives: passage id -> a query judging it; normalised text -> passage id.
        judged_by: dict[str, str] = {}
        for qid, docs in data.qrels.get(split, {}).items():
            for did, grade in docs.items():
                if grade > 0 and did in data.corpus:
                    judged_by.setdefault(did, qid)
        eval_docs = list(judged_by)
        by_text: dict[bytes, str] = {}
        for did in eval_docs:
            if data.corpus[did].strip():
                by_text.setdefault(_digest(data.corpus[did]), did)
        exact: dict[bytes, str] = {}
        for key in keys:
            for i in train[key]:
                pid = pairs[i].positive_id
                if pid is not None and pid in judged_by:
                    exact[key] = pid
                    break
            else:
                if key in by_text:
                    exact[key] = by_text[key]
        hits: list[tuple[str, bytes, str, float]] = [("positive-exact", k, d, 1.0) for k, d in exact.items()]
        if positives_are_leaks and embed is not None:
            if train_emb is None:
                train_emb = _embed(embed, [pairs[train[k][0]].positive for k in keys])
            eval_emb = _embed(embed, [data.corpus[d] for d in eval_docs])
            for row, col, sim in _best_matches(train_emb, eval_emb, threshold):
                if keys[row] not in exact:
                    hits.append(("positive-near", keys[row], eval_docs[col], sim))
        for kind in ("positive-exact", "positive-near"):
            found = [(k, d, s) for kd, k, d, s in hits if kd == kind]
            names = [
                pairs[train[k][0]].positive_id or pairs[train[k][0]].query_id or str(train[k][0]) for k, _, _ in found
            ]
            key = f"{split}_{kind.replace('-', '_')}"
            if positives_are_leaks:
                how = "identical" if kind == "positive-exact" else f"near-identical (cosine >= {threshold})"
                report._add(key, names, f"{{n}} training positives are {how} to {split} positives")
                for k, did, sim in found:
                    first = pairs[train[k][0]]
                    report.leaks.append(
                        Leak(
                            kind,
                            split,
                            first.query_id or first.query,
                            judged_by[did],
                            sim,
                            first.positive[:200],
                            list(train[k]),
                        )
                    )
            elif kind == "positive-exact":
                report._add(
                    key,
                    names,
                    f"{{n}} training positives are also {split} positives (shared corpus; expected in BEIR-style "
                    "data, not counted as leaks)",
                )


def _text_checks(report: DataReport, name: str, texts: dict[str, str], min_chars: int) -> None:
    """Duplicate, empty and very short texts of the corpus or the queries."""
    label = "corpus passages" if name == "corpus" else "queries"
    n, examples = _duplicates(texts)
    report.counts[f"{name}_duplicates"] = n
    if n:
        report.examples[f"{name}_duplicates"] = examples
        report.notes.append(f"{n} {label} duplicate another one (after normalisation)")
    report._add(f"{name}_empty", [i for i, t in texts.items() if not t.strip()], f"{{n}} {label} are empty")
    report._add(
        f"{name}_short",
        [i for i, t in texts.items() if 0 < len(t.strip()) < min_chars],
        f"{{n}} {label} are shorter than {min_chars} characters",
    )


def _ratio_note(report: DataReport, negatives_mode: str, per_query: int) -> None:
    if negatives_mode == "in-batch":
        report.counts["negatives_per_positive"] = 0
        report.notes.append("positive:negative ratio: in-batch only (the other positives of each batch)")
        return
    report.counts["negatives_per_positive"] = per_query
    low, high = RATIO_GUIDANCE
    if low <= per_query <= high:
        report.notes.append(f"positive:negative ratio 1:{per_query} ({negatives_mode} negatives)")
    else:
        report.notes.append(
            f"positive:negative ratio 1:{per_query} ({negatives_mode} negatives) is outside the usual "
            f"1:{low}-1:{high} guidance"
        )


def check_data(
    data: RetrievalData,
    *,
    train: str,
    evals: list[str],
    pairs: list[Pair],
    negatives_mode: str,
    per_query: int,
    min_chars: int,
    leak_similarity: float,
    embed: Callable[[list[str]], np.ndarray] | None,
    positives_are_leaks: bool,
) -> DataReport:
    """Run every data check on the data and the training pairs actually used.

    Args:
        data: The dataset (corpus, queries, qrels per split).
        train: Name of the training split.
        evals: Names of the evaluation splits present (dev, test).
        pairs: The training pairs used (after ``data.limit``).
        negatives_mode: in-batch, random or hard.
        per_query: Explicit negatives per pair (ignored for in-batch).
        min_chars: Texts shorter than this (stripped) are reported as very short.
        leak_similarity: Cosine at or above which two texts count as near-identical.
        embed: Texts -> L2-normalised embedding rows; None skips the near-identical checks.
        positives_are_leaks: Count training positives found among eval positives as leaks (documents split by
            document) rather than as an informational overlap (BEIR-style shared corpus).

    Returns:
        The report; ``report.leaks`` holds only real leaks.

    """
    started = time.perf_counter()
    report = DataReport()
    evals = [s for s in evals if s and s != train]
    _query_leaks(report, data=data, evals=evals, pairs=pairs, threshold=leak_similarity, embed=embed)
    _positive_leaks(
        report,
        data=data,
        evals=evals,
        pairs=pairs,
        threshold=leak_similarity,
        embed=embed,
        positives_are_leaks=positives_are_leaks,
    )
    if embed is None and evals:
        report.notes.append("near-identical leak checks skipped (no embedding model)")
    report.counts["leaks"] = len(report.leaks)
    report.counts["leaking_pairs"] = len(report.leaking_pair_indices())

    _text_checks(report, "corpus", data.corpus, min_chars)
    _text_checks(report, "queries", data.queries, min_chars)
    for split in [train, *evals]:
        if split not in data.qrels:
            continue
        report._add(
            f"{split}_queries_without_positive",
            [q for q, docs in data.qrels[split].items() if not any(g > 0 for g in docs.values())],
            f"{{n}} {split} queries have no positive judgement",
        )
    report._add(
        "pairs_empty_positive",
        [p.query_id or str(i) for i, p in enumerate(pairs) if not p.positive.strip()],
        "{n} training pairs have an empty positive",
    )
    _ratio_note(report, negatives_mode, per_query)
    log.info(
        "data checks: %d leak(s) over %d training pair(s), %d note(s) in %.1fs",
        len(report.leaks),
        len(pairs),
        len(report.notes),
        time.perf_counter() - started,
    )
    return report


def apply_leak_policy(report: DataReport, pairs: list[Pair], policy: Literal["error", "warn", "drop"]) -> list[Pair]:
    """Act on the leaks of `report` as ``data.on_leak`` says.

    Args:
        report: The checks' report on `pairs`.
        pairs: The training pairs the report was made on.
        policy: error: raise; warn: keep every pair (log a warning); drop: remove the leaking pairs.

    Returns:
        The pairs to train on.

    Raises:
        DataError: policy error and at least one leak, or policy drop removing every pair.
        ValueError: An unknown policy.

    """
    if policy not in ("error", "warn", "drop"):
        raise ValueError(f"unknown leak policy {policy!r} (error, warn or drop)")
    if not report.leaks:
        return pairs
    leaking = report.leaking_pair_indices()
    if policy == "error":
        raise DataError(
            [
                f"{len(report.leaks)} train/eval leak(s) touching {len(leaking)} training pair(s) "
                "(data.on_leak: error; set it to drop to remove them or warn to keep them)",
                *(leak.describe() for leak in report.leaks),
            ]
        )
    if policy == "warn":
        log.warning(
            "%d train/eval leak(s) touching %d training pair(s), kept (data.on_leak: warn); first: %s",
            len(report.leaks),
            len(leaking),
            report.leaks[0].describe(),
        )
        return pairs
    kept = [p for i, p in enumerate(pairs) if i not in leaking]
    if not kept:
        raise DataError([f"data.on_leak: drop removed all {len(pairs)} training pairs (every one leaks)"])
    log.warning(
        "dropped %d of %d training pairs that leak into dev/test (data.on_leak: drop)",
        len(pairs) - len(kept),
        len(pairs),
    )
    return kept
