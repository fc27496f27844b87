"""Queries for the chunks of a documents source: LLM questions, inverse cloze (ICT), headings or existing QA pairs.

Only fine chunks (the retrieval unit) get queries. Every generator ends in the same filter: questions are
stripped, those too short are dropped, duplicates (normalised as the leak checks do) are dropped
within a chunk and across chunks (the first chunk, in input order, keeps the query), and llm and ict keep at most
``per_chunk`` queries per chunk. Every filter decision is counted in ``QueryResult.stats``; every chunk or row
that yields nothing for a reason worth knowing (a failed LLM call, an unmatched QA pair...) is a ``Skipped``.

The llm generator asks an OpenAI-compatible chat endpoint through the official ``openai`` client, whose own
retries (exponential backoff, honouring Retry-After) cover timeouts, 429 and 5xx answers; answers that are not
JSON ``{"questions": [...]}`` are asked again here. Successful answers are appended to a JSONL cache as they
arrive, so a rerun after a crash or after failures only asks for what is missing. The API key is read from the
environment and never written to the cache, the log or an error message.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.data.checks import normalize
from runner.data.types import Chunk, Document, GeneratedQuery, Skipped
from runner.memo import llm_answer_key

if TYPE_CHECKING:
    from jinja2 import Template

    from runner.spec import LLMSpec, QAPairsSpec, QueriesSpec

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "queries_prompt.j2"
PLACEHOLDER_KEY = "none"
MALFORMED_BACKOFF_S = 0.25
MIN_HEADING_CHARS = 3
QA_ROLES = ("query", "answer", "document")

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```$", re.S)
_FAILURE_KINDS = ("timeout", "http", "malformed", "connection", "other")


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
        cache = _resolve(spec.llm.cache, base) if spec.llm.cache else cache_path
        candidates = _llm_candidates(
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


def _resolve(path: str | Path, base: Path) -> Path:
    """A spec path: absolute as given (with ~ expanded), else relative to `base`."""
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else base / expanded


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
    path = _resolve(qa.path, base)
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


# --- llm ---------------------------------------------------------------------------------------------------------


class _Failure(Exception):
    """A chunk the endpoint gave no usable answer for; `kind` is one of _FAILURE_KINDS."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _llm_candidates(
    fine: list[Chunk],
    *,
    docs: dict[str, Document],
    spec: QueriesSpec,
    cache_path: Path | None,
    base: Path,
    stats: dict[str, int],
    skipped: list[Skipped],
) -> list[GeneratedQuery]:
    """Ask the endpoint for the chunks missing from the cache, concurrently; failures become Skipped."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from runner.progress import task

    llm = spec.llm
    assert llm is not None
    key = _api_key(llm)
    template = _prompt_template(llm.prompt, base)
    stats.update(asked=0, from_cache=0, answered=0, empty_chunks=0, **{f"failed_{k}": 0 for k in _FAILURE_KINDS})
    cache = _Cache(cache_path) if cache_path is not None else None
    cached = cache.load() if cache is not None else {}

    answers: dict[str, list[str]] = {}
    jobs: list[tuple[Chunk, str, str]] = []
    for chunk in fine:
        if not chunk.text.strip():
            stats["empty_chunks"] += 1
            skipped.append(Skipped(chunk.chunk_id, "llm: empty chunk"))
            continue
        doc = docs.get(chunk.doc_id)
        prompt = _render(template, llm.prompt, chunk, doc, spec.per_chunk)
        cache_key = llm_answer_key(llm, prompt, spec.per_chunk)
        if cache_key in cached:
            answers[chunk.chunk_id] = cached[cache_key]
            stats["from_cache"] += 1
        else:
            jobs.append((chunk, prompt, cache_key))
    stats["asked"] = len(jobs)
    if cached or jobs:
        logger.info("llm queries: %d chunks from the cache, %d to ask of %s", stats["from_cache"], len(jobs), llm.model)

    failures: dict[str, _Failure] = {}
    if jobs:
        import openai

        client = openai.OpenAI(base_url=llm.base_url, api_key=key, timeout=llm.timeout_s, max_retries=llm.max_retries)
        pool = ThreadPoolExecutor(max_workers=min(llm.concurrency, len(jobs)), thread_name_prefix="llm-queries")
        try:
            futures = {
                pool.submit(_ask_and_record, client, llm, prompt, chunk.chunk_id, cache_key, cache, key): chunk
                for chunk, prompt, cache_key in jobs
            }
            with task(f"questions from {llm.model}", len(futures)) as (bar, bar_id):
                for future in as_completed(futures):
                    chunk = futures[future]
                    try:
                        answers[chunk.chunk_id] = future.result()
                        stats["answered"] += 1
                    except _Failure as failure:
                        failures[chunk.chunk_id] = failure
                        stats[f"failed_{failure.kind}"] += 1
                        logger.debug("llm queries: %s: %s", chunk.chunk_id, failure.reason)
                    bar.advance(bar_id)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            client.close()
        if cache is not None:
            cache.close()

    out: list[GeneratedQuery] = []
    for chunk in fine:
        if chunk.chunk_id in failures:
            skipped.append(Skipped(chunk.chunk_id, failures[chunk.chunk_id].reason))
        for question in answers.get(chunk.chunk_id, []):
            out.append(GeneratedQuery(question, chunk.chunk_id, chunk.doc_id, "llm"))
    if failures:
        logger.warning(
            "llm queries: no answer for %d chunks (timeout %d, HTTP error %d, malformed JSON %d, connection %d, "
            "other %d); failures are not cached, so a rerun asks for them again",
            len(failures),
            *(stats[f"failed_{k}"] for k in _FAILURE_KINDS),
        )
    return out


def _api_key(llm: LLMSpec) -> str:
    """The API key from the variable `api_key_env` names (placeholder when null).

    Raises:
        ValueError: If the variable is not set.

    """
    from runner.embed_api import read_api_key

    return read_api_key(llm.api_key_env, field="queries.llm.api_key_env", placeholder=PLACEHOLDER_KEY)


def _default_prompt() -> str:
    """The built-in prompt template: package data runner.templates, or the source tree's templates/."""
    from importlib import resources

    try:
        return resources.files("runner.templates").joinpath(DEFAULT_PROMPT).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return (Path(__file__).resolve().parents[2] / "templates" / DEFAULT_PROMPT).read_text(encoding="utf-8")


def _prompt_template(prompt: str | None, base: Path) -> Template:
    """Compile the prompt template (StrictUndefined: a misspelt variable is an error, not an empty string).

    A template named by a spec is untrusted text: it is rendered in Jinja's immutable sandbox, where attribute
    access to internals (``__class__``, ``__globals__``, ...) and any call that could change state raise a
    SecurityError instead of running.
    """
    from jinja2 import StrictUndefined, TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)
    if prompt is None:
        name, source = DEFAULT_PROMPT, _default_prompt()
    else:
        path = _resolve(prompt, base)
        if not path.is_file():
            raise ValueError(f"queries.llm.prompt: template not found: {path}")
        try:
            name, source = str(path), path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"queries.llm.prompt: {path}: cannot read as UTF-8 text: {exc}") from None
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise ValueError(f"{name}:{exc.lineno}: invalid prompt template: {exc.message}") from None


def _render(template: Template, prompt: str | None, chunk: Chunk, doc: Document | None, n: int) -> str:
    from jinja2 import TemplateError

    try:
        return template.render(
            chunk=chunk.text, title=doc.title if doc else "", heading_path=list(chunk.heading_path), n=n
        )
    except TemplateError as exc:
        where = prompt or DEFAULT_PROMPT
        raise ValueError(f"{where}: prompt template failed: {exc} (variables: chunk, title, heading_path, n)") from None


def _ask_and_record(
    client: Any,
    llm: LLMSpec,
    prompt: str,
    chunk_id: str,
    cache_key: str,
    cache: _Cache | None,
    secret: str,
) -> list[str]:
    """Worker: ask for one chunk and append the answer to the cache at once (failures raise _Failure)."""
    questions = _ask(client, llm, prompt, secret)
    if cache is not None:
        cache.append({"key": cache_key, "chunk_id": chunk_id, "model": llm.model, "questions": questions})
    return questions


def _ask(client: Any, llm: LLMSpec, prompt: str, secret: str) -> list[str]:
    """One chunk's questions; malformed answers are asked again up to max_retries times, with a short backoff.

    Raises:
        _Failure: timeout, http (status after the client's retries), malformed, connection or other.

    """
    import openai

    retries = llm.max_retries
    last = ""
    for attempt in range(retries + 1):
        try:
            response = client.chat.completions.create(
                model=llm.model, messages=[{"role": "user", "content": prompt}], temperature=llm.temperature
            )
        except openai.APITimeoutError:
            raise _Failure(
                "timeout", f"llm: timeout: no answer within {llm.timeout_s:g} s ({retries} retries)"
            ) from None
        except openai.APIStatusError as exc:
            detail = _short(_redact(exc.message, secret))
            raise _Failure(
                "http", f"llm: HTTP {exc.status_code} from the endpoint ({retries} retries): {detail}"
            ) from None
        except openai.APIConnectionError as exc:
            detail = _short(_redact(str(exc), secret))
            raise _Failure("connection", f"llm: connection failed ({retries} retries): {detail}") from None
        except openai.OpenAIError as exc:
            detail = _short(_redact(f"{type(exc).__name__}: {exc}", secret))
            raise _Failure("other", f"llm: {detail}") from None
        try:
            return parse_questions(_content(response))
        except ValueError as exc:
            last = _short(_redact(str(exc), secret))
        if attempt < retries:
            time.sleep(min(MALFORMED_BACKOFF_S * 2**attempt, 4.0))
    raise _Failure(
        "malformed",
        f'llm: malformed JSON: answer is not {{"questions": [...]}} after {retries + 1} attempts: {last}',
    )


def _content(response: Any) -> str:
    """The message text of a chat completion (ValueError if the body has no such field)."""
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError):
        raise ValueError(f"no choices[0].message.content in the response: {_short(str(response))}") from None
    if not isinstance(content, str):
        raise ValueError("the response's message content is empty")
    return content


def parse_questions(content: str) -> list[str]:
    """Questions from a model's answer: JSON ``{"questions": [...]}`` or a bare list, maybe in a ``` fence.

    Text around the JSON (a preamble such as "Sure, here they are:") is tolerated.

    Raises:
        ValueError: If no such JSON is found or an item is not a string.

    """
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
        if not starts:
            raise ValueError(f"not JSON: {_short(content)!r}") from None
        try:
            data, _ = json.JSONDecoder().raw_decode(text[min(starts) :])
        except json.JSONDecodeError:
            raise ValueError(f"not JSON: {_short(content)!r}") from None
    questions = data.get("questions") if isinstance(data, dict) else data
    if not isinstance(questions, list):
        raise ValueError(f'JSON without a "questions" list: {_short(content)!r}')
    if not all(isinstance(q, str) for q in questions):
        raise ValueError(f"questions must be strings: {_short(content)!r}")
    return [q.strip() for q in questions if q.strip()]


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redact(text: str, secret: str) -> str:
    """Remove the API key from text that goes into a reason or the log."""
    return text.replace(secret, "***") if secret and secret != PLACEHOLDER_KEY else text


class _Cache:
    """An append-only JSONL file of LLM answers, one line per answered chunk, safe to append from threads.

    Lines are ``{"key", "chunk_id", "model", "questions"}``; the key is the sha256 of model, endpoint, rendered
    prompt, temperature and n. Each line is flushed as it is written, so a crash loses at most the line being
    written; a truncated or corrupt line is skipped with a warning on the next load.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._handle: Any = None

    def load(self) -> dict[str, list[str]]:
        """Key -> questions of every readable line (a later line wins)."""
        if not self.path.is_file():
            return {}
        entries: dict[str, list[str]] = {}
        lines = self.path.read_text(encoding="utf-8", errors="replace").split("\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key, questions = record["key"], record["questions"]
                if not isinstance(key, str) or not all(isinstance(q, str) for q in questions):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                what = "truncated last line" if i == last else "corrupt line"
                logger.warning("llm cache %s:%d: skipping %s (that chunk is asked again)", self.path, i + 1, what)
                continue
            entries[key] = list(questions)
        return entries

    def append(self, record: dict[str, Any]) -> None:
        """Write one line and flush it (opens the file on first use, starting a new line after a torn one)."""
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                torn = self.path.is_file() and self.path.stat().st_size > 0 and not self._ends_with_newline()
                self._handle = self.path.open("a", encoding="utf-8")
                if torn:
                    self._handle.write("\n")
            self._handle.write(line)
            self._handle.flush()

    def close(self) -> None:
        """Close the file if it was opened."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as handle:
            handle.seek(-1, 2)
            return handle.read(1) == b"\n"
