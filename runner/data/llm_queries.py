"""The llm query generator: questions for chunks from an OpenAI-compatible chat endpoint, cached as they come.

It asks through the official ``openai`` client, whose own retries (exponential backoff, honouring Retry-After)
cover timeouts, 429 and 5xx answers; answers that are not JSON ``{"questions": [...]}`` are asked again here.
Successful answers are appended to a JSONL cache as they arrive, so a rerun after a crash or after failures only
asks for what is missing. The API key is read from the environment and never written to the cache, the log or an
error message.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.data.types import Chunk, Document, GeneratedQuery, Skipped, resolve_path
from runner.memo import llm_answer_key

if TYPE_CHECKING:
    from jinja2 import Template

    from runner.spec import LLMSpec, QueriesSpec

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "queries_prompt.j2"
PLACEHOLDER_KEY = "none"
MALFORMED_BACKOFF_S = 0.25

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```$", re.S)
_FAILURE_KINDS = ("timeout", "http", "malformed", "connection", "other")


# --- llm ---------------------------------------------------------------------------------------------------------


class _Failure(Exception):
    """A chunk the endpoint gave no usable answer for; `kind` is one of _FAILURE_KINDS."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def llm_candidates(
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
        path = resolve_path(prompt, base)
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
