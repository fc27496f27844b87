"""Queries for the chunks of a documents source: LLM questions, inverse cloze (ICT), headings or existing QA pairs.

Only fine chunks (the retrieval unit) get queries. Every generator ends in the same filter: questions are
stripped, those too short are dropped, duplicates (normalised as the leak checks do) are dropped
within a chunk and across chunks (the first chunk, in input order, keeps the query), and llm and ict keep at most
``per_chunk`` queries per chunk. Every filter decision is counted in ``QueryResult.stats``; every chunk or row
that yields nothing for a reason worth knowing (a failed LLM call, an unmatched QA pair...) is a ``Skipped``.

The llm generator lives in :mod:`runner.data.llm_queries`.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runner.data.checks import normalize
from runner.data.types import Chunk, Document, GeneratedQuery, Skipped, resolve_path

if TYPE_CHECKING:
    from runner.spec import QAPairsSpec, QueriesSpec

logger = logging.getLogger(__name__)

MIN_HEADING_CHARS = 3
QA_ROLES = ("query", "answer", "document")


@dataclass
class QueryResult:
    """What a generator made.

    Attributes:
        queries: The kept queries, in chunk order (llm, ict, heading) or file order (qa_pairs).
        skipped: Chunks or QA rows that yielded no query, each with the reason (failure kind for llm).
        stats: Counts, always ``chunks`` (fine chunks), ``candidates``, ``kept``, ``dropped_short``,
            ``dropped_duplicate``, ``dropped_extra`` (over per_chunk) and ``skipped``, plus the generator's own:
            llm ``asked``, ``from_cache``, ``answered``, ``empty_chunks``, ``failed_<timeout|http|malformed|
            connection|other>``; ict ``no_sentence``; heading ``no_heading``; qa_pairs ``rows``, ``unmatched``,
            ``invalid_rows``, ``ambiguous`` (answer found in several chunks; the first is taken).

    """

    queries: list[GeneratedQuery] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


def generate_queries(
    chunks: list[Chunk],
    docs: dict[str, Document],
    spec: QueriesSpec,
    cache_path: Path | None = None,
    base_dir: Path | None = None,
) -> QueryResult:
    """Make queries for the fine chunks as ``spec.generator`` says.

    Args:
        chunks: All chunks; only those of level "fine" get queries.
        docs: Documents by doc_id (titles for heading and llm, document names for qa_pairs).
        spec: The queries section of the spec.
        cache_path: llm only: the answer cache to use when ``spec.llm.cache`` is null (the caller's default);
            None as well: no cache.
        base_dir: Folder that relative paths of the spec (prompt template, qa_pairs file, cache) are resolved
            against; None: the current directory.

    Returns:
        The kept queries, what was skipped and why, and the counts.

    Raises:
        ValueError: On a configuration problem found before any work: the API key variable is unset, the prompt
            template is missing or invalid, the QA file is missing, unreadable or lacks a mapped column.

    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    fine = [c for c in chunks if c.level == "fine"]
    stats: dict[str, int] = dict.fromkeys(
        ("chunks", "candidates", "kept", "dropped_short", "dropped_duplicate", "dropped_extra", "skipped"), 0
    )
    stats["chunks"] = len(fine)
    skipped: list[Skipped] = []
    cap: int | None = spec.per_chunk
    min_words: int | None = spec.min_words
    if spec.generator == "llm":
        assert spec.llm is not None  # the spec validator guarantees it
        cache = resolve_path(spec.llm.cache, base) if spec.llm.cache else cache_path
        from runner.data.llm_queries import llm_candidates

        candidates = llm_candidates(
            fine, docs=docs, spec=spec, cache_path=cache, base=base, stats=stats, skipped=skipped
        )
    elif spec.generator == "ict":
        candidates = _ict_candidates(fine, spec, stats, skipped)
    elif spec.generator == "heading":
        candidates, cap, min_words = _heading_candidates(fine, docs, stats, skipped), 1, None
    elif spec.generator == "qa_pairs":
        assert spec.qa_pairs is not None  # the spec validator guarantees it
        candidates, cap, min_words = (
            _qa_candidates(fine, docs=docs, qa=spec.qa_pairs, base=base, stats=stats, skipped=skipped),
            None,
            None,
        )
    else:  # pragma: no cover - the spec's Literal rules it out
        raise ValueError(f"unknown query generator {spec.generator!r}")
    queries = _finish(candidates, min_words, cap, stats, heading=spec.generator == "heading")
    stats["skipped"] = len(skipped)
    logger.info(
        "queries (%s): kept %d from %d fine chunks; dropped %d short, %d duplicate, %d over per_chunk; %d skipped",
        spec.generator,
        stats["kept"],
        stats["chunks"],
        stats["dropped_short"],
        stats["dropped_duplicate"],
        stats["dropped_extra"],
        stats["skipped"],
    )
    return QueryResult(queries=queries, skipped=skipped, stats=stats)


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` as the chunker cuts them, each exactly as it appears there (stripped).

    Exact substrings, so an ICT sentence can be found in its chunk and removed.
    """
    from runner.data.chunking import split_sentences as sentence_spans

    return [text[start:end] for start, end in sentence_spans(text)]


def _finish(
    candidates: list[GeneratedQuery],
    min_words: int | None,
    cap: int | None,
    stats: dict[str, int],
    heading: bool = False,
) -> list[GeneratedQuery]:
    """The common filter: strip, drop short, drop duplicates (per chunk and global), keep at most `cap` per chunk."""
    kept: list[GeneratedQuery] = []
    seen: set[str] = set()
    per_chunk: dict[str, int] = {}
    stats["candidates"] += len(candidates)
    for query in candidates:
        query.text = " ".join(query.text.split())
        too_short = len(query.text) < MIN_HEADING_CHARS if heading else not query.text
        if too_short or (min_words is not None and len(query.text.split()) < min_words):
            stats["dropped_short"] += 1
            continue
        key = normalize(query.text)
        if key in seen:
            stats["dropped_duplicate"] += 1
            continue
        if cap is not None and per_chunk.get(query.chunk_id, 0) >= cap:
            stats["dropped_extra"] += 1
            continue
        seen.add(key)
        per_chunk[query.chunk_id] = per_chunk.get(query.chunk_id, 0) + 1
        kept.append(query)
    stats["kept"] = len(kept)
    return kept


# --- ict ---------------------------------------------------------------------------------------------------------


def _ict_candidates(
    fine: list[Chunk], spec: QueriesSpec, stats: dict[str, int], skipped: list[Skipped]
) -> list[GeneratedQuery]:
    """Inverse cloze: per chunk, up to per_chunk sentences of at least min_words words, never the only one."""
    stats["no_sentence"] = 0
    out: list[GeneratedQuery] = []
    for chunk in fine:
        sentences = split_sentences(chunk.text)
        eligible = [i for i, s in enumerate(sentences) if len(s.split()) >= spec.min_words]
        # The positive must keep at least one sentence once the chosen ones are taken out.
        k = min(spec.per_chunk, len(eligible), len(sentences) - 1)
        if k <= 0:
            stats["no_sentence"] += 1
            why = (
                "one sentence only (ICT needs another one left in the passage)"
                if len(sentences) <= 1
                else f"no sentence of at least {spec.min_words} words"
            )
            skipped.append(Skipped(chunk.chunk_id, f"ict: {why}"))
            continue
        rng = random.Random(f"{spec.seed}:{chunk.chunk_id}")  # str seeds are stable across processes
        for i in sorted(rng.sample(eligible, k)):
            out.append(GeneratedQuery(sentences[i], chunk.chunk_id, chunk.doc_id, "ict", masked=sentences[i]))
    return out


# --- heading -----------------------------------------------------------------------------------------------------


def _heading_candidates(
    fine: list[Chunk], docs: dict[str, Document], stats: dict[str, int], skipped: list[Skipped]
) -> list[GeneratedQuery]:
    """The chunk's innermost heading, or its document's title when it sits under no heading."""
    stats["no_heading"] = 0
    out: list[GeneratedQuery] = []
    for chunk in fine:
        doc = docs.get(chunk.doc_id)
        text = chunk.heading_path[-1] if chunk.heading_path else (doc.title if doc else "")
        if not text.strip():
            stats["no_heading"] += 1
            skipped.append(Skipped(chunk.chunk_id, "heading: no heading and no document title"))
            continue
        out.append(GeneratedQuery(text, chunk.chunk_id, chunk.doc_id, "heading"))
    return out


# --- qa_pairs ----------------------------------------------------------------------------------------------------


def _qa_candidates(
    fine: list[Chunk],
    *,
    docs: dict[str, Document],
    qa: QAPairsSpec,
    base: Path,
    stats: dict[str, int],
    skipped: list[Skipped],
) -> list[GeneratedQuery]:
    """Existing pairs: each question's positive is the first fine chunk containing its (normalised) answer."""
    columns = _qa_columns(qa.columns)
    path = resolve_path(qa.path, base)
    rows = _read_qa(path, columns)
    stats.update(rows=len(rows), unmatched=0, invalid_rows=0, ambiguous=0)
    texts = {c.chunk_id: " ".join(c.text.lower().split()) for c in fine}
    by_doc: dict[str, list[Chunk]] = {}
    for chunk in fine:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    find_doc = _doc_finder(set(docs) | set(by_doc))
    out: list[GeneratedQuery] = []
    for item, row in rows:
        question = row.get("query", "").strip()
        if not question:
            stats["invalid_rows"] += 1
            skipped.append(Skipped(item, "qa_pairs: empty question"))
            continue
        if "answer" not in columns:
            stats["unmatched"] += 1
            skipped.append(Skipped(item, "qa_pairs: no answer column, so the chunk holding the answer is unknown"))
            continue
        answer = " ".join(row.get("answer", "").lower().split())
        if not answer:
            stats["invalid_rows"] += 1
            skipped.append(Skipped(item, "qa_pairs: empty answer"))
            continue
        pool, where = fine, ""
        if "document" in columns:
            named = row.get("document", "").strip()
            doc_id = find_doc(named)
            if doc_id is None or doc_id not in by_doc:
                stats["unmatched"] += 1
                reason = "not among the documents" if doc_id is None else "has no fine chunk"
                skipped.append(Skipped(item, f"qa_pairs: document {named!r} {reason}"))
                continue
            pool, where = by_doc[doc_id], f" of document {doc_id!r}"
        hits = [c for c in pool if answer in texts[c.chunk_id]]
        if not hits:
            stats["unmatched"] += 1
            skipped.append(Skipped(item, f"qa_pairs: answer not found in any chunk{where}"))
            continue
        if len(hits) > 1:
            stats["ambiguous"] += 1
        out.append(GeneratedQuery(question, hits[0].chunk_id, hits[0].doc_id, "qa_pairs"))
    return out


def _qa_columns(columns: dict[str, str]) -> dict[str, str]:
    """Check the role -> column mapping: query, plus answer and/or document."""
    unknown = sorted(set(columns) - set(QA_ROLES))
    if unknown:
        raise ValueError(
            f"queries.qa_pairs.columns: unknown role(s) {', '.join(unknown)} (roles: {', '.join(QA_ROLES)})"
        )
    if "query" not in columns:
        raise ValueError("queries.qa_pairs.columns needs query: the column holding the question")
    if "answer" not in columns and "document" not in columns:
        raise ValueError("queries.qa_pairs.columns needs answer and/or document besides query")
    return columns


def _read_qa(path: Path, columns: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """Rows of a CSV/TSV (header row) or JSONL file, as (location, {role: value}).

    Raises:
        ValueError: If the file is missing or unreadable, or a mapped column is absent.

    """
    if not path.is_file():
        raise ValueError(f"queries.qa_pairs.path: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _read_qa_csv(path, columns, "\t" if suffix == ".tsv" else ",")
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _read_qa_jsonl(path, columns)
    raise ValueError(f"{path}: QA pairs must be a .csv, .tsv or .jsonl file")


def _missing_column(path: Path, where: str, role: str, column: str, present: list[str]) -> ValueError:
    return ValueError(
        f"{path}{where}: column {column!r} (queries.qa_pairs.columns.{role}) not found; "
        f"columns present: {', '.join(repr(p) for p in present) or 'none'}"
    )


def _read_qa_csv(path: Path, columns: dict[str, str], delimiter: str) -> list[tuple[str, dict[str, str]]]:
    import csv

    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        present = [str(f) for f in (reader.fieldnames or [])]
        for role, column in columns.items():
            if column not in present:
                raise _missing_column(path, "", role, column, present)
        rows = []
        for n, record in enumerate(reader, start=1):
            values = {role: str(record.get(column) or "") for role, column in columns.items()}
            rows.append((f"{path.name}:row {n}", values))
    return rows


def _read_qa_jsonl(path: Path, columns: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object per line")
        for role, column in columns.items():
            if column not in record:
                raise _missing_column(path, f":{n}", role, column, list(record))
        values = {role: "" if record[col] is None else str(record[col]) for role, col in columns.items()}
        rows.append((f"{path.name}:line {n}", values))
    return rows


def _doc_finder(doc_ids: set[str]):
    """A lookup from a document name in a QA file to a doc_id: exact, else a unique file-name or stem match."""
    by_name: dict[str, set[str]] = {}
    for doc_id in doc_ids:
        pure = Path(doc_id)
        for name in (pure.name, pure.stem, doc_id.removeprefix("./")):
            by_name.setdefault(name, set()).add(doc_id)

    def find(name: str) -> str | None:
        if name in doc_ids:
            return name
        found = by_name.get(name.removeprefix("./"), set())
        return next(iter(found)) if len(found) == 1 else None

    return find
