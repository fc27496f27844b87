"""Data sources, negatives and checks: everything between a spec's `data:` section and training pairs."""

from __future__ import annotations

from pathlib import Path

from runner.data.types import DataError, Pair, RetrievalData

__all__ = ["DataError", "Pair", "RetrievalData", "load_data", "load_source"]


def load_data(spec, model=None, cache_dir: Path | None = None) -> RetrievalData:
    """Load the data a spec names, checked.

    Args:
        spec: The validated :class:`runner.spec.Spec`.
        model: The base model (documents source: its tokenizer sizes the chunks).
        cache_dir: Where the LLM query cache goes unless the spec names one (documents source).

    Returns:
        Corpus, queries, qrels per split and (for JSONL sources) explicit training pairs.

    Raises:
        DataError: For unreadable or inconsistent data, naming file and line.

    """
    data = spec.data
    if data.source == "documents":
        from runner.data.prepare import prepare_documents

        if model is None:
            raise ValueError("data.source documents needs the base model (its tokenizer sizes the chunks)")
        return prepare_documents(spec, model, cache_dir or Path("runs") / "llm-cache")
    if data.source == "beir":
        from runner.data.beir import load_beir

        return load_beir(data.path)
    if data.source == "jsonl":
        from runner.data.beir import load_beir
        from runner.data.jsonl import load_pairs_jsonl

        evaluation = load_beir(data.eval_path, required_splits=[s for s in (data.splits.dev, data.splits.test) if s])
        evaluation.train_pairs = load_pairs_jsonl(data.path)
        return evaluation
    from runner.data.hf import load_hf

    return load_hf(data.path, revision=data.revision)


def load_source(source: str, path: str, required_splits: list[str] | None = None) -> RetrievalData:
    """Load one more source (a `data.mix` entry or an `eval.sets` entry) by its format.

    Args:
        source: beir, jsonl (FlagEmbedding pairs only) or hf.
        path: Its location.
        required_splits: Splits that must exist (beir).

    """
    if source == "beir":
        from runner.data.beir import load_beir

        return load_beir(path, required_splits=required_splits)
    if source == "jsonl":
        from runner.data.jsonl import load_pairs_jsonl

        return RetrievalData(corpus={}, queries={}, qrels={}, train_pairs=load_pairs_jsonl(path), source=str(path))
    from runner.data.hf import load_hf

    return load_hf(path)
