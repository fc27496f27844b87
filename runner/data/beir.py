"""BEIR folders: corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""

from __future__ import annotations

from pathlib import Path

from runner.data.readers import read_jsonl, read_tsv
from runner.data.types import DataError, RetrievalData


def doc_text(title: str | None, text: str | None) -> str:
    """The text embedded for a document: title and body joined by a space (the BEIR/mteb convention)."""
    return " ".join(part.strip() for part in (title or "", text or "") if part and part.strip())


def _records(path: Path, kind: str, problems: list[str]) -> dict[str, str]:
    """Read corpus or query records keyed by `_id`, checking ids and texts."""
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, obj in read_jsonl(path, problems):
        raw_id = obj.get("_id", obj.get("id"))
        if raw_id is None or str(raw_id).strip() == "":
            problems.append(f"{path}:{number}: missing field '_id'")
            continue
        rid = str(raw_id)
        if "text" not in obj:
            problems.append(f"{path}:{number}: {kind} {rid!r}: missing field 'text'")
            continue
        wrong = [f for f in ("text", "title") if f in obj and not isinstance(obj[f], str) and obj[f] is not None]
        if not isinstance(obj["text"], str) or wrong:
            field = wrong[0] if wrong else "text"
            got = "null" if obj[field] is None else type(obj[field]).__name__
            problems.append(f"{path}:{number}: {kind} {rid!r}: field '{field}' must be a string, got {got}")
            continue
        text = doc_text(obj.get("title"), obj["text"]) if kind == "document" else obj["text"].strip()
        if not text:
            problems.append(f"{path}:{number}: {kind} {rid!r}: empty text")
            continue
        if rid in out:
            problems.append(f"{path}:{number}: duplicate {kind} id {rid!r} (first on line {first_line[rid]})")
            continue
        out[rid] = text
        first_line[rid] = number
    return out


def read_qrels(
    path: Path, corpus: dict[str, str], queries: dict[str, str], problems: list[str]
) -> dict[str, dict[str, int]]:
    """Read one qrels TSV (query-id, corpus-id, score), checking that both ids exist."""
    qrels: dict[str, dict[str, int]] = {}
    for number, row in read_tsv(path, problems):
        if len(row) < 3:
            if len(row) == 2:
                row = [row[0], row[1], "1"]
            else:
                problems.append(f"{path}:{number}: expected query-id<TAB>corpus-id<TAB>score, got {row!r}")
                continue
        qid, did, score = row[0].strip(), row[1].strip(), row[-1].strip()
        try:
            grade = int(float(score))  # OverflowError for inf, ValueError for nan and text
        except (ValueError, OverflowError):
            problems.append(f"{path}:{number}: score {score!r} is not a finite number")
            continue
        if qid not in queries:
            problems.append(f"{path}:{number}: query {qid!r} is not in queries.jsonl")
            continue
        if did not in corpus:
            problems.append(f"{path}:{number}: document {did!r} is not in corpus.jsonl")
            continue
        qrels.setdefault(qid, {})[did] = grade
    if not qrels:
        problems.append(f"{path}: no judgements (a split with no queries)")
    return qrels


def load_beir(folder: str | Path, required_splits: list[str] | None = None) -> RetrievalData:
    """Load and check a BEIR folder.

    Args:
        folder: Folder with corpus.jsonl, queries.jsonl and qrels/*.tsv.
        required_splits: Splits that must exist; others present are loaded too.

    Returns:
        The dataset with every split found under qrels/.

    Raises:
        DataError: Listing every problem found (file:line), not only the first.

    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError([f"{root}: BEIR folder not found"])
    problems: list[str] = []
    corpus = _records(root / "corpus.jsonl", "document", problems)
    queries = _records(root / "queries.jsonl", "query", problems)
    qrels_dir = root / "qrels"
    files = sorted(qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if not files:
        problems.append(f"{qrels_dir}: no qrels/<split>.tsv files")
    qrels = {f.stem: read_qrels(f, corpus, queries, problems) for f in files}
    for name in required_splits or []:
        if name not in qrels:
            problems.append(f"{qrels_dir / (name + '.tsv')}: split {name!r} not found")
    if problems:
        raise DataError(problems)
    return RetrievalData(corpus=corpus, queries=queries, qrels=qrels, source=str(root))
