"""FlagEmbedding training JSONL: one {"query": str, "pos": [str], "neg": [str], "prompt"?: str} per line."""

from __future__ import annotations

from pathlib import Path

from runner.data.readers import read_jsonl
from runner.data.types import DataError, Pair


def load_pairs_jsonl(path: str | Path) -> list[Pair]:
    """Read FlagEmbedding-format training data as one pair per positive.

    The optional ``neg`` list of each line is kept on its pairs; ``prompt`` (an instruction) is put before
    the query.

    Raises:
        DataError: For malformed lines or missing/empty fields, each with file:line.

    """
    path = Path(path)
    problems: list[str] = []
    pairs: list[Pair] = []
    for number, obj in read_jsonl(path, problems):
        query, pos, neg = obj.get("query"), obj.get("pos"), obj.get("neg", [])
        if not isinstance(query, str) or not query.strip():
            problems.append(f"{path}:{number}: field 'query' must be a non-empty string")
            continue
        if isinstance(pos, str):
            pos = [pos]
        if not isinstance(pos, list) or not pos or not all(isinstance(p, str) and p.strip() for p in pos):
            problems.append(f"{path}:{number}: field 'pos' must be a non-empty list of non-empty strings")
            continue
        if not isinstance(neg, list) or not all(isinstance(n, str) for n in neg):
            problems.append(f"{path}:{number}: field 'neg' must be a list of strings")
            continue
        prompt = obj.get("prompt") or ""
        text = f"{prompt}{query}".strip()
        pairs.extend(Pair(text, p.strip(), query_id=f"line{number}", negatives=list(neg)) for p in pos)
    if not pairs and not problems:
        problems.append(f"{path}: no training pairs")
    if problems:
        raise DataError(problems)
    return pairs
