"""`embx query`: search a collection with the model that built it, or with a run whose passages are the same.

Split from runner.index, which builds and evaluates collections; this module only reads them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from runner.index import IndexInputError, default_uri, index_model
from runner.vectordb import Hit, open_collection

log = logging.getLogger(__name__)


def parse_filters(pairs: list[str] | tuple[str, ...]) -> dict[str, Any] | None:
    """``key=value`` strings as a Chroma ``where``: each key equals the value, or (a list field) contains it.

    Values are typed as YAML would read a plain scalar: true/false, integers and decimals; anything else is text.

    Raises:
        IndexInputError: For a pair without ``=`` or with an empty key.

    """
    clauses = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise IndexInputError(f"--filter {pair!r}: expected key=value, e.g. --filter specialty=cardiology")
        value = _typed(raw.strip())
        key = key.strip()
        clauses.append({"$or": [{key: value}, {key: {"$contains": value}}]})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _typed(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            continue
    return raw


def query_index(
    db: str | Path,
    name: str,
    text: str,
    *,
    uri: str | Path | None = None,
    k: int = 10,
    filters: list[str] | tuple[str, ...] = (),
    run: str | None = None,
) -> tuple[dict[str, Any], list[Hit]]:
    """Search a collection with the model that built it (its query prefix, its normalisation), or with a run's.

    Args:
        db: Results store (where `run` is found; the default database lies beside it).
        name: The collection.
        text: The query.
        uri: The vector database (default: beside `db`).
        k: Hits to return.
        filters: ``KEY=VALUE`` metadata filters, all of which must hold.
        run: Encode the query with this run's saved model instead (a run id or unique prefix). Its passages must
            be the ones in the collection: a run with a query adapter over the collection's base model (its
            queries change, its passages do not), or the run that built the collection.

    Returns:
        (the collection's metadata, the hits best first).

    Raises:
        VectorDBError: No such collection, or an unreachable database.
        IndexInputError: A collection not built by embx, a run whose passages are not the collection's, or a bad
            filter.

    """
    from runner.evaluate import encode
    from runner.models import load_model
    from runner.spec import ModelSpec

    if not text.strip():
        raise IndexInputError("the query text is empty")
    where = parse_filters(filters)
    index = open_collection(uri or default_uri(db), name)
    meta = index.metadata()
    if not meta.get("embx_model_spec"):
        raise IndexInputError(f"index {name!r} in {index.location} was not built by embx index (no model recorded)")
    if not meta.get("embx_complete"):
        log.warning("index %s is incomplete (an interrupted embx index): rerun that command to finish it", name)
    if run is None:
        spec = ModelSpec.model_validate_json(meta["embx_model_spec"])
        model = load_model(spec, location=meta.get("embx_model_path") or None)
    else:
        im = index_model(db, run)
        if im.key != meta.get("embx_model_key"):
            raise IndexInputError(
                f"index {name!r} was built by {meta.get('embx_model')}; run {run} embeds passages as "
                f"{im.label}, so its queries do not belong in this index (a run with a query adapter searches its "
                f"base model's index; another run, its own: embx index {run})"
            )
        spec = im.spec
        model = load_model(spec, location=im.query_location or im.location)
    vector = encode(
        model, [spec.query_prefix + text], task="query", batch_size=1, normalize=spec.normalize, description=None
    )
    return meta, index.search(vector.cpu().numpy(), k, where)[0]
