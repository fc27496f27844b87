"""Read a folder of source documents (Markdown, plain text, HTML, PDF) into structured plain text.

Each supported file becomes a :class:`~runner.data.types.Document` whose sections follow its headings. Files that
cannot be used (unsupported type, binary, encrypted, empty, corrupt) are reported as
:class:`~runner.data.types.Skipped` entries instead: one bad file never stops the read.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.data.types import DataError, Document, Section, Skipped

logger = logging.getLogger(__name__)

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
TEXT_SUFFIXES = frozenset({".txt"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
PDF_SUFFIXES = frozenset({".pdf"})
SUPPORTED_SUFFIXES = MARKDOWN_SUFFIXES | TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES

EMPTY = "empty document"
BINARY = "binary or undecodable"

_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FRONT_MATTER_OPEN = re.compile(r"---[ \t]*")
_FRONT_MATTER_CLOSE = re.compile(r"(?:---|\.\.\.)[ \t]*")

# HTML elements that hold no readable content, or page chrome around it.
_HTML_DROP = ("script", "style", "noscript", "template", "nav", "svg", "iframe", "object", "canvas")
# <header>/<footer> are page chrome at page level, but the heading block of an article inside <article>/<main>.
_HTML_CHROME = ("header", "footer")
_HTML_CONTENT_ROOTS = ("article", "main", "section")
_HTML_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_HTML_PARAGRAPH_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "details", "dialog", "div", "dl", "fieldset", "figcaption",
        "figure", "form", "hr", "main", "ol", "p", "pre", "section", "summary", "table", "ul",
    }
)  # fmt: skip
_HTML_LINE_BLOCKS = frozenset({"li", "dt", "dd", "tr", "caption", "thead", "tbody", "tfoot"})
_HTML_CELLS = frozenset({"td", "th"})
_PRE = "\x01"  # marks lines of <pre> text, whose spacing is kept
_LINE, _PARAGRAPH = "\x02", "\x03"  # boundaries of line-level and paragraph-level blocks
_BREAKS = re.compile(r"[\x02\x03][\x02\x03 \t\n]*")
# <meta name=...> values that describe the page's rendering or tooling rather than its content.
_HTML_TECHNICAL_META = re.compile(
    r"^(viewport|generator|robots|googlebot|referrer|theme-color|color-scheme|format-detection|csrf-.*|"
    r"msapplication-.*|apple-.*|mobile-web-app-.*|application-name|google-site-verification|.*-verification|"
    r"handheldfriendly|mobileoptimized|x-ua-compatible|twitter:card|twitter:site|fb:.*|og:image.*|og:url|og:type)$"
)


def read_documents(folder: str | Path) -> tuple[list[Document], list[Skipped]]:
    """Read every file under a folder (recursively, in sorted order) into documents.

    Markdown (``.md``, ``.markdown``: optional YAML front matter, sections at ATX headings), plain text (``.txt``),
    HTML (``.html``, ``.htm``: sections at h1-h6, ``<meta name content>`` fields) and PDF (``.pdf``, via pypdf) are
    read. Everything else, and any file that cannot be read, is reported as skipped with the reason. Nothing is
    special-cased by name (hidden files, README.md...): the caller filters what it does not want.

    Args:
        folder: The documents folder.

    Returns:
        The documents in sorted path order, and the skipped inputs: ``item`` is the document id (the path relative
        to the folder, POSIX separators), or ``"<doc_id> (front matter)"`` / ``"<doc_id> (page N)"`` for a
        document that was kept without its malformed front matter or without an unreadable page.

    Raises:
        DataError: If the folder does not exist or is not a directory.

    """
    skipped: list[Skipped] = []
    docs = list(iter_documents(folder, skipped))
    logger.info("read %d documents from %s (%d skipped)", len(docs), folder, len(skipped))
    return docs, skipped


def iter_documents(folder: str | Path, skipped: list[Skipped]) -> Iterator[Document]:
    """The documents of :func:`read_documents` one at a time (one file in memory); skips go into `skipped`.

    Raises:
        DataError: If the folder does not exist or is not a directory (before anything is yielded).

    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError([f"{root}: documents folder not found (or not a directory)"])
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    return _documents(root, files, skipped)


def _documents(root: Path, files: list[Path], skipped: list[Skipped]) -> Iterator[Document]:
    for path in files:
        doc_id = path.relative_to(root).as_posix()
        try:
            doc = read_document(path, doc_id, skipped)
        except Exception as exc:  # one bad file must never stop the read
            logger.warning("skipping %s: %s: %s", doc_id, type(exc).__name__, exc)
            skipped.append(Skipped(doc_id, f"{type(exc).__name__}: {exc}"))
            continue
        if doc is not None:
            yield doc


def read_document(path: Path, doc_id: str, skipped: list[Skipped]) -> Document | None:
    """Read one file by its suffix.

    Args:
        path: The file.
        doc_id: Its id (path relative to the documents folder).
        skipped: Receives a :class:`Skipped` entry when the file, or part of it, cannot be used.

    Returns:
        The document, or None when it was skipped (the reason appended to `skipped`).

    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        reason = f"unsupported file type {suffix}" if suffix else "unsupported file type (no suffix)"
        skipped.append(Skipped(doc_id, reason))
        return None
    if suffix in PDF_SUFFIXES:
        doc = _read_pdf(path, doc_id, skipped)
        if doc is None:
            return None
    else:
        data = path.read_bytes()
        if suffix in HTML_SUFFIXES:
            doc = _read_html(data, path, doc_id)
        else:
            text = decode_text(data)
            if text is None:
                doc = None
            elif suffix in MARKDOWN_SUFFIXES:
                doc = _read_markdown(text, path, doc_id, skipped)
            else:
                doc = _document(path, doc_id, path.stem, [Section([], _clean(text))], {})
        if doc is None:
            skipped.append(Skipped(doc_id, BINARY))
            return None
    doc.sections = [s for s in doc.sections if s.text.strip()]
    if not doc.sections:
        skipped.append(Skipped(doc_id, EMPTY))
        return None
    return doc


def decode_text(data: bytes) -> str | None:
    """Decode a text file's bytes, or None when they look binary.

    UTF-16 with a byte-order mark, then UTF-8 (with or without BOM), then Windows-1252 are tried. NUL bytes (outside
    UTF-16) or a large share of control characters mean binary content. Line ends are normalised to LF.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            return None
    elif b"\x00" in data:
        return None
    else:
        for encoding in ("utf-8-sig", "cp1252"):
            try:
                text = data.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
        else:
            return None
    control = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f\v")
    if text and control / len(text) > 0.05:
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def jsonable(value: Any) -> Any:
    """A JSON-able copy of a parsed value: dates and times as ISO strings, mappings with string keys."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _document(path: Path, doc_id: str, title: str, sections: list[Section], meta: dict[str, Any]) -> Document:
    return Document(
        doc_id=doc_id, path=str(path.resolve()), title=title.strip() or path.stem, sections=sections, meta=meta
    )


def _clean(text: str) -> str:
    """Strip trailing spaces on lines and runs of blank lines; trim the ends."""
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# --- Markdown -------------------------------------------------------------------------------------------------------


def split_front_matter(text: str) -> tuple[str | None, str]:
    """Separate YAML front matter (between ``---`` lines at the very top) from the body.

    Returns:
        The front matter source (None when there is none) and the rest of the text.

    """
    lines = text.split("\n")
    if not lines or not _FRONT_MATTER_OPEN.fullmatch(lines[0]):
        return None, text
    for i in range(1, len(lines)):
        if _FRONT_MATTER_CLOSE.fullmatch(lines[i]):
            return "\n".join(lines[1:i]), "\n".join(lines[i + 1 :])
    return None, text  # an opening rule with no closing one is a thematic break, not front matter


def parse_front_matter(source: str) -> dict[str, Any]:
    """Parse YAML front matter with the safe loader.

    Raises:
        ValueError: If it is not valid YAML or not a mapping.

    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        data = YAML(typ="safe", pure=True).load(source)
    except YAMLError as exc:
        raise ValueError(f"invalid YAML front matter: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"front matter must be a mapping, not {type(data).__name__}")
    return jsonable(data)


def markdown_sections(text: str) -> tuple[list[Section], str | None]:
    """Split Markdown at ATX headings (``#`` to ``######``), ignoring lines inside fenced code blocks.

    Returns:
        The sections (text before the first heading has an empty heading path; heading lines are not part of the
        section text) and the first heading's text (None without headings).

    """
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []
    first_heading: str | None = None
    fence: str | None = None

    def flush() -> None:
        sections.append(Section([h for _, h in stack], _clean("\n".join(body))))
        body.clear()

    for line in text.split("\n"):
        fenced = _FENCE.match(line)
        if fence is not None:
            if fenced and fenced.group(1)[0] == fence[0] and len(fenced.group(1)) >= len(fence):
                fence = None
            body.append(line)
            continue
        if fenced:
            fence = fenced.group(1)
            body.append(line)
            continue
        heading = _ATX_HEADING.match(line)
        if heading is None:
            body.append(line)
            continue
        flush()
        level, title = len(heading.group(1)), (heading.group(2) or "").strip()
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        if first_heading is None and title:
            first_heading = title
    flush()
    return sections, first_heading


def _read_markdown(text: str, path: Path, doc_id: str, skipped: list[Skipped]) -> Document:
    source, body = split_front_matter(text)
    meta: dict[str, Any] = {}
    if source is not None:
        try:
            meta = parse_front_matter(source)
        except ValueError as exc:
            logger.warning("%s: ignoring its front matter: %s", doc_id, exc)
            skipped.append(Skipped(f"{doc_id} (front matter)", str(exc)))
    sections, first_heading = markdown_sections(body)
    title = meta.get("title")
    title = str(title) if title not in (None, "") else first_heading or path.stem
    return _document(path, doc_id, title, sections, meta)


# --- HTML -----------------------------------------------------------------------------------------------------------


def _read_html(data: bytes, path: Path, doc_id: str) -> Document | None:
    from bs4 import BeautifulSoup

    if b"\x00" in data and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None
    soup = BeautifulSoup(data, "html.parser")
    meta: dict[str, Any] = {}
    for tag in soup.find_all("meta"):
        name = tag.get("name") or tag.get("property")
        content = tag.get("content")
        if not isinstance(name, str) or not isinstance(content, str):
            continue
        name = name.strip().lower()
        if not name or _HTML_TECHNICAL_META.match(name):
            continue
        content = " ".join(content.split())
        if name not in meta:
            meta[name] = content
        elif isinstance(meta[name], list):
            meta[name].append(content)
        else:
            meta[name] = [meta[name], content]
    title_tag = soup.find("title")
    title = " ".join(title_tag.get_text(" ").split()) if title_tag else ""
    for tag in soup.find_all(["head", "title", "meta", "link", *_HTML_DROP]):
        if not tag.decomposed:
            tag.decompose()
    for tag in soup.find_all(_HTML_CHROME):
        if not tag.decomposed and tag.find_parent(_HTML_CONTENT_ROOTS) is None:
            tag.decompose()
    sections, first_h1 = _html_sections(soup.body or soup)
    return _document(path, doc_id, title or first_h1 or path.stem, sections, meta)


def _html_sections(root: Any) -> tuple[list[Section], str | None]:
    """Walk the tree in reading order, starting a section at every h1-h6 with a non-empty text."""
    from bs4.element import NavigableString, PreformattedString, Tag

    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    parts: list[str] = []
    first_h1: list[str] = []

    def flush() -> None:
        # a run of block boundaries becomes one line break, or a blank line if any of them is a paragraph's
        text = _BREAKS.sub(lambda m: "\n\n" if _PARAGRAPH in m.group() else "\n", "".join(parts))
        lines = [
            line.replace(_PRE, "").rstrip() if _PRE in line else " ".join(line.split()) for line in text.split("\n")
        ]
        sections.append(Section([h for _, h in stack], _clean("\n".join(lines))))
        parts.clear()

    def walk(node: Any, pre: bool) -> None:
        for child in node.children:
            if isinstance(child, PreformattedString):  # comments, doctype, CDATA, processing instructions
                continue
            if isinstance(child, NavigableString):
                s = str(child)
                parts.append("\n".join(_PRE + line for line in s.split("\n")) if pre else re.sub(r"\s+", " ", s))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name
            if name in _HTML_HEADINGS:
                heading = " ".join(child.get_text(" ").split())
                if not heading:
                    continue
                flush()
                level = int(name[1])
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, heading))
                if level == 1 and not first_h1:
                    first_h1.append(heading)
                continue
            if name == "br":
                parts.append("\n")
                continue
            brk = _PARAGRAPH if name in _HTML_PARAGRAPH_BLOCKS else _LINE if name in _HTML_LINE_BLOCKS else ""
            parts.append(brk or (" " if name in _HTML_CELLS else ""))
            walk(child, pre or name == "pre")
            parts.append(brk or (" " if name in _HTML_CELLS else ""))

    walk(root, False)
    flush()
    return sections, (first_h1[0] if first_h1 else None)


# --- PDF ------------------------------------------------------------------------------------------------------------


def _read_pdf(path: Path, doc_id: str, skipped: list[Skipped]) -> Document | None:
    from pypdf import PdfReader

    try:
        reader = PdfReader(path)
        encrypted = reader.is_encrypted
    except Exception as exc:  # pypdf raises many types on damaged files (PdfReadError, ValueError, KeyError...)
        skipped.append(Skipped(doc_id, f"unreadable PDF: {type(exc).__name__}: {exc}"))
        return None
    if encrypted:
        try:
            opened = bool(reader.decrypt(""))
        except Exception as exc:  # e.g. an unsupported algorithm or a missing crypto library
            skipped.append(Skipped(doc_id, f"encrypted PDF ({type(exc).__name__}: {exc})"))
            return None
        if not opened:
            skipped.append(Skipped(doc_id, "encrypted PDF"))
            return None
    try:
        pages = list(reader.pages)
    except Exception as exc:  # a damaged page tree
        skipped.append(Skipped(doc_id, f"unreadable PDF: {type(exc).__name__}: {exc}"))
        return None
    texts: list[str] = []
    for number, page in enumerate(pages, start=1):
        try:
            texts.append(_clean((page.extract_text() or "").replace("\x00", "")))
        except Exception as exc:  # one damaged page should not lose the others
            logger.warning("%s: page %d unreadable: %s: %s", doc_id, number, type(exc).__name__, exc)
            skipped.append(Skipped(f"{doc_id} (page {number})", f"{type(exc).__name__}: {exc}"))
    text = "\n\n".join(t for t in texts if t)
    if not text:
        skipped.append(Skipped(doc_id, "no extractable text (scanned image?)"))
        return None
    meta, title = _pdf_meta(reader, len(pages))
    return _document(path, doc_id, title or path.stem, [Section([], text)], meta)


def _pdf_meta(reader: Any, pages: int) -> tuple[dict[str, Any], str]:
    """Document-information fields (author, subject, keywords, creation date) and the title, when readable."""
    meta: dict[str, Any] = {"pages": pages}
    title = ""
    try:
        info = reader.metadata
    except Exception:  # a damaged info dictionary is not worth losing the text over
        return meta, title
    if info is None:
        return meta, title
    fields = {"title": "title", "author": "author", "subject": "subject", "keywords": "keywords"}
    for attr, key in fields.items():
        try:
            value = getattr(info, attr)
        except Exception:
            continue
        if isinstance(value, str) and value.strip():
            if key == "title":
                title = " ".join(value.split())
            else:
                meta[key] = " ".join(value.split())
    try:
        created = info.creation_date
    except Exception:
        created = None
    if created is not None:
        meta["created"] = jsonable(created)
    return meta, title
