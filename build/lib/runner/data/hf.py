"""Hugging Face datasets in the BEIR/mteb layout (configs `corpus`, `queries` and `default` for qrels)."""

from __future__ import annotations

from runner.data.beir import doc_text
from runner.data.types import DataError, RetrievalData


def load_hf(name: str, revision: str | None = None) -> RetrievalData:
    """Load a retrieval dataset with the `datasets` library, from the hub or a local folder.

    The layout is the one mteb publishes (for example ``mteb/nfcorpus``): a ``corpus`` config with
    ``_id``/``title``/``text``, a ``queries`` config with ``_id``/``text``, and a ``default`` config holding
    qrels (``query-id``, ``corpus-id``, ``score``) with one dataset split per qrels split.

    Args:
        name: Hub id or local folder.
        revision: Hub revision.

    Raises:
        DataError: If the dataset cannot be loaded or is inconsistent.

    """
    import datasets

    def table(config: str):
        try:
            return datasets.load_dataset(name, config, revision=revision)
        except Exception as exc:  # the datasets library raises many types for "not found / offline"
            raise DataError([f"hf dataset {name!r} config {config!r}: {type(exc).__name__}: {exc}"]) from exc

    def first_split(dd):
        return dd[next(iter(dd))]

    problems: list[str] = []
    corpus: dict[str, str] = {}
    for i, row in enumerate(first_split(table("corpus"))):
        did, text = str(row.get("_id", row.get("id", ""))), doc_text(row.get("title"), row.get("text"))
        if not did or not text:
            problems.append(f"{name} corpus row {i}: missing _id or empty text")
        elif did in corpus:
            problems.append(f"{name} corpus row {i}: duplicate document id {did!r}")
        else:
            corpus[did] = text
    queries: dict[str, str] = {}
    for i, row in enumerate(first_split(table("queries"))):
        qid, text = str(row.get("_id", row.get("id", ""))), str(row.get("text") or "").strip()
        if not qid or not text:
            problems.append(f"{name} queries row {i}: missing _id or empty text")
        elif qid in queries:
            problems.append(f"{name} queries row {i}: duplicate query id {qid!r}")
        else:
            queries[qid] = text
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for split, rows in table("default").items():
        for i, row in enumerate(rows):
            qid, did = str(row["query-id"]), str(row["corpus-id"])
            if qid not in queries or did not in corpus:
                problems.append(f"{name} qrels {split} row {i}: unknown query {qid!r} or document {did!r}")
                continue
            qrels.setdefault(split, {}).setdefault(qid, {})[did] = int(row["score"])
    if problems:
        raise DataError(problems)
    return RetrievalData(corpus=corpus, queries=queries, qrels=qrels, source=f"hf:{name}")
