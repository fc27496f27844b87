"""Chunking documents into token-sized passages: every strategy, two levels, and the size guarantees."""

from __future__ import annotations

import random

import numpy as np
import pytest

from runner.data.chunking import chunk_documents, split_sentences
from runner.data.types import Document, Section
from runner.spec import ChunkingSpec

VOCABULARY = (
    "the patient reported mild pain after walking and the doctor ordered a scan of the knee joint which showed "
    "some swelling around the cartilage so rest ice and gentle exercise were advised for two weeks before review"
)
WORDS = VOCABULARY.split()


def sentences(rng: random.Random, n: int) -> str:
    return " ".join(" ".join(rng.choices(WORDS, k=rng.randint(6, 14))).capitalize() + "." for _ in range(n))


def make_doc(doc_id: str = "knee.md", seed: int = 0) -> Document:
    rng = random.Random(seed)
    long_para = "\n\n".join(sentences(rng, rng.randint(2, 6)) for _ in range(6))
    return Document(
        doc_id=doc_id,
        path=f"/docs/{doc_id}",
        title="Knee care",
        sections=[
            Section([], "A short introduction."),
            Section(["Knee"], long_para),
            Section(["Knee", "Exercise"], sentences(rng, 25)),  # one long paragraph
            Section(["Knee", "Exercise", "Lines"], "\n".join(sentences(rng, 2) for _ in range(10))),
            Section(["Blank"], "   \n  "),
            Section(["Edge"], "https://example.org/" + "verylongpathsegment" * 40),  # no spaces at all
        ],
        meta={"specialty": "orthopaedics"},
    )


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from runner.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2").location)


def count(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def topic_embed(texts: list[str]) -> np.ndarray:
    """A fake sentence embedding: one axis per topic keyword, plus a little sentence-specific noise."""
    rows = []
    for text in texts:
        rng = np.random.default_rng(abs(hash(text)) % 2**32)
        vec = rng.normal(0, 0.05, 8)
        vec[0 if "cat" in text else 1 if "planet" in text else 2] += 1.0
        rows.append(vec / np.linalg.norm(vec))
    return np.array(rows)


STRATEGIES = ["none", "fixed", "recursive", "paragraph", "semantic"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_makes_sized_chunks_inside_sections(tokenizer, strategy):
    doc = make_doc()
    spec = ChunkingSpec(strategy=strategy, chunk_size=48, overlap=8)
    chunks, skipped = chunk_documents([doc], spec, tokenizer, embed=topic_embed)
    assert skipped == []
    assert chunks and all(c.text.strip() and c.text == c.text.strip() for c in chunks)
    assert len({c.chunk_id for c in chunks}) == len(chunks)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert [c.chunk_id for c in chunks] == [f"knee.md#fine-{i}" for i in range(len(chunks))]
    sections = {tuple(s.heading_path): s.text for s in doc.sections}
    for chunk in chunks:
        assert chunk.level == "fine" and chunk.parent_id is None and chunk.doc_id == "knee.md"
        assert chunk.text in sections[tuple(chunk.heading_path)]  # never crosses a section boundary
        assert chunk.meta == {"specialty": "orthopaedics", "source": "knee.md", "title": "Knee care"}
        if strategy != "none":
            assert count(tokenizer, chunk.text) <= 48, chunk.text
    assert ("Blank",) not in {tuple(c.heading_path) for c in chunks}
    if strategy == "none":
        assert [c.text for c in chunks] == [s.text for s in doc.sections if s.text.strip()]
    else:
        # each section's chunks cover all of its words, in order
        for path, text in sections.items():
            pieces = [c.text for c in chunks if tuple(c.heading_path) == path]
            if text.strip():
                assert pieces[0] == text.strip()[: len(pieces[0])]
                assert text.strip().endswith(pieces[-1])


def test_fixed_windows_overlap_by_about_overlap_tokens(tokenizer):
    text = sentences(random.Random(1), 40)
    doc = Document("a.txt", "/a.txt", "a", [Section([], text)])
    chunks, _ = chunk_documents([doc], ChunkingSpec(strategy="fixed", chunk_size=40, overlap=10), tokenizer)
    assert len(chunks) > 5
    for a, b in zip(chunks, chunks[1:]):
        shared = max(k for k in range(len(b.text) + 1) if a.text.endswith(b.text[:k]))
        assert 8 <= count(tokenizer, b.text[:shared]) <= 12, (a.text, b.text)
        assert 36 <= count(tokenizer, a.text) <= 40
    assert text.endswith(chunks[-1].text) and text.startswith(chunks[0].text)


def test_fixed_without_overlap_tiles_the_text(tokenizer):
    text = sentences(random.Random(2), 30)
    doc = Document("a.txt", "/a.txt", "a", [Section([], text)])
    chunks, _ = chunk_documents([doc], ChunkingSpec(strategy="fixed", chunk_size=32, overlap=0), tokenizer)
    assert " ".join(c.text for c in chunks) == text  # cut at spaces only (never before a full stop)


def test_paragraph_packs_whole_paragraphs(tokenizer):
    paragraphs = [f"Paragraph {i} is about topic {i} and nothing else at all." for i in range(12)]
    doc = Document("p.md", "/p.md", "p", [Section(["P"], "\n\n".join(paragraphs))])
    chunks, _ = chunk_documents([doc], ChunkingSpec(strategy="paragraph", chunk_size=40, overlap=0), tokenizer)
    assert len(chunks) > 1
    rebuilt = [p for c in chunks for p in c.text.split("\n\n")]
    assert rebuilt == paragraphs  # no paragraph cut, none repeated
    assert all(count(tokenizer, c.text) <= 40 for c in chunks)


def test_overlap_not_smaller_than_chunk_size_is_rejected():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="overlap"):
        ChunkingSpec(chunk_size=32, overlap=40)
    with pytest.raises(ValidationError, match="coarse_size"):
        ChunkingSpec(chunk_size=200, levels=["coarse", "fine"], coarse_size=100)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_levels_link_fine_chunks_to_their_coarse_parent(tokenizer, strategy):
    docs = [make_doc("a.md", seed=3), make_doc("b.md", seed=4)]
    spec = ChunkingSpec(strategy=strategy, chunk_size=32, overlap=4, levels=["coarse", "fine"], coarse_size=96)
    chunks, skipped = chunk_documents(docs, spec, tokenizer, embed=topic_embed)
    assert skipped == []
    assert len({c.chunk_id for c in chunks}) == len(chunks)
    by_id = {c.chunk_id: c for c in chunks}
    for doc in docs:
        coarse = [c for c in chunks if c.doc_id == doc.doc_id and c.level == "coarse"]
        fine = [c for c in chunks if c.doc_id == doc.doc_id and c.level == "fine"]
        assert coarse and fine
        assert [c.position for c in coarse] == list(range(len(coarse)))
        assert [c.position for c in fine] == list(range(len(fine)))
        assert all(c.parent_id is None and count(tokenizer, c.text) <= 96 for c in coarse)
        assert {f.parent_id for f in fine} == {c.chunk_id for c in coarse}  # every coarse chunk has children
        for chunk in fine:
            parent = by_id[chunk.parent_id]
            assert parent.level == "coarse" and parent.doc_id == chunk.doc_id
            assert chunk.text in parent.text
            assert chunk.heading_path == parent.heading_path
            if strategy != "none":
                assert count(tokenizer, chunk.text) <= 32
        assert any(len([f for f in fine if f.parent_id == c.chunk_id]) > 1 for c in coarse) or strategy == "none"


CATS = [
    "Cats sleep for most of the day in warm places.",
    "A cat grooms its fur with a rough tongue.",
    "Many cat owners give their pets a scratching post.",
    "Kittens learn to hunt by playing with their cat siblings.",
]
PLANETS = [
    "Jupiter is the largest planet in the solar system.",
    "Each planet follows an elliptical orbit around the sun.",
    "The planet Mars has two small moons.",
    "Astronomers find a new planet around distant stars every week.",
]


@pytest.mark.parametrize("semantic", [{"threshold": 0.5}, {"percentile": 20}])
def test_semantic_cuts_where_the_topic_changes(tokenizer, semantic):
    doc = Document("s.md", "/s.md", "s", [Section([], " ".join(CATS + PLANETS))])
    spec = ChunkingSpec(strategy="semantic", chunk_size=200, overlap=0, semantic=semantic)
    chunks, _ = chunk_documents([doc], spec, tokenizer, embed=topic_embed)
    assert [c.text for c in chunks] == [" ".join(CATS), " ".join(PLANETS)]


def test_semantic_splits_long_pieces_and_needs_embed(tokenizer):
    doc = Document("s.md", "/s.md", "s", [Section([], " ".join(CATS * 3))])
    spec = ChunkingSpec(strategy="semantic", chunk_size=32, overlap=0, semantic={"threshold": 0.5})
    chunks, _ = chunk_documents([doc], spec, tokenizer, embed=topic_embed)
    assert len(chunks) > 2 and all(count(tokenizer, c.text) <= 32 for c in chunks)
    with pytest.raises(ValueError, match="embed"):
        chunk_documents([doc], spec, tokenizer)


def test_semantic_with_the_bundled_model(tokenizer):
    from sentence_transformers import SentenceTransformer

    from runner.models import resolve_model

    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2").location, device="cpu")
    cooking = [
        "Boil the pasta in plenty of salted water for ten minutes.",
        "Drain the spaghetti and toss it with olive oil and garlic.",
        "Grate parmesan cheese over the pasta just before serving.",
    ]
    space = [
        "The telescope revealed distant galaxies beyond the Milky Way.",
        "Astronomers measured the orbit of a newly discovered exoplanet.",
        "Black holes bend the light of the stars around them.",
    ]
    doc = Document("mix.txt", "/mix.txt", "mix", [Section([], " ".join(cooking + space))])
    spec = ChunkingSpec(strategy="semantic", chunk_size=128, overlap=0, semantic={"percentile": 20})
    embed = lambda texts: model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)  # noqa: E731
    chunks, _ = chunk_documents([doc], spec, tokenizer, embed=embed)
    assert [c.text for c in chunks] == [" ".join(cooking), " ".join(space)]


def test_failing_document_is_skipped_and_others_continue(tokenizer):
    good = Document("good.md", "/good.md", "g", [Section([], " ".join(CATS))])
    bad = Document("bad.md", "/bad.md", "b", [Section([], "This one explodes. It really does.")])
    empty = Document("empty.md", "/empty.md", "e", [Section([], "  ")])

    def embed(texts):
        if any("explodes" in t for t in texts):
            raise RuntimeError("embedding service down")
        return topic_embed(texts)

    spec = ChunkingSpec(strategy="semantic", chunk_size=64, overlap=0)
    chunks, skipped = chunk_documents([good, bad, empty, good], spec, tokenizer, embed=embed)
    assert {c.doc_id for c in chunks} == {"good.md"}
    assert [(s.item, s.reason) for s in skipped] == [
        ("bad.md", "RuntimeError: embedding service down"),
        ("empty.md", "no text to chunk"),
        ("good.md", "duplicate document id"),
    ]


def test_split_sentences():
    text = "Dr. Smith met J. Doe in 2020. They talked, e.g. about cats etc. and dogs! Really?\n\nNew.\n- one\n- two"
    assert [text[s:e] for s, e in split_sentences(text)] == [
        "Dr. Smith met J. Doe in 2020.",
        "They talked, e.g. about cats etc. and dogs!",
        "Really?",
        "New.",
        "- one",
        "- two",
    ]


def test_documents_read_from_disk_chunk_end_to_end(tmp_path, tokenizer):
    from runner.data.documents import read_documents

    (tmp_path / "a.md").write_text("---\ntitle: A\n---\n# One\n" + " ".join(CATS) + "\n\n## Two\n" + " ".join(PLANETS))
    docs, _ = read_documents(tmp_path)
    chunks, skipped = chunk_documents(docs, ChunkingSpec(chunk_size=24, overlap=4), tokenizer)
    assert skipped == [] and len(chunks) >= 4
    assert {tuple(c.heading_path) for c in chunks} == {("One",), ("One", "Two")}
    assert all(c.meta == {"title": "A", "source": "a.md"} for c in chunks)


def test_sentences_of_chinese_text_end_at_full_width_stops():
    from runner.data.chunking import split_sentences

    text = "高血压患者应该减少钠的摄入量。每天不超过五克盐！这样做有用吗？Yes, it helps. 「很好。」然后呢"
    assert [text[a:b] for a, b in split_sentences(text)] == [
        "高血压患者应该减少钠的摄入量。",
        "每天不超过五克盐！",
        "这样做有用吗？",
        "Yes, it helps.",
        "「很好。」",
        "然后呢",
    ]
