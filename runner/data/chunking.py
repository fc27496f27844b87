"""Cut documents into passages (chunks) sized in tokens of the base model's tokenizer.

Chunks never cross a section boundary and keep their section's heading path. Every chunk's text is a verbatim
substring of its section (and, with two levels, of its coarse parent chunk): nothing is detokenised or rejoined.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.data.types import Chunk, Document, Skipped

if TYPE_CHECKING:
    import numpy as np

    from runner.spec import ChunkingSpec

logger = logging.getLogger(__name__)

Span = tuple[int, int]
Embed = Callable[[list[str]], "np.ndarray"]

#: Separators of the recursive splitter, coarsest first: paragraphs, lines, sentences, words, characters.
RECURSIVE_SEPARATORS = [r"\n\s*\n", r"\n", r"(?<=[.!?])\s+", r"(?<=[。！？；])", r"\s+", ""]
#: A semantic piece under this many tokens (capped at a quarter of chunk_size) is merged into a neighbour that fits.
TINY_TOKENS = 16

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+")
_FULL_WIDTH_END = re.compile(r"[。！？；]+[」』”’）)\]]*")
"""Sentence ends of Chinese and Japanese text, which puts no space after them."""
_LIST_ITEM = re.compile(r"\n(?=[ \t]*(?:[-*+•]|\d{1,3}[.)])[ \t]+)")
_ABBREVIATIONS = frozenset(
    {
        "e.g", "i.e", "etc", "vs", "cf", "al", "dr", "mr", "mrs", "ms", "prof", "st", "no", "fig", "figs", "eq",
        "approx", "dept", "inc", "ltd", "jr", "sr", "mt", "vol", "pp", "ca", "resp",
    }
)  # fmt: skip


@dataclass
class _Unit:
    """A stretch of text that chunks must stay inside: a section, or a coarse chunk of one."""

    text: str
    heading_path: list[str]
    parent_id: str | None = None


def chunk_documents(
    docs: list[Document],
    spec: ChunkingSpec,
    tokenizer: Any,
    embed: Embed | None = None,
) -> tuple[list[Chunk], list[Skipped]]:
    """Cut documents into chunks as a spec's ``chunking`` section says.

    Strategies (fine level): ``none`` one chunk per section; ``fixed`` windows of ``chunk_size`` tokens sharing
    ``overlap`` tokens (cut between words where possible); ``recursive`` LangChain's recursive splitter (paragraphs,
    lines, sentences, words) measured with the tokenizer; ``paragraph`` whole paragraphs packed greedily, an
    oversized one split recursively; ``semantic`` sentences grouped until the embedding similarity of neighbouring
    sentences drops below ``semantic.threshold`` (or the document's ``semantic.percentile``-th percentile).

    With ``levels: [coarse, fine]`` coarse chunks (recursive, ``coarse_size`` tokens, no overlap) are made first and
    fine chunks are made inside each, linked by ``parent_id``.

    Args:
        docs: The documents (unique doc_ids).
        spec: The validated chunking spec.
        tokenizer: The base model's Hugging Face tokenizer; sizes are ``len(tokenizer.encode(text,
            add_special_tokens=False))``. Strategy ``fixed`` needs a fast tokenizer (offset mappings).
        embed: Texts -> L2-normalised embeddings (one row each); needed by strategy ``semantic`` only.

    Returns:
        Chunks, per document coarse ones (if any) then fine ones, in order; and the documents that could not be
        chunked, with the reason.

    Raises:
        ValueError: For strategy ``semantic`` without `embed`, or ``fixed`` with a slow tokenizer.

    """
    if spec.strategy == "semantic" and embed is None:
        raise ValueError("chunking strategy 'semantic' needs an embedding function (embed)")
    if spec.strategy == "fixed" and not getattr(tokenizer, "is_fast", False):
        raise ValueError("chunking strategy 'fixed' needs a fast (Rust) tokenizer for its offset mappings")
    chunker = _Chunker(spec, tokenizer, embed)
    chunks: list[Chunk] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for doc in docs:
        if doc.doc_id in seen:
            skipped.append(Skipped(doc.doc_id, "duplicate document id"))
            continue
        seen.add(doc.doc_id)
        try:
            made = chunker.document(doc)
        except Exception as exc:  # one bad document must not stop the others
            logger.warning("could not chunk %s: %s: %s", doc.doc_id, type(exc).__name__, exc)
            skipped.append(Skipped(doc.doc_id, f"{type(exc).__name__}: {exc}"))
            continue
        if not made:
            skipped.append(Skipped(doc.doc_id, "no text to chunk"))
            continue
        chunks.extend(made)
    fine = sum(1 for c in chunks if c.level == "fine")
    logger.info(
        "chunked %d documents into %d fine chunks (%s, %d tokens)%s",
        len(docs) - len(skipped),
        fine,
        spec.strategy,
        spec.chunk_size,
        f" and {len(chunks) - fine} coarse chunks" if len(chunks) > fine else "",
    )
    return chunks, skipped


def split_sentences(text: str) -> list[Span]:
    """Sentence spans of a text, without surrounding whitespace.

    Cuts after ``.``, ``!``, ``?`` followed by whitespace (not after common abbreviations or initials, nor before a
    lowercase letter), after the full-width ``。！？；`` of Chinese and Japanese text (no space follows them),
    at blank lines and before list items.
    """
    cuts = {0, len(text)}
    for match in _PARAGRAPH_BREAK.finditer(text):
        cuts.update((match.start(), match.end()))
    for match in _LIST_ITEM.finditer(text):
        cuts.add(match.end())
    for match in _FULL_WIDTH_END.finditer(text):
        cuts.add(match.end())
    for match in _SENTENCE_END.finditer(text):
        word = re.search(r"(\S+?)[.!?…]*[\"'”’)\]]*$", text[: match.end()].rstrip())
        stem = word.group(1).lower().lstrip("([\"'") if word else ""
        if text[match.start()] == "." and (stem in _ABBREVIATIONS or len(stem) == 1 and stem.isalpha()):
            continue
        nxt = text[match.end() : match.end() + 1]
        if nxt and nxt.islower():
            continue
        cuts.add(match.end())
    spans: list[Span] = []
    bounds = sorted(cuts)
    for start, end in zip(bounds, bounds[1:]):
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + len(piece.rstrip())))
    return spans


class _Chunker:
    """Per-call state: the spec, the tokenizer with a token-count cache, and the LangChain splitters."""

    def __init__(self, spec: ChunkingSpec, tokenizer: Any, embed: Embed | None) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.embed = embed
        self._counts: dict[str, int] = {}
        self._splitters: dict[tuple[int, int], Any] = {}

    # --- measuring ----------------------------------------------------------------------------------------------

    def count(self, text: str) -> int:
        """Tokens of `text` (no special tokens), cached."""
        n = self._counts.get(text)
        if n is None:
            n = len(self.tokenizer.encode(text, add_special_tokens=False, verbose=False))
            if len(self._counts) < 200_000:
                self._counts[text] = n
        return n

    # --- documents ----------------------------------------------------------------------------------------------

    def document(self, doc: Document) -> list[Chunk]:
        spec = self.spec
        meta = {**doc.meta, "source": doc.doc_id, "title": doc.title}
        sections = [_Unit(s.text, list(s.heading_path)) for s in doc.sections if s.text.strip()]
        coarse: list[Chunk] = []
        if "coarse" in spec.levels:
            units: list[_Unit] = []
            for section in sections:
                for start, end in self.recursive(section.text, spec.coarse_size, 0):
                    chunk_id = f"{doc.doc_id}#coarse-{len(coarse)}"
                    text = section.text[start:end]
                    coarse.append(
                        Chunk(
                            chunk_id=chunk_id,
                            doc_id=doc.doc_id,
                            text=text,
                            level="coarse",
                            position=len(coarse),
                            heading_path=list(section.heading_path),
                            meta=dict(meta),
                        )
                    )
                    units.append(_Unit(text, list(section.heading_path), chunk_id))
        else:
            units = sections
        fine: list[Chunk] = []
        for unit, spans in zip(units, self.fine_spans(units)):
            for start, end in spans:
                text = unit.text[start:end]
                if not text.strip():
                    continue
                fine.append(
                    Chunk(
                        chunk_id=f"{doc.doc_id}#fine-{len(fine)}",
                        doc_id=doc.doc_id,
                        text=text,
                        level="fine",
                        position=len(fine),
                        heading_path=list(unit.heading_path),
                        parent_id=unit.parent_id,
                        meta=dict(meta),
                    )
                )
        return coarse + fine if fine else []

    def fine_spans(self, units: list[_Unit]) -> list[list[Span]]:
        """Fine chunk spans of each unit, by the spec's strategy, every one within chunk_size (except ``none``)."""
        spec = self.spec
        if spec.strategy == "semantic":
            found = self.semantic(units)
        else:
            split = {
                "none": lambda text: [(0, len(text))],
                "fixed": lambda text: self.fixed(text, spec.chunk_size, spec.overlap),
                "recursive": lambda text: self.recursive(text, spec.chunk_size, spec.overlap),
                "paragraph": self.paragraph,
            }[spec.strategy]
            found = [split(unit.text) for unit in units]
        found = [[_trim(u.text, s) for s in spans] for u, spans in zip(units, found)]
        found = [[s for s in spans if s[1] > s[0]] for spans in found]
        if spec.strategy != "none":
            found = [self.enforce(u.text, spans) for u, spans in zip(units, found)]
        return found

    def enforce(self, text: str, spans: list[Span]) -> list[Span]:
        """Re-cut any span over chunk_size into token windows (a safety net: tokenisation is not additive)."""
        out: list[Span] = []
        for start, end in spans:
            if self.count(text[start:end]) <= self.spec.chunk_size:
                out.append((start, end))
                continue
            logger.debug("re-cutting a %d-character piece that exceeds chunk_size", end - start)
            out.extend((start + s, start + e) for s, e in self.fixed(text[start:end], self.spec.chunk_size, 0))
        return out

    # --- strategies ---------------------------------------------------------------------------------------------

    def fixed(self, text: str, size: int, overlap: int) -> list[Span]:
        """Windows of at most `size` tokens sharing about `overlap` tokens, cut on token boundaries.

        A window ends at the whitespace boundary (else the word boundary) nearest its full size within its second
        half; the next one starts at the boundary nearest `overlap` tokens back (within half the overlap). A word
        longer than half a window is cut inside. Texts are sliced by the tokenizer's offsets, never detokenised.
        """
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets: list[Span] = encoding["offset_mapping"]
        words = encoding.word_ids()
        n = len(offsets)
        if n == 0:
            return []

        def boundary(i: int, spaced: bool) -> bool:
            if i <= 0 or i >= n:
                return True
            if spaced:
                return offsets[i][0] > offsets[i - 1][1]
            return words[i] is None or words[i] != words[i - 1]

        def nearest(target: int, lo: int, hi: int) -> int:
            for spaced in (True, False):
                found = [k for k in range(lo, hi + 1) if boundary(k, spaced)]
                if found:
                    return min(found, key=lambda k: (abs(k - target), -k))
            return target

        spans: list[Span] = []
        start = 0
        while True:
            end = min(start + size, n)
            if end < n:
                end = nearest(end, start + max(1, size // 2), end)
            while True:  # the slice, re-tokenised, may count differently: shrink until it fits
                span = (offsets[start][0], offsets[end - 1][1])
                if end - start <= 1 or self.count(text[span[0] : span[1]]) <= size:
                    break
                end -= 1
            spans.append(span)
            if end >= n:
                return spans
            if overlap == 0:
                start = end
                continue
            target = max(end - overlap, start + 1)
            slack = max(1, overlap // 2)
            start = nearest(target, max(start + 1, target - slack), min(end - 1, target + slack))

    def recursive(self, text: str, size: int, overlap: int) -> list[Span]:
        """LangChain's recursive splitter, measured in tokens, located back in `text`."""
        key = (size, overlap)
        splitter = self._splitters.get(key)
        if splitter is None:
            from langchain_text_splitters import RecursiveCharacterTextSplitter

            # What from_huggingface_tokenizer builds, but measured by self.count (encode, cached) rather than
            # tokenizer.tokenize, so the splitter and the size check agree; that factory cannot take a length_function.
            splitter = RecursiveCharacterTextSplitter(
                separators=RECURSIVE_SEPARATORS,
                is_separator_regex=True,
                keep_separator="start",
                chunk_size=size,
                chunk_overlap=overlap,
                length_function=self.count,
            )
            self._splitters[key] = splitter
        if self.count(text) <= size:
            return [(0, len(text))]
        return _locate(text, splitter.split_text(text))

    def paragraph(self, text: str) -> list[Span]:
        """Paragraphs packed greedily up to chunk_size; a paragraph over chunk_size is split recursively."""
        size = self.spec.chunk_size
        paragraphs = _paragraph_spans(text)
        spans: list[Span] = []
        pack: list[Span] = []
        for start, end in paragraphs:
            tokens = self.count(text[start:end])
            if tokens > size:
                if pack:
                    spans.append((pack[0][0], pack[-1][1]))
                    pack = []
                spans.extend((start + s, start + e) for s, e in self.recursive(text[start:end], size, 0))
                continue
            if pack and self.count(text[pack[0][0] : end]) > size:
                spans.append((pack[0][0], pack[-1][1]))
                pack = []
            pack.append((start, end))
        if pack:
            spans.append((pack[0][0], pack[-1][1]))
        return spans

    def semantic(self, units: list[_Unit]) -> list[list[Span]]:
        """Cut between sentences whose embedding similarity drops, per document; oversize pieces split recursively."""
        import numpy as np

        assert self.embed is not None
        spec = self.spec
        sentences = [split_sentences(u.text) for u in units]
        flat = [u.text[s:e] for u, spans in zip(units, sentences) for s, e in spans]
        if not flat:
            return [[] for _ in units]
        vectors = np.asarray(self.embed(flat), dtype=np.float64)
        if vectors.shape[0] != len(flat):
            raise ValueError(f"embed returned {vectors.shape[0]} rows for {len(flat)} sentences")
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        sims: list[np.ndarray] = []
        row = 0
        for spans in sentences:
            block = vectors[row : row + len(spans)]
            sims.append(np.sum(block[:-1] * block[1:], axis=1))
            row += len(spans)
        if spec.semantic.threshold is not None:
            cutoff = float(spec.semantic.threshold)
        else:
            every = np.concatenate(sims) if sims else np.zeros(0)
            cutoff = float(np.percentile(every, spec.semantic.percentile)) if every.size else -np.inf
        out: list[list[Span]] = []
        for unit, spans, sim in zip(units, sentences, sims):
            pieces: list[Span] = []
            if spans:
                first = spans[0][0]
                for i, value in enumerate(sim):
                    if value < cutoff:
                        pieces.append((first, spans[i][1]))
                        first = spans[i + 1][0]
                pieces.append((first, spans[-1][1]))
            sized: list[Span] = []
            for start, end in pieces:
                if self.count(unit.text[start:end]) <= spec.chunk_size:
                    sized.append((start, end))
                else:
                    sized.extend(
                        (start + s, start + e) for s, e in self.recursive(unit.text[start:end], spec.chunk_size, 0)
                    )
            out.append(self.merge_tiny(unit.text, sized))
        return out

    def merge_tiny(self, text: str, spans: list[Span]) -> list[Span]:
        """Merge pieces under TINY_TOKENS into the previous (else the next) piece when the two fit chunk_size."""
        size = self.spec.chunk_size
        tiny = min(TINY_TOKENS, size // 4)
        spans = list(spans)
        i = 0
        while i < len(spans) and len(spans) > 1:
            start, end = spans[i]
            if self.count(text[start:end]) >= tiny:
                i += 1
                continue
            if i > 0 and self.count(text[spans[i - 1][0] : end]) <= size:
                spans[i - 1 : i + 1] = [(spans[i - 1][0], end)]
                continue
            if i + 1 < len(spans) and self.count(text[start : spans[i + 1][1]]) <= size:
                spans[i : i + 2] = [(start, spans[i + 1][1])]
                continue
            i += 1
        return spans


def _trim(text: str, span: Span) -> Span:
    """The span without leading and trailing whitespace."""
    start, end = span
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return (start, start)
    lead = len(piece) - len(piece.lstrip())
    return (start + lead, start + lead + len(stripped))


def _paragraph_spans(text: str) -> list[Span]:
    """Spans of the blank-line separated paragraphs, without surrounding whitespace."""
    spans: list[Span] = []
    start = 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        spans.append(_trim(text, (start, match.start())))
        start = match.end()
    spans.append(_trim(text, (start, len(text))))
    return [s for s in spans if s[1] > s[0]]


def _locate(text: str, pieces: Sequence[str]) -> list[Span]:
    """Find each piece (in order, possibly overlapping the previous one) in `text`.

    Raises:
        ValueError: If a piece is not a substring of `text` (the splitter changed the text).

    """
    spans: list[Span] = []
    cursor = 0
    for piece in pieces:
        if not piece.strip():
            continue
        at = text.find(piece, cursor)
        if at < 0:
            at = text.find(piece)
        if at < 0:
            raise ValueError(f"splitter returned text not found in its input: {piece[:60]!r}")
        spans.append((at, at + len(piece)))
        cursor = at + 1
    return spans
