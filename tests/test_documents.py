"""Reading a documents folder: Markdown, text, HTML and PDF, and every kind of file that must be skipped."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

from runner.data import documents
from runner.data.documents import decode_text, read_documents
from runner.data.types import DataError

MARKDOWN = """---
title: Asthma guide
specialty: pulmonology
reviewed: 2024-03-01
tags: [adults, children]
---
Intro paragraph before any heading.

# Asthma
Asthma narrows the airways.

## Treatment ##
Inhalers help most people.

```python
# a comment, not a heading
print("hi")
```

### Children
Lower doses for children.

## Diagnosis
Spirometry measures airflow.
"""

HTML = """<!DOCTYPE html>
<html><head>
<meta charset="utf-8">
<title>Heart failure | Clinic</title>
<meta name="description" content="All about   heart failure.">
<meta name="author" content="Dr. Heart">
<meta name="viewport" content="width=device-width">
<meta name="generator" content="SiteBuilder 9">
<style>body { color: red; }</style>
<script>var secret = "SCRIPTTEXT";</script>
</head>
<body>
<header><a href="/">Clinic home HEADERTEXT</a></header>
<nav><ul><li>Menu NAVTEXT</li></ul></nav>
<main><article>
<header><h1>Heart failure</h1></header>
<p>The heart <b>cannot</b> pump enough blood.</p>
<h2>Symptoms</h2>
<ul><li>Shortness of breath</li><li>Swollen ankles</li></ul>
<h3>Severe</h3>
<p>Call a doctor at once.</p>
<h2>Treatment</h2>
<p>Diuretics and <a href="#">ACE inhibitors</a>.</p>
<pre>dose:
  10 mg daily</pre>
<script>alert("SCRIPTTEXT")</script>
<!-- COMMENTTEXT -->
</article></main>
<footer>Copyright FOOTERTEXT</footer>
</body></html>
"""


def make_pdf(lines: list[str], title: str | None = "Hello Title") -> bytes:
    """A minimal valid one-page PDF with Helvetica text, written by hand (pypdf cannot lay out text)."""
    content = b"\n".join(
        [b"BT /F1 14 Tf 72 720 Td 18 TL", *(b"(" + line.encode("latin-1") + b") Tj T*" for line in lines), b"ET"]
    )
    info = b"<< /Title (" + title.encode("latin-1") + b") /Author (Dr. Test) >>" if title else b"<< >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        info,
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def encrypt_pdf(data: bytes, user_password: str) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(data))
    writer.encrypt(user_password=user_password, owner_password="owner-secret")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def blank_pdf() -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    (root / "sub").mkdir()
    (root / "asthma.md").write_text(MARKDOWN)
    (root / "bad-front.md").write_text("---\ntitle: [unclosed\n---\n# Real heading\nBody text.\n")
    (root / "plain.txt").write_bytes(b"First paragraph.\r\nStill first.\r\n\r\nSecond paragraph.\r\n")
    (root / "latin.txt").write_bytes("Caf\xe9 au lait.".encode("cp1252"))
    (root / "sub" / "heart.html").write_text(HTML)
    (root / "hello.pdf").write_bytes(make_pdf(["Hello PDF world.", "Second line of text."]))
    (root / "locked.pdf").write_bytes(encrypt_pdf(make_pdf(["Top secret."]), "secret"))
    (root / "owner-only.pdf").write_bytes(encrypt_pdf(make_pdf(["Readable without a password."]), ""))
    (root / "scanned.pdf").write_bytes(blank_pdf())
    (root / "corrupt.pdf").write_bytes(random.Random(0).randbytes(3000))
    (root / "binary.txt").write_bytes(b"abc\x00\x01\x02\xff" * 50)
    (root / "empty.md").write_text("  \n\n")
    (root / "headings-only.md").write_text("# One\n## Two\n")
    (root / "report.docx").write_bytes(b"PK\x03\x04 not really a docx")
    (root / "noext").write_text("no suffix")
    return root


@pytest.fixture(scope="module")
def result(folder):
    docs, skipped = read_documents(folder)
    return {d.doc_id: d for d in docs}, {s.item: s.reason for s in skipped}


def test_good_documents_are_returned_in_sorted_order(folder):
    docs, _ = read_documents(folder)
    ids = [d.doc_id for d in docs]
    assert ids == [
        "asthma.md",
        "bad-front.md",
        "hello.pdf",
        "latin.txt",
        "owner-only.pdf",
        "plain.txt",
        "sub/heart.html",
    ]
    for doc in docs:
        assert Path(doc.path).is_absolute() and Path(doc.path).is_file()
        assert doc.text.strip()
        json.dumps(doc.meta)  # JSON-able


def test_markdown_front_matter_and_heading_paths(result):
    docs, _ = result
    doc = docs["asthma.md"]
    assert doc.title == "Asthma guide"
    assert doc.meta == {
        "title": "Asthma guide",
        "specialty": "pulmonology",
        "reviewed": "2024-03-01",
        "tags": ["adults", "children"],
    }
    paths = [s.heading_path for s in doc.sections]
    assert paths == [
        [],
        ["Asthma"],
        ["Asthma", "Treatment"],
        ["Asthma", "Treatment", "Children"],
        ["Asthma", "Diagnosis"],
    ]
    texts = [s.text for s in doc.sections]
    assert texts[0] == "Intro paragraph before any heading."
    assert texts[1] == "Asthma narrows the airways."
    assert texts[2].startswith("Inhalers help most people.") and "# a comment, not a heading" in texts[2]
    assert texts[4] == "Spirometry measures airflow."
    assert "---" not in doc.text and "specialty" not in doc.text


def test_malformed_front_matter_keeps_the_document_and_says_so(result):
    docs, skipped = result
    doc = docs["bad-front.md"]
    assert doc.title == "Real heading"
    assert doc.meta == {}
    assert [s.text for s in doc.sections] == ["Body text."]
    assert "front matter" in skipped["bad-front.md (front matter)"]


def test_plain_text(result):
    docs, _ = result
    doc = docs["plain.txt"]
    assert doc.title == "plain"
    assert len(doc.sections) == 1 and doc.sections[0].heading_path == []
    assert doc.sections[0].text == "First paragraph.\nStill first.\n\nSecond paragraph."
    assert docs["latin.txt"].text == "Café au lait."


def test_html_sections_meta_and_dropped_chrome(result):
    docs, _ = result
    doc = docs["sub/heart.html"]
    assert doc.title == "Heart failure | Clinic"
    assert doc.meta == {"description": "All about heart failure.", "author": "Dr. Heart"}
    assert [s.heading_path for s in doc.sections] == [
        ["Heart failure"],
        ["Heart failure", "Symptoms"],
        ["Heart failure", "Symptoms", "Severe"],
        ["Heart failure", "Treatment"],
    ]
    text = doc.text
    for hidden in ("SCRIPTTEXT", "NAVTEXT", "HEADERTEXT", "FOOTERTEXT", "COMMENTTEXT", "color: red"):
        assert hidden not in text
    assert doc.sections[0].text == "The heart cannot pump enough blood."
    assert doc.sections[1].text == "Shortness of breath\nSwollen ankles"
    assert "Diuretics and ACE inhibitors." in doc.sections[3].text
    assert "dose:\n  10 mg daily" in doc.sections[3].text  # <pre> keeps its spacing


def test_html_title_falls_back_to_first_h1(tmp_path):
    (tmp_path / "a.htm").write_text("<h2>Before</h2><p>x</p><h1>Main</h1><p>y</p>")
    docs, skipped = read_documents(tmp_path)
    assert skipped == [] and docs[0].title == "Main"


def test_pdf_text_and_metadata(result):
    docs, _ = result
    doc = docs["hello.pdf"]
    assert doc.title == "Hello Title"
    assert "Hello PDF world." in doc.text and "Second line of text." in doc.text
    assert doc.meta["author"] == "Dr. Test" and doc.meta["pages"] == 1
    assert "Readable without a password." in docs["owner-only.pdf"].text  # empty user password: decrypted


def test_skipped_files_and_reasons(result):
    _, skipped = result
    assert skipped["locked.pdf"] == "encrypted PDF"
    assert skipped["scanned.pdf"] == "no extractable text (scanned image?)"
    assert skipped["corrupt.pdf"].startswith("unreadable PDF: ")
    assert skipped["binary.txt"] == "binary or undecodable"
    assert skipped["empty.md"] == "empty document"
    assert skipped["headings-only.md"] == "empty document"
    assert skipped["report.docx"] == "unsupported file type .docx"
    assert skipped["noext"] == "unsupported file type (no suffix)"


def test_unexpected_errors_skip_only_that_document(tmp_path, monkeypatch):
    (tmp_path / "a.md").write_text("# A\ntext")
    (tmp_path / "b.txt").write_text("fine")

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(documents, "_read_markdown", boom)
    docs, skipped = read_documents(tmp_path)
    assert [d.doc_id for d in docs] == ["b.txt"]
    assert [(s.item, s.reason) for s in skipped] == [("a.md", "RuntimeError: boom")]


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_documents(tmp_path / "nope")


def test_decode_text():
    assert decode_text("héllo\r\nworld".encode()) == "héllo\nworld"
    assert decode_text("\ufeffbom".encode()) == "bom"
    assert decode_text("utf16 text".encode("utf-16")) == "utf16 text"
    assert decode_text(b"a\x00b") is None
    assert decode_text(bytes(range(1, 32)) * 10) is None
