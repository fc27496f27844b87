"""`embx index` and `embx query`: a corpus encoded with a run's model (or a spec's base model) in a vector database.

A collection records the model that built it (its `model:` section, where its weights are and their identity),
the dimension and the corpus path in its metadata. Points have content-derived ids (:func:`runner.memo.point_id`),
so indexing again skips what is there and upserts the same ids; an interrupted index is resumed by running the
same command, which encodes only the missing passages and finally sweeps points of passages no longer in the
corpus, ending with exactly one point per passage. A collection built by another model, dimension or corpus is
refused, never mixed. The corpus is streamed in batches (memory: one batch of texts and vectors plus the ids).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runner import store
from runner.memo import index_model_key, model_key, point_id
from runner.vectordb import VectorDBError, VectorIndex, check_name, drop_collection, open_collection

if TYPE_CHECKING:
    from runner.data.passages import Passage
    from runner.spec import ChunkingSpec, EvalSpec, ModelSpec, Spec

log = logging.getLogger(__name__)

BATCH = 256
"""Passages encoded and written at a time."""
SUFFIX = ".vectors"
"""The embedded database's folder beside the results store: results.duckdb -> results.vectors/."""


class IndexInputError(Exception):
    """Bad input for indexing or querying (an unknown run, a run without a saved model, a bad filter)."""


@dataclass
class IndexModel:
    """The model an index is built with, and the spec sections that say how it embeds and chunks.

    Attributes:
        spec: The `model:` section (prefixes, pooling, sequence length, normalisation).
        location: The folder to load (a run's saved model); None resolves ``spec.base``.
        key: :func:`runner.memo.index_model_key`.
        label: Shown to users: ``run <id>`` or ``base model <name>``.
        name: The default collection name (the run id, or ``<spec name>-base``).
        chunking: The spec's chunking (documents folders).
        eval: The spec's eval section (encoding batch size and precision).
        query_run: A run with a query adapter (``train.query_adapter``): its passages are its base model's, so
            the index is the base model's (`location` None, the base key and name) and only queries go through
            the run's saved model, at `query_location`. None for every other target.
        query_location: The saved model that encodes queries (None: the index's own model).

    """

    spec: ModelSpec
    location: str | None
    key: str
    label: str
    name: str
    chunking: ChunkingSpec
    eval: EvalSpec
    query_run: str | None = None
    query_location: str | None = None


@dataclass
class IndexReport:
    """What `embx index` did."""

    name: str
    uri: str
    model: str
    dim: int
    passages: int
    encoded: int
    present: int
    removed: int
    seconds: float
    size_bytes: int | None
    skipped: list[str]
    query_run: str | None = None
    """A run with a query adapter indexed through its base model: query with ``embx query NAME TEXT --run RUN``."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return asdict(self)


def default_uri(db: str | Path) -> Path:
    """The embedded vector database beside a results store (``results.duckdb`` -> ``results.vectors/``)."""
    path = Path(db).expanduser().resolve()
    return path.with_name(path.stem + SUFFIX)


def _target(db: str | Path, target: str, overrides: list[str] | None) -> tuple[Spec, dict[str, Any] | None]:
    """The spec of a spec file, or of a run (RUN_ID or a unique prefix) with the run itself."""
    from runner.spec import Spec, load_spec

    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        return load_spec(target, overrides or []).spec, None
    try:
        run = store.get_run(db, target)
    except KeyError as exc:
        raise IndexInputError(f"{exc.args[0]} in {db} (give a run id or a spec file)") from None
    return Spec.model_validate(json.loads(run.get("spec_json") or "{}")), run


def index_model(db: str | Path, target: str, *, overrides: list[str] | None = None) -> IndexModel:
    """The model of a run (RUN_ID or a unique prefix: its saved model) or of a spec file (its base model).

    Raises:
        IndexInputError: An unknown run, or one without a saved model.
        SpecError: A spec file that does not validate.

    """
    return _index_model(*_target(db, target, overrides))


def _index_model(spec: Spec, run: dict[str, Any] | None) -> IndexModel:
    if run is None:
        weights = model_key(spec) or f"{spec.model.base}@{spec.model.revision or 'latest'}"
        return IndexModel(
            spec=spec.model,
            location=None,
            key=index_model_key(model=spec.model.model_dump(mode="json"), weights=weights),
            label=f"base model {spec.model.base}",
            name=f"{spec.name}-base",
            chunking=spec.chunking,
            eval=spec.eval,
        )
    from runner.export import ExportError, saved_model_path

    try:
        folder = saved_model_path(run)
    except ExportError as exc:
        raise IndexInputError(str(exc)) from None
    if spec.train.query_adapter is not None:
        # The saved model's document route is the frozen base model, so its passages are the base model's: the
        # base model's index serves it as it is (nothing re-indexed), and only its queries need the saved model.
        base = _index_model(spec, None)
        base.query_run, base.query_location = run["run_id"], str(folder)
        return base
    saved = (run.get("info") or {}).get("saved_model")
    weights = saved.get("sha256") if isinstance(saved, dict) and saved.get("sha256") else str(folder)
    return IndexModel(
        spec=spec.model,
        location=str(folder),
        key=index_model_key(model=spec.model.model_dump(mode="json"), weights=weights),
        label=f"run {run['run_id']}",
        name=run["run_id"],
        chunking=spec.chunking,
        eval=spec.eval,
    )


def eval_index(
    db: str | Path, target: str, *, uri: str | None = None, overrides: list[str] | None = None
) -> tuple[dict[str, Any], str | None]:
    """Score a run's saved model (or a spec's base model) on its test split through the vector database's index.

    The settings are the spec's ``eval.index`` (defaults when it has none); `uri` replaces its database. A run's
    figures are recorded in its info (``index_eval``); a spec's are only returned.

    Returns:
        (the figures of :func:`runner.index_eval.evaluate_index`, the run id or None).

    Raises:
        IndexInputError: An unknown run, or one without a saved model.
        DataError: The spec's data cannot be loaded.
        VectorDBError: The database cannot be reached.

    """
    from runner.data import load_data
    from runner.evaluate import encode
    from runner.index_eval import evaluate_index
    from runner.models import load_model
    from runner.spec import IndexEvalSpec

    spec, run = _target(db, target, overrides)
    im = _index_model(spec, run)
    settings = spec.eval.index or IndexEvalSpec()
    if uri:
        settings = settings.model_copy(update={"uri": uri})
    model = load_model(im.spec, location=im.query_location or im.location)  # a query adapter's run: its Router
    data = load_data(spec, model)
    qrels = data.split(spec.data.splits.test)
    ids, qids = list(data.corpus), list(qrels)

    def embed(texts: list[str], what: Literal["query", "document"]):
        return encode(
            model,
            texts,
            task=what,
            batch_size=spec.eval.batch_size,
            normalize=spec.model.normalize,
            description=f"encode {what} texts",
            precision=spec.eval.precision,
        )

    figures = evaluate_index(
        corpus_ids=ids,
        corpus_emb=embed([spec.model.passage_prefix + data.corpus[i] for i in ids], "document"),
        query_ids=qids,
        query_emb=embed([spec.model.query_prefix + data.queries[q] for q in qids], "query"),
        qrels=qrels,
        settings=settings,
    )
    figures["model"] = im.label
    if run is not None:
        store.record_index_eval(db, run["run_id"], figures)
        return figures, run["run_id"]
    return figures, None


def _wanted(im: IndexModel, *, dim: int, data: Path) -> dict[str, Any]:
    return {
        "embx_model_key": im.key,
        "embx_model": im.label,
        "embx_model_spec": im.spec.model_dump_json(),
        "embx_model_path": im.location or "",
        "embx_dim": dim,
        "embx_data": str(data),
    }


def check_compatible(index: VectorIndex, wanted: dict[str, Any]) -> None:
    """Refuse a collection built by another model, dimension or corpus (or not by embx at all).

    Raises:
        VectorDBError: Naming what differs and how to proceed.

    """
    have = index.metadata()
    if not have.get("embx_model_key"):
        if index.count():
            raise VectorDBError(
                f"index {index.name!r} in {index.location} holds {index.count()} points not written by embx index:"
                " choose another --name"
            )
        return
    hint = f"choose another --name, or --recreate to rebuild {index.name!r} from scratch"
    if have.get("embx_dim") != wanted["embx_dim"]:
        raise VectorDBError(
            f"index {index.name!r} holds {have.get('embx_dim')}-dimensional vectors; {wanted['embx_model']} makes"
            f" {wanted['embx_dim']}-dimensional ones: {hint}"
        )
    if have["embx_model_key"] != wanted["embx_model_key"]:
        raise VectorDBError(
            f"index {index.name!r} was built by {have.get('embx_model')} (model key {have['embx_model_key']}), not by"
            f" {wanted['embx_model']} (model key {wanted['embx_model_key']}{_differences(have, wanted)}); vectors of"
            f" two models are never mixed: {hint}"
        )
    if have.get("embx_data") != wanted["embx_data"]:
        raise VectorDBError(
            f"index {index.name!r} holds the corpus {have.get('embx_data')}, not {wanted['embx_data']}: {hint}"
        )


def _differences(have: dict[str, Any], wanted: dict[str, Any]) -> str:
    """``: max_seq_length 160 here, 256 asked`` for the model settings that differ (empty when only weights do)."""
    try:
        old, new = json.loads(have.get("embx_model_spec") or "{}"), json.loads(wanted["embx_model_spec"])
    except ValueError:
        return ""
    diff = [f"{key} {old.get(key)!r} there, {new.get(key)!r} now" for key in new if old.get(key) != new.get(key)]
    return f"; {', '.join(diff)}" if diff else ""


def build_index(
    db: str | Path,
    target: str,
    *,
    data: str | Path,
    uri: str | Path | None = None,
    name: str | None = None,
    recreate: bool = False,
    overrides: list[str] | None = None,
    batch: int = BATCH,
    ef_search: int | None = None,
) -> IndexReport:
    """Encode a corpus with a run's (or a spec's base) model into a collection; resume and sweep as needed.

    Args:
        db: Results store (where runs are found; the default database lies beside it).
        target: A run id (or unique prefix) or a spec file.
        data: A BEIR folder (or its corpus.jsonl), or a documents folder (chunked as the spec says).
        uri: The vector database: a folder (embedded) or a server URL; default :func:`default_uri`.
        name: The collection (default: the run id, or ``<spec name>-base``).
        recreate: Drop an existing collection of that name first.
        overrides: ``--set`` strings for a spec target.
        batch: Passages encoded and written at a time.
        ef_search: HNSW search breadth kept with the collection (None: Chroma's default, 100, for a new one;
            an existing one keeps its own). Wider finds more of the exact top k and takes longer per query.

    Returns:
        What was written.

    Raises:
        IndexInputError: Bad run or spec target.
        DataError: A bad corpus (every problem listed, nothing written).
        VectorDBError: Unreachable database, or a collection of another model, dimension or corpus.

    """
    from runner.data.passages import check_beir_corpus, corpus_kind
    from runner.models import load_model

    started = time.perf_counter()
    im = index_model(db, target, overrides=overrides)
    source = Path(data).expanduser().resolve()
    kind = corpus_kind(source)
    total = check_beir_corpus(source) if kind == "beir" else None
    uri = uri or default_uri(db)
    name = check_name(name or im.name)
    model = load_model(im.spec, location=im.location)
    dim = int(getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)())
    wanted = _wanted(im, dim=dim, data=source)
    if recreate and drop_collection(uri, name):
        log.info("dropped index %s", name)
    index = open_collection(uri, name, create=True, hnsw={"ef_search": ef_search} if ef_search else None)
    check_compatible(index, wanted)
    if ef_search:
        index.set_ef_search(ef_search)
    index.set_metadata({**wanted, "embx_complete": False, "embx_passages": 0})
    skipped: list = []
    passages = _passages(kind, source, im=im, model=model, skipped=skipped)
    seen, encoded = _write(index, passages, model=model, im=im, total=total, batch=batch)
    if not seen:
        raise _no_passage(source, skipped)
    stale = [i for i in index.all_ids() if i not in seen]
    index.delete(stale)
    count = index.count()
    if count != len(seen):
        raise VectorDBError(f"index {name!r} holds {count} points for {len(seen)} passages; rerun with --recreate")
    index.set_metadata({**wanted, "embx_complete": True, "embx_passages": count})
    return IndexReport(
        name=name,
        uri=str(index.location),
        model=im.label,
        dim=dim,
        passages=count,
        encoded=encoded,
        present=len(seen) - encoded,
        removed=len(stale),
        seconds=round(time.perf_counter() - started, 3),
        size_bytes=index.size_bytes(),
        skipped=[f"{s.item}: {s.reason}" for s in skipped],
        query_run=im.query_run,
    )


def _passages(kind: str, source: Path, *, im: IndexModel, model, skipped: list):
    from runner.data.passages import beir_passages, document_passages

    if kind == "beir":
        return beir_passages(source)
    embed = None
    if im.chunking.strategy == "semantic":
        from runner.data.prepare import embedder

        embed = embedder(model, im.eval.batch_size, im.eval.precision)
    return document_passages(source, chunking=im.chunking, tokenizer=model.tokenizer, embed=embed, skipped=skipped)


def _no_passage(source: Path, skipped: list):
    from runner.data.types import DataError

    return DataError([f"{source}: no passage to index", *(f"{s.item}: {s.reason}" for s in skipped)])


def _write(index: VectorIndex, passages, *, model, im: IndexModel, total: int | None, batch: int) -> tuple[set, int]:
    """Upsert the passages missing from the index, a batch at a time; (every point id seen, passages encoded)."""
    from runner.progress import task

    seen: set[str] = set()
    encoded = 0
    pending: list[Passage] = []
    with task(f"index {index.name}", total) as (bar, tid):
        for passage in passages:
            pending.append(passage)
            if len(pending) >= batch:
                encoded += _flush(index, pending, seen, model=model, im=im)
                bar.advance(tid, len(pending))
                pending = []
        if pending:
            encoded += _flush(index, pending, seen, model=model, im=im)
            bar.advance(tid, len(pending))
    return seen, encoded


def _flush(index: VectorIndex, pending: list[Passage], seen: set[str], *, model, im: IndexModel) -> int:
    from runner.data.passages import point_meta
    from runner.data.types import DataError
    from runner.evaluate import encode

    ids = [point_id(p.id, p.text) for p in pending]
    repeated = [p.id for i, p in zip(ids, pending) if i in seen]
    if repeated or len(set(ids)) < len(ids):
        raise DataError([f"passage {pid!r} appears twice in the corpus" for pid in repeated or [pending[0].id]])
    seen.update(ids)
    present = index.existing(ids)
    todo = [(i, p) for i, p in zip(ids, pending) if i not in present]
    if not todo:
        return 0
    vectors = encode(
        model,
        [im.spec.passage_prefix + p.text for _, p in todo],
        task="document",
        batch_size=im.eval.batch_size,
        normalize=im.spec.normalize,
        description=None,
        precision=im.eval.precision,
    )
    index.upsert(
        [i for i, _ in todo], vectors.cpu().numpy(), [p.text for _, p in todo], [point_meta(p) for _, p in todo]
    )
    return len(todo)
