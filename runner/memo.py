"""Identities of shared work, one key function per kind, and `Memo`, the per-experiment cache they index.

Every piece of work that two runs (ablation variants, search trials, repeats) can share is looked up by a key
that names exactly what the work depends on, so a variant that changes one input gets its own entry and a
variant that changes nothing relevant reuses it. Each function below documents what participates.

Some keys are persisted and frozen by golden tests (tests/test_memo.py): the spec hash (in `runner.spec`; paths
written relative in a spec file take part relative to it, so it is the same in another folder),
:func:`data_key`, :func:`model_key`, :func:`baseline_key` (store rows), :func:`embedding_cache_path` (files
under ``output.dir/embeddings``) and :func:`llm_answer_key` (lines of the LLM answer cache). Changing what
participates in one of them orphans users' stores or caches: do it only on purpose. The other keys live only
in memory, for one `embx run` or `embx search` process.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from runner.spec import ApiModelSpec, EvalSet, LLMSpec, MixSource, ModelSpec, Spec

T = TypeVar("T")

# Sections of `data:` that choose the training sample drawn from a dataset or how it is checked; not part of the
# dataset's identity.
_SAMPLE_FIELDS = {"limit", "seed", "on_leak", "leak_similarity", "min_chars"}


def content_key(*parts: Any) -> str:
    """Content hash of JSON-able parts (16 hex digits): the building block of every key here."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(location: str | None) -> list:
    """Names, sizes and modification times of the files at a local path (empty for a hub id or nothing).

    Part of the keys, so editing a dataset or a model folder in place invalidates reused results. Folders list
    at most their first 500 files (sorted by relative path).
    """
    if not location:
        return []
    path = Path(location)
    if path.is_file():
        stat = path.stat()
        return [[path.name, stat.st_size, stat.st_mtime_ns]]
    if not path.is_dir():
        return []
    files = sorted(p for p in path.rglob("*") if p.is_file())[:500]
    return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


# ------------------------------------------------------------------------------------------- persisted keys


def data_key(spec: Spec) -> str:
    """Identity of the dataset a spec reads (persisted: ``runs.info.dataset``, ``datasets`` rows).

    Participates: the `data:` section except the sample and check settings (limit, seed, on_leak,
    leak_similarity, min_chars); the fingerprints of `data.path` and `data.eval_path`; for the documents
    source also `chunking:`, `queries:` and `model.base` (chunks are sized by the model's tokenizer).
    """
    section = spec.data.model_dump(mode="json", exclude=_SAMPLE_FIELDS)
    parts = [section, fingerprint(spec.data.path), fingerprint(spec.data.eval_path)]
    if spec.data.source == "documents":
        parts += [spec.chunking.model_dump(mode="json"), spec.queries.model_dump(mode="json"), spec.model.base]
    return content_key(*parts)


def model_key(spec: Spec) -> str | None:
    """Identity of the base model as loaded (persisted through :func:`embedding_cache_path`).

    Participates: the `model:` section and the fingerprint of the files behind `model.base`. None for a hub id
    without `model.revision`: what it names can change upstream, so nothing is cached for it.
    """
    from runner.models import resolve_model

    try:
        resolved = resolve_model(spec.model.base)
    except ValueError:
        return None
    if resolved.kind == "hub" and not spec.model.revision:
        return None
    location = None if resolved.kind == "hub" else resolved.location
    return content_key(spec.model.model_dump(mode="json"), fingerprint(location))


def baseline_key(spec: Spec) -> str:
    """Identity of the base model's evaluation (persisted: ``runs.baseline_key``; later runs reuse its scores).

    Participates: the `model:` section, the fingerprint of the model's files, :func:`data_key` and the
    `eval:` section except `eval.index` (which measures the tuned model only) and `eval.memory_mb`.
    """
    from runner.models import resolve_model

    try:
        location = resolve_model(spec.model.base).location
    except ValueError:
        location = None
    model = spec.model.model_dump(mode="json")
    # eval.index measures the tuned model only; eval.memory_mb changes where embeddings live, not the scores
    settings = spec.eval.model_dump(mode="json", exclude={"index", "memory_mb"})
    return content_key(model, fingerprint(location), data_key(spec), settings)


def embedding_cache_path(
    disk: Path,
    *,
    base_key: str,
    model: ModelSpec,
    ids: list[str],
    texts: list[str],
    device: str,
    precision: str,
) -> Path:
    """File of the base model's corpus embeddings under `disk` (persisted across processes and runs).

    Participates: :func:`model_key` (`base_key`), the device type, the resolved inference precision,
    `model.passage_prefix`, `model.normalize`, `model.max_seq_length`, and every (id, text) of the corpus in
    order.
    """
    digest = hashlib.sha256()
    for part in (base_key, device, precision, model.passage_prefix, str(model.normalize), str(model.max_seq_length)):
        digest.update(part.encode() + b"\0")
    for doc_id, text in zip(ids, texts):
        digest.update(doc_id.encode() + b"\0" + text.encode() + b"\0")
    return disk / f"{digest.hexdigest()[:24]}.pt"


def llm_answer_key(llm: LLMSpec, prompt: str, n: int) -> str:
    """Key of one LLM answer in the query-generation cache (persisted: the JSONL cache's ``key``).

    Participates: the endpoint's model name and base URL (without a trailing slash), the rendered prompt, the
    temperature and the number of questions asked. Full sha256.
    """
    payload = {
        "model": llm.model,
        "base_url": llm.base_url.rstrip("/"),
        "prompt": prompt,
        "temperature": llm.temperature,
        "n": n,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def api_embedding_key(api: ApiModelSpec) -> str:
    """Identity of an API model's vectors in the embedding cache (persisted: the cache's ``model_key``).

    Participates: the base URL without credentials, query or trailing slash, the model name and the dimensions
    asked for. Not the API key, the price or the request settings: they do not change a vector. The text's
    prefix is part of the text, which the cache addresses by its sha256; so are the side's extra request fields
    (``query_extra_body``, ``passage_extra_body``: :meth:`runner.embed_api.ApiEmbedder.digest`).
    """
    from urllib.parse import urlsplit, urlunsplit

    url = urlsplit(api.base_url)
    host = url.hostname or ""
    netloc = f"{host}:{url.port}" if url.port else host
    clean = urlunsplit((url.scheme, netloc, url.path.rstrip("/"), "", ""))
    return content_key("api", clean, api.model, api.dimensions)


def selection_key(*, candidate: dict[str, Any], baseline: str) -> str:
    """Identity of one candidate's selection run (persisted: the run's ``spec_hash``; a rerun skips it).

    Participates: the candidate's section (its label included) and :func:`baseline_key` of the candidate as
    evaluated (model, model files, data, `eval:`).
    """
    return content_key("select", candidate, baseline)


def point_id(passage_id: str, text: str) -> str:
    """Id of a passage's point in a vector index (persisted in the database; see :mod:`runner.index`).

    Participates: the passage id and its text. Indexing the same passage again upserts the same point (and
    is skipped when present); a passage whose text changed gets a new point and its old one is swept.
    """
    return content_key("point", passage_id, text)


def index_model_key(*, model: dict[str, Any], weights: str) -> str:
    """Identity of the model that built a vector index (persisted in the collection's metadata).

    Participates: the `model:` section as the index uses it (prefixes, pooling, sequence length, normalisation)
    and `weights`: the saved model's sha256 for a run, :func:`model_key` or the hub id and revision for a base
    model. Another key means other vectors: such a collection is refused, never mixed.
    """
    return content_key("index-model", model, weights)


# ------------------------------------------------------------------------------------------ in-memory keys


def index_key(spec: Spec) -> str:
    """The corpus index of the main data (its texts and the base model's corpus embeddings).

    Participates: :func:`data_key`, the `model:` section, `eval.batch_size` and `eval.precision` (embeddings
    encoded at one precision are never reused by a variant that asks for another), and `eval.memory_mb` (the index
    holds its embeddings in memory or on disk by it).
    """
    m = spec.model.model_dump(mode="json")
    return content_key(data_key(spec), m, spec.eval.batch_size, spec.eval.precision, spec.eval.memory_mb)


def checks_key(spec: Spec) -> str:
    """The data-check report.

    Participates: :func:`index_key`, the `data:` section (sample, thresholds), the negative mode and count.
    """
    return content_key(
        index_key(spec), spec.data.model_dump(mode="json"), spec.negatives.mode, spec.negatives.per_query
    )


def negatives_key(spec: Spec) -> str:
    """Mined or sampled negatives with their statistics.

    Participates: :func:`index_key`, :func:`checks_key` (which pairs survived the leak policy), the
    `negatives:` section, the training sample (limit, seed), the train split, and whether a distillation loss
    asks for the teacher's scores of each pair.
    """
    from runner.spec.train import DISTILLATION_LOSSES

    return content_key(
        index_key(spec),
        checks_key(spec),
        spec.negatives.model_dump(mode="json"),
        spec.data.limit,
        spec.data.seed,
        spec.data.splits.train,
        *(["teacher scores"] if spec.train.loss in DISTILLATION_LOSSES else []),
    )


def mix_source_key(source: MixSource) -> str:
    """A `data.mix` source's data: its section and the fingerprint of its files."""
    return content_key("mix", source.model_dump(mode="json"), fingerprint(source.path))


def eval_set_key(entry: EvalSet) -> str:
    """An `eval.sets` entry's data: its section and the fingerprint of its files."""
    return content_key("set", entry.model_dump(mode="json"), fingerprint(entry.path))


def eval_set_index_key(entry: EvalSet, spec: Spec) -> str:
    """An `eval.sets` entry's corpus index.

    Participates: :func:`eval_set_key`, the `model:` section, `eval.batch_size`, `eval.precision` and
    `eval.memory_mb`.
    """
    m = spec.model.model_dump(mode="json")
    return content_key(eval_set_key(entry), m, spec.eval.batch_size, spec.eval.precision, spec.eval.memory_mb)


def bm25_key(spec: Spec, *, allowed: set[str] | None, qids: list[str]) -> str:
    """A BM25 run (no model).

    Participates: :func:`data_key`, the passages `eval.filter` lets through, `eval.depth`, the query ids.
    """
    return content_key(data_key(spec), sorted(allowed or []), spec.eval.depth, sorted(qids))


# -------------------------------------------------------------------------------------------------- Memo


@dataclass
class Memo:
    """Work shared between the runs of one process, by kind and key: one `get` for all of it.

    Kinds in use: ``data`` (loaded datasets: main, mix sources, eval sets), ``index`` (corpus indexes with
    their cached embeddings), ``checks`` (data-check reports), ``negatives`` (pairs with negatives and their
    statistics), ``baseline`` (the base model's scores with the run that computed them), ``bm25`` (BM25 runs).
    """

    _items: dict[tuple[str, str], Any] = field(default_factory=dict)

    def get(self, kind: str, key: str, make: Callable[[], T]) -> T:
        """The `kind` item under `key`, made (once) by `make()` when missing."""
        if (kind, key) not in self._items:
            self._items[kind, key] = make()
        return self._items[kind, key]

    def peek(self, kind: str, key: str) -> Any:
        """The `kind` item under `key`, or None."""
        return self._items.get((kind, key))

    def put(self, kind: str, key: str, value: Any) -> None:
        """Store `value` (e.g. a base score found in the store rather than computed)."""
        self._items[kind, key] = value

    def kinds(self) -> Mapping[str, int]:
        """Items held per kind (for logging and tests)."""
        out: dict[str, int] = {}
        for kind, _ in self._items:
            out[kind] = out.get(kind, 0) + 1
        return out
