"""Query generation: ict, heading, qa_pairs and llm (against a fake OpenAI-compatible endpoint on loopback)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.data.llm_queries import parse_questions
from runner.data.queries import generate_queries, split_sentences
from runner.data.types import Chunk, Document, Section
from runner.spec import QueriesSpec

SECRET = "sk-test-SECRET-do-not-leak-12345"
KEY_ENV = "EMBX_TEST_QUERIES_API_KEY"


def _doc(doc_id: str, title: str, text: str = "") -> Document:
    return Document(doc_id, f"/docs/{doc_id}", title, [Section([], text)])


def _chunk(doc_id: str, pos: int, text: str, headings: list[str] | None = None, level: str = "fine") -> Chunk:
    return Chunk(f"{doc_id}#{level}-{pos}", doc_id, text, level, pos, headings or [])


# --- ict ---------------------------------------------------------------------------------------------------------

ICT_TEXT = (
    "Asthma narrows the airways of the lungs. Inhaled steroids reduce the swelling over weeks. "
    "Short.  Rescue inhalers open the airways within minutes! Doctors check lung function with spirometry."
)


def test_split_sentences_keeps_exact_substrings():
    text = 'He said "stop." Then he left.\n\n- first item here\n- second item here'
    sentences = split_sentences(text)
    assert sentences == ['He said "stop."', "Then he left.", "- first item here", "- second item here"]
    assert all(s in text for s in sentences)


def test_ict_is_deterministic_masks_and_respects_min_words():
    chunks = [
        _chunk("a.md", 0, ICT_TEXT),
        _chunk("a.md", 1, "Only one sentence in this chunk at all."),
        _chunk("a.md", 2, "Tiny one. Tiny two."),
        _chunk("a.md", 0, ICT_TEXT, level="coarse"),
    ]
    docs = {"a.md": _doc("a.md", "Asthma")}
    spec = QueriesSpec(generator="ict", per_chunk=2, min_words=4, seed=7)
    first = generate_queries(chunks, docs, spec)
    again = generate_queries(chunks, docs, spec)
    assert [(q.text, q.chunk_id) for q in first.queries] == [(q.text, q.chunk_id) for q in again.queries]
    assert len(first.queries) == 2 and {q.chunk_id for q in first.queries} == {"a.md#fine-0"}
    for q in first.queries:
        assert q.generator == "ict" and q.masked == q.text and q.masked in ICT_TEXT
        assert len(q.text.split()) >= 4 and q.text != "Short."
    # the only sentence is never taken; nothing long enough -> skipped with a reason
    reasons = {s.item: s.reason for s in first.skipped}
    assert "one sentence" in reasons["a.md#fine-1"] and "4 words" in reasons["a.md#fine-2"]
    assert first.stats["chunks"] == 3 and first.stats["no_sentence"] == 2 and first.stats["kept"] == 2
    # another seed picks (at least sometimes) other sentences, still deterministically
    picks = {
        tuple(q.text for q in generate_queries(chunks, docs, spec.model_copy(update={"seed": s})).queries)
        for s in range(8)
    }
    assert len(picks) > 1
    # per_chunk larger than the sentences: at least one sentence stays in the positive
    many = generate_queries(chunks[:1], docs, QueriesSpec(generator="ict", per_chunk=10, min_words=1))
    assert len(many.queries) == len(split_sentences(ICT_TEXT)) - 1


# --- heading -----------------------------------------------------------------------------------------------------


def test_heading_queries():
    chunks = [
        _chunk("a.md", 0, "text one", ["Asthma", "Treatment options"]),
        _chunk("a.md", 1, "text two", ["Asthma", "Treatment options"]),  # same heading: a duplicate query
        _chunk("a.md", 2, "text three", ["Asthma", "Q&"]),  # generic (< 3 chars): dropped
        _chunk("b.md", 0, "no headings here"),  # falls back to the document title
    ]
    docs = {"a.md": _doc("a.md", "Asthma"), "b.md": _doc("b.md", "Kidney stones")}
    result = generate_queries(chunks, docs, QueriesSpec(generator="heading", min_words=4))
    assert [(q.text, q.chunk_id) for q in result.queries] == [
        ("Treatment options", "a.md#fine-0"),
        ("Kidney stones", "b.md#fine-0"),
    ]
    assert result.stats["dropped_duplicate"] == 1 and result.stats["dropped_short"] == 1
    assert all(q.generator == "heading" and q.masked is None for q in result.queries)


# --- qa_pairs ----------------------------------------------------------------------------------------------------

QA_CHUNKS = [
    _chunk("asthma.md", 0, "Asthma is a chronic disease.\nInhaled   steroids reduce airway swelling."),
    _chunk("asthma.md", 1, "Rescue inhalers act within minutes."),
    _chunk("kidney.md", 0, "Kidney stones cause sharp pain. Drinking water helps prevent them."),
]
QA_DOCS = {"asthma.md": _doc("asthma.md", "Asthma"), "kidney.md": _doc("kidney.md", "Kidney")}


def test_qa_pairs_csv_with_column_mapping(tmp_path: Path):
    (tmp_path / "qa.csv").write_text(
        "Q,A,src\n"
        "What reduces airway swelling?,inhaled steroids REDUCE airway swelling,asthma.md\n"
        "How fast do rescue inhalers work?,within minutes,asthma\n"
        "What prevents stones?,drinking water,asthma.md\n"  # answer is in another document
        "What is the cure?,a secret answer,kidney.md\n"
        ",orphan answer,kidney.md\n",
        encoding="utf-8",
    )
    spec = QueriesSpec(
        generator="qa_pairs", qa_pairs={"path": "qa.csv", "columns": {"query": "Q", "answer": "A", "document": "src"}}
    )
    result = generate_queries(QA_CHUNKS, QA_DOCS, spec, base_dir=tmp_path)
    assert [(q.text, q.chunk_id) for q in result.queries] == [
        ("What reduces airway swelling?", "asthma.md#fine-0"),
        ("How fast do rescue inhalers work?", "asthma.md#fine-1"),
    ]
    reasons = {s.item: s.reason for s in result.skipped}
    assert set(reasons) == {"qa.csv:row 3", "qa.csv:row 4", "qa.csv:row 5"}
    assert "not found" in reasons["qa.csv:row 3"] and "asthma.md" in reasons["qa.csv:row 3"]
    assert "empty question" in reasons["qa.csv:row 5"]
    assert result.stats["rows"] == 5 and result.stats["unmatched"] == 2 and result.stats["invalid_rows"] == 1


def test_qa_pairs_jsonl_answer_only(tmp_path: Path):
    lines = [
        {"question": "What prevents kidney stones?", "answer": "Drinking water"},
        {"question": "Is asthma chronic?", "answer": "chronic disease"},
        {"question": "Is asthma chronic", "answer": "chronic disease"},  # duplicate question (normalised)
        {"question": "Unanswerable?", "answer": "nowhere to be found"},
    ]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    spec = QueriesSpec(generator="qa_pairs", qa_pairs={"path": str(tmp_path / "qa.jsonl")})
    result = generate_queries(QA_CHUNKS, QA_DOCS, spec)
    assert [(q.text, q.chunk_id, q.doc_id) for q in result.queries] == [
        ("What prevents kidney stones?", "kidney.md#fine-0", "kidney.md"),
        ("Is asthma chronic?", "asthma.md#fine-0", "asthma.md"),
    ]
    assert [s.item for s in result.skipped] == ["qa.jsonl:line 4"]
    assert result.stats["dropped_duplicate"] == 1 and result.stats["unmatched"] == 1


def test_qa_pairs_missing_column_and_document_only(tmp_path: Path):
    (tmp_path / "qa.csv").write_text("question,reply\nWhat?,x\n", encoding="utf-8")
    spec = QueriesSpec(generator="qa_pairs", qa_pairs={"path": "qa.csv"})
    with pytest.raises(ValueError, match=r"qa\.csv.*'answer'.*columns present: 'question', 'reply'"):
        generate_queries(QA_CHUNKS, QA_DOCS, spec, base_dir=tmp_path)
    (tmp_path / "qa.jsonl").write_text(json.dumps({"q": "What?", "answer": "x"}) + "\n", encoding="utf-8")
    spec = QueriesSpec(generator="qa_pairs", qa_pairs={"path": "qa.jsonl"})
    with pytest.raises(ValueError, match=r"qa\.jsonl:1.*'question'.*columns present: 'q', 'answer'"):
        generate_queries(QA_CHUNKS, QA_DOCS, spec, base_dir=tmp_path)
    doc_only = QueriesSpec(
        generator="qa_pairs", qa_pairs={"path": "qa.csv", "columns": {"query": "question", "document": "reply"}}
    )
    result = generate_queries(QA_CHUNKS, QA_DOCS, doc_only, base_dir=tmp_path)
    assert result.queries == [] and "no answer column" in result.skipped[0].reason


# --- llm ---------------------------------------------------------------------------------------------------------


def test_parse_questions_forms():
    assert parse_questions('{"questions": [" a b ", ""]}') == ["a b"]
    assert parse_questions('```json\n["x", "y"]\n```') == ["x", "y"]
    assert parse_questions('Sure! {"questions": ["z"]} Hope this helps.') == ["z"]
    for bad in ("this is not json", '{"answers": ["x"]}', "[1, 2]"):
        with pytest.raises(ValueError):
            parse_questions(bad)


class FakeLLM:
    """An OpenAI-compatible chat endpoint whose behaviour depends on a marker in the prompt."""

    def __init__(self, slow_s: float = 1.2) -> None:
        self.requests: Counter[str] = Counter()
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                cid = re.search(r"ID=(\w+)", prompt).group(1)
                with fake.lock:
                    fake.requests[cid] += 1
                    count = fake.requests[cid]
                    fake.auth.add(self.headers.get("Authorization", ""))
                try:
                    if cid.startswith("ECHOKEY"):  # an endpoint that quotes the key deep inside its error text
                        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                        message = "x" * 150 + f" invalid key {key} given"  # the key straddles the 200-character cut
                        return self._send(400, {"error": {"message": message, "type": "invalid_request_error"}})
                    if cid.startswith("FAIL500"):
                        return self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                    if cid.startswith("RATE429") and count == 1:
                        return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                    if cid.startswith("SLOW"):
                        time.sleep(slow_s)
                        return self._send(200, self._completion(body, '{"questions": ["too late now"]}'))
                    if cid.startswith("BADJSON"):
                        return self._send(200, self._completion(body, "this is not json"))
                    topic = re.search(r"TOPIC=(\w+)", prompt).group(1)
                    questions = [
                        f"How is {topic} treated in adults?",
                        f"how is {topic}   treated in adults",  # duplicate within the chunk
                        "Why?",  # too short
                        "What is the main point of this passage?",  # duplicate across chunks
                        f"What causes {topic} in children?",
                        f"Who studies {topic} in hospitals?",  # over per_chunk
                    ]
                    content = json.dumps({"questions": questions})
                    if topic == "gout":
                        content = "```json\n" + json.dumps(questions) + "\n```"  # fenced bare list
                    return self._send(200, self._completion(body, content))
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    return None

            def _completion(self, body: dict, content: str) -> dict:
                return {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_llm():
    server = FakeLLM()
    yield server
    server.close()


def _llm_spec(url: str, **llm) -> QueriesSpec:
    settings = {
        "base_url": url,
        "model": "fake-model",
        "api_key_env": KEY_ENV,
        "timeout_s": 0.5,
        "max_retries": 1,
        "concurrency": 4,
        **llm,
    }
    return QueriesSpec(generator="llm", per_chunk=2, min_words=4, llm=settings)


LLM_CHUNKS = [
    _chunk("a.md", 0, "ID=GOOD1 TOPIC=asthma Asthma narrows the airways.", ["Asthma"]),
    _chunk("a.md", 1, "ID=RATE429 TOPIC=eczema Eczema makes skin itch.", ["Eczema"]),
    _chunk("b.md", 0, "ID=FAIL500 TOPIC=gout Gout hurts."),
    _chunk("b.md", 1, "ID=SLOW TOPIC=flu Flu spreads."),
    _chunk("c.md", 0, "ID=BADJSON TOPIC=acne Acne is common."),
    _chunk("c.md", 1, "ID=GOOD2 TOPIC=gout Gout is a form of arthritis."),
    _chunk("c.md", 0, "ID=COARSE TOPIC=none coarse chunks get no queries", level="coarse"),
]
LLM_DOCS = {d: _doc(d, d.upper()) for d in ("a.md", "b.md", "c.md")}


def test_llm_generation_failures_cache_and_resume(fake_llm: FakeLLM, tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "cache" / "llm.jsonl"
    spec = _llm_spec(fake_llm.url)
    started = time.perf_counter()
    first = generate_queries(LLM_CHUNKS, LLM_DOCS, spec, cache_path=cache)
    assert time.perf_counter() - started < 10
    assert fake_llm.auth == {f"Bearer {SECRET}"}

    kept = [(q.chunk_id, q.text) for q in first.queries]
    assert kept == [
        ("a.md#fine-0", "How is asthma treated in adults?"),
        ("a.md#fine-0", "What is the main point of this passage?"),
        ("a.md#fine-1", "How is eczema treated in adults?"),
        ("a.md#fine-1", "What causes eczema in children?"),
        ("c.md#fine-1", "How is gout treated in adults?"),
        ("c.md#fine-1", "What causes gout in children?"),
    ]
    assert all(q.generator == "llm" and q.doc_id == q.chunk_id.split("#")[0] for q in first.queries)
    reasons = {s.item: s.reason for s in first.skipped}
    assert set(reasons) == {"b.md#fine-0", "b.md#fine-1", "c.md#fine-0"}
    assert "HTTP 500" in reasons["b.md#fine-0"]
    assert "timeout" in reasons["b.md#fine-1"]
    assert "malformed JSON" in reasons["c.md#fine-0"]

    s = first.stats
    assert s["chunks"] == 6 and s["asked"] == 6 and s["from_cache"] == 0 and s["answered"] == 3
    assert (s["failed_http"], s["failed_timeout"], s["failed_malformed"]) == (1, 1, 1)
    assert s["asked"] == s["answered"] + sum(v for k, v in s.items() if k.startswith("failed_"))
    assert s["candidates"] == 18
    assert s["candidates"] == s["kept"] + s["dropped_short"] + s["dropped_duplicate"] + s["dropped_extra"]
    assert (s["kept"], s["dropped_short"], s["dropped_duplicate"]) == (6, 3, 5)
    assert s["skipped"] == len(first.skipped) == 3

    # client retries: 429 once then fine; 500 and timeouts retried by the client; bad JSON asked again by us
    assert fake_llm.requests == {"GOOD1": 1, "GOOD2": 1, "RATE429": 2, "FAIL500": 2, "SLOW": 2, "BADJSON": 2}

    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert sorted(x["chunk_id"] for x in lines) == ["a.md#fine-0", "a.md#fine-1", "c.md#fine-1"]
    cache_text = cache.read_text()
    assert SECRET not in cache_text and KEY_ENV not in cache_text
    assert not any(SECRET in s.reason for s in first.skipped)

    # a rerun asks only for the failed chunks and keeps the same queries
    before = Counter(fake_llm.requests)
    second = generate_queries(LLM_CHUNKS, LLM_DOCS, spec, cache_path=cache)
    asked_again = fake_llm.requests - before
    assert set(asked_again) == {"FAIL500", "SLOW", "BADJSON"}
    assert [(q.chunk_id, q.text) for q in second.queries] == kept
    assert second.stats["from_cache"] == 3 and second.stats["asked"] == 3
    assert len(cache.read_text().splitlines()) == 3
    assert SECRET not in caplog.text


def test_llm_tolerates_truncated_cache_line(fake_llm: FakeLLM, tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    chunks = [LLM_CHUNKS[0], LLM_CHUNKS[5]]
    cache = tmp_path / "llm.jsonl"
    spec = _llm_spec(fake_llm.url, cache=cache.name)  # the spec's cache (relative to base_dir) wins
    first = generate_queries(chunks, LLM_DOCS, spec, cache_path=tmp_path / "ignored.jsonl", base_dir=tmp_path)
    assert not (tmp_path / "ignored.jsonl").exists()
    text = cache.read_text()
    cache.write_text(text[: len(text) - 25])  # a crash in the middle of the last line
    before = Counter(fake_llm.requests)
    with caplog.at_level(logging.WARNING):
        second = generate_queries(chunks, LLM_DOCS, spec, base_dir=tmp_path)
    assert "truncated last line" in caplog.text
    assert sum((fake_llm.requests - before).values()) == 1
    assert [q.text for q in second.queries] == [q.text for q in first.queries]
    # the new answer starts on its own line: the file reads back whole but for the torn line
    lines = cache.read_text().split("\n")
    assert len(lines) == 4 and lines[-1] == ""
    third = generate_queries(chunks, LLM_DOCS, spec, base_dir=tmp_path)
    assert third.stats["from_cache"] == 2 and sum((fake_llm.requests - before).values()) == 1


def test_llm_missing_key_env_and_custom_prompt(fake_llm: FakeLLM, tmp_path: Path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=KEY_ENV):
        generate_queries(LLM_CHUNKS, LLM_DOCS, _llm_spec(fake_llm.url))
    assert not fake_llm.requests

    # no key variable at all: the placeholder key; a custom template with its variables
    (tmp_path / "p.j2").write_text("{{ title }} / {{ heading_path | join('>') }} / {{ n }} / {{ chunk }}")
    spec = _llm_spec(fake_llm.url, api_key_env=None, prompt="p.j2")
    result = generate_queries(LLM_CHUNKS[:1], LLM_DOCS, spec, base_dir=tmp_path)
    assert len(result.queries) == 2 and fake_llm.auth == {"Bearer none"}
    (tmp_path / "bad.j2").write_text("{{ chunk }} {{ nope }}")
    with pytest.raises(ValueError, match="nope"):
        generate_queries(
            LLM_CHUNKS[:1], LLM_DOCS, _llm_spec(fake_llm.url, api_key_env=None, prompt="bad.j2"), base_dir=tmp_path
        )
