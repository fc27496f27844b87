"""A corpus as a stream of passages for indexing: a BEIR corpus.jsonl, or a documents folder chunked as a spec says.

Nothing here holds the corpus: BEIR lines are read one at a time (a first pass checks ids and texts, keeping only
the ids), documents are read and chunked one file at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.data.beir import doc_text
from runner.data.readers import read_jsonl
from runner.data.types import DataError, Skipped

if TYPE_CHECKING:
    from runner.data.chunking import Embed
    from runner.spec import ChunkingSpec

log = logging.getLogger(__name__)


@dataclass
class Passage:
    """One passage to index.

    Attributes:
        id: The corpus id (BEIR ``_id``) or chunk id (``<file>#fine-<n>``).
        text: The text embedded and stored.
        source: Where it comes from: ``corpus.jsonl:<line>`` or the document's path in its folder.
        heading_path: Headings it sits under (BEIR: its title, if any).
        parent: The coarse chunk holding it (chunking levels [coarse, fine]), else None.
        meta: Further fields for filters (a document's front matter; BEIR records' extra scalar fields).

    """

    id: str
    text: str
    source: str
    heading_path: list[str] = field(default_factory=list)
    parent: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def corpus_kind(path: str | Path) -> str:
    """``beir`` for a corpus.jsonl (or a folder holding one), ``documents`` for any other folder.

    Raises:
        DataError: If the path does not exist, or is a file other than a ``.jsonl``.

    """
    path = Path(path)
    if path.is_dir():
        return "beir" if (path / "corpus.jsonl").is_file() else "documents"
    if path.is_file() and path.suffix == ".jsonl":
        return "beir"
    what = "not found" if not path.exists() else "neither a folder nor a .jsonl corpus"
    raise DataError([f"{path}: {what} (give a BEIR folder, its corpus.jsonl, or a documents folder)"])


def _corpus_file(path: str | Path) -> Path:
    path = Path(path)
    return path / "corpus.jsonl" if path.is_dir() else path


def check_beir_corpus(path: str | Path) -> int:
    """Read a BEIR corpus once, keeping only ids: every missing id, empty text and duplicate id is listed.

    Returns:
        The number of passages.

    Raises:
        DataError: Listing every problem (file:line), before anything is indexed.

    """
    file = _corpus_file(path)
    problems: list[str] = []
    first: dict[str, int] = {}
    for number, obj in read_jsonl(file, problems):
        raw = obj.get("_id", obj.get("id"))
        if raw is None or str(raw).strip() == "":
            problems.append(f"{file}:{number}: missing field '_id'")
            continue
        rid = str(raw)
        title, text = obj.get("title"), obj.get("text")
        if not isinstance(text, str) or not (title is None or isinstance(title, str)):
            problems.append(f"{file}:{number}: passage {rid!r}: 'text' (and 'title') must be strings")
        elif not doc_text(title, text):
            problems.append(f"{file}:{number}: passage {rid!r}: empty text")
        if rid in first:
            problems.append(f"{file}:{number}: duplicate passage id {rid!r} (first on line {first[rid]})")
        else:
            first[rid] = number
    if not first and not problems:
        problems.append(f"{file}: no passage")
    if problems:
        raise DataError(problems)
    return len(first)


def beir_passages(path: str | Path) -> Iterator[Passage]:
    """The passages of a BEIR corpus (checked first with :func:`check_beir_corpus`), one line at a time."""
    file = _corpus_file(path)
    problems: list[str] = []
    for number, obj in read_jsonl(file, problems):
        title = obj.get("title") or ""
        extra = {k: v for k, v in obj.items() if k not in ("_id", "id", "title", "text") and _scalar(v)}
        yield Passage(
            id=str(obj.get("_id", obj.get("id"))),
            text=doc_text(title, obj["text"]),
            source=f"{file.name}:{number}",
            heading_path=[title] if title.strip() else [],
            meta=extra,
        )


def document_passages(
    folder: str | Path,
    *,
    chunking: ChunkingSpec,
    tokenizer: Any,
    embed: Embed | None,
    skipped: list[Skipped],
) -> Iterator[Passage]:
    """The fine chunks of a documents folder, chunked as `chunking` says, one document at a time.

    Files that describe the folder (SOURCE.md, README.md at its top) are left out, as when a run prepares it.

    Args:
        folder: The documents folder.
        chunking: The spec's chunking section.
        tokenizer: The model's tokenizer (sizes the chunks).
        embed: Texts -> embeddings, for semantic chunking.
        skipped: Receives the files and documents left out, with the reason.

    Raises:
        DataError: If the folder is missing.

    """
    from runner.data.chunking import chunk_documents
    from runner.data.documents import iter_documents
    from runner.data.prepare import NOT_CORPUS

    for doc in iter_documents(folder, skipped):
        if doc.doc_id in NOT_CORPUS:
            continue
        chunks, left = chunk_documents([doc], chunking, tokenizer, embed)
        skipped += left
        for chunk in chunks:
            if chunk.level != "fine":
                continue
            yield Passage(
                id=chunk.chunk_id,
                text=chunk.text,
                source=chunk.doc_id,
                heading_path=list(chunk.heading_path),
                parent=chunk.parent_id,
                meta={k: v for k, v in chunk.meta.items() if k != "source"},
            )


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and not (isinstance(value, str) and not value)


def point_meta(passage: Passage) -> dict[str, Any]:
    """The metadata stored with a passage's point: its own fields (for filters), then embx's, which win.

    Chroma holds str, int, float, bool and lists of one of those: a list of mixed or nested values and a mapping
    are stored as their JSON text; None values are left out.
    """
    meta: dict[str, Any] = {}
    for key, value in passage.meta.items():
        if value is None or key.startswith("$"):
            continue
        uniform_list = isinstance(value, list) and value and len({type(v) for v in value}) == 1
        if _scalar(value) or (uniform_list and _scalar(value[0])):
            meta[key] = value
        else:
            meta[key] = json.dumps(value, default=str)
    meta.update(
        passage_id=passage.id,
        source=passage.source,
        heading_path=" > ".join(passage.heading_path),
        parent=passage.parent or "",
    )
    return meta
