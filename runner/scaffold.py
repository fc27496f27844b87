"""`embx init`: look at a folder of documents, a BEIR folder or a FlagEmbedding JSONL file and write a spec for it.

The spec is commented, validates, and is sized to what was found: chunks sized to the base model's sequence
length, ICT queries (no LLM needed), splits by document, and a recipe (batch size, epochs) that gives at least
:data:`TARGET_STEPS` optimizer steps past the warm-up, so the first run learns something.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TARGET_STEPS = 30
"""Optimizer steps the recipe aims for (the run warns below 10)."""
MAX_EPOCHS = 5
ICT_PER_CHUNK = 2
SMALL_FOLDER = 10
"""Below this many documents there is no dev split: every held-out document goes to test."""


class InitError(Exception):
    """The target cannot be turned into a spec (nothing usable found, a missing evaluation folder)."""


@dataclass
class Found:
    """What `embx init` found at the target.

    Attributes:
        source: documents, beir or jsonl (as data.source).
        path: The target, absolute.
        eval_path: The BEIR folder to evaluate a jsonl file on.
        splits: Split names (dev may be None).
        counts: What was counted: documents, words, queries, judgements per split, training pairs.
        train_pairs: Training pairs expected (estimated for documents).
        notes: Things the user should know, printed and written into the spec's comments.

    """

    source: str
    path: Path
    eval_path: Path | None = None
    splits: dict[str, str | None] = field(default_factory=lambda: {"train": "train", "dev": "dev", "test": "test"})
    counts: dict[str, Any] = field(default_factory=dict)
    train_pairs: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    """Training settings sized to the data."""

    batch_size: int
    epochs: int
    steps_per_epoch: int
    learning_rate: float
    negatives: str
    early_stopping: bool


def model_max_length(base: str) -> int:
    """The base model's own max_seq_length, at most its position embeddings; 256 when nothing says (a hub id)."""
    from runner.models import resolve_model

    try:
        resolved = resolve_model(base)
    except ValueError:
        return 256
    folder = Path(resolved.location)

    def read(name: str, key: str) -> int | None:
        path = folder / name
        if resolved.kind == "hub" or not path.is_file():
            return None
        value = json.loads(path.read_text(encoding="utf-8")).get(key)
        return int(value) if isinstance(value, int) and value > 0 else None

    length = read("sentence_bert_config.json", "max_seq_length") or 256
    positions = read("config.json", "max_position_embeddings")
    return min(length, positions) if positions else length


def inspect(target: Path, *, eval_path: Path | None = None, chunk_size: int = 192) -> Found:
    """What kind of data `target` is, and how much of it there is.

    Raises:
        InitError: When nothing usable is there.

    """
    target = target.expanduser().resolve()
    if target.is_file():
        if target.suffix.lower() not in (".jsonl", ".json"):
            raise InitError(f"{target}: a data file must be FlagEmbedding JSONL ({{query, pos, neg}} per line)")
        return _inspect_jsonl(target, eval_path)
    if not target.is_dir():
        raise InitError(f"{target}: no such file or folder")
    if (target / "corpus.jsonl").is_file() and (target / "qrels").is_dir():
        return _inspect_beir(target)
    return _inspect_documents(target, chunk_size)


def _lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _qrels(folder: Path) -> dict[str, int]:
    """Judgements per split of a BEIR folder (rows of qrels/<split>.tsv without the header)."""
    return {p.stem: max(0, _lines(p) - 1) for p in sorted((folder / "qrels").glob("*.tsv"))}


def _beir_splits(found: Found, judged: dict[str, int], where: Path) -> None:
    """Name the train/dev/test splits of a BEIR folder; refuse one without test (or without train for beir)."""
    if "test" not in judged:
        raise InitError(f"{where}: no qrels/test.tsv: the held-out split base and tuned models are compared on")
    if found.source == "beir" and "train" not in judged:
        raise InitError(f"{where}: no qrels/train.tsv: embx trains on the train split's judged pairs")
    found.splits = {"train": "train", "dev": "dev" if "dev" in judged else None, "test": "test"}
    if "dev" not in judged:
        found.notes.append("no qrels/dev.tsv: no dev split, so no early stopping (the last epoch is kept)")


def _inspect_beir(folder: Path) -> Found:
    found = Found("beir", folder)
    judged = _qrels(folder)
    found.counts = {"corpus": _lines(folder / "corpus.jsonl"), "queries": _lines(folder / "queries.jsonl"), **judged}
    _beir_splits(found, judged, folder)
    found.train_pairs = judged["train"]
    return found


def _inspect_jsonl(path: Path, eval_path: Path | None) -> Found:
    if eval_path is None:
        raise InitError(
            f"{path}: a JSONL training file is evaluated on a BEIR folder (corpus.jsonl, queries.jsonl, qrels/dev.tsv"
            " and test.tsv): give it with --eval FOLDER"
        )
    eval_path = eval_path.expanduser().resolve()
    if not (eval_path / "corpus.jsonl").is_file():
        raise InitError(f"{eval_path}: not a BEIR folder (no corpus.jsonl)")
    found = Found("jsonl", path, eval_path=eval_path)
    judged = _qrels(eval_path)
    found.train_pairs = _lines(path)
    found.counts = {"train_lines": found.train_pairs, "eval_corpus": _lines(eval_path / "corpus.jsonl"), **judged}
    _beir_splits(found, judged, eval_path)
    return found


def _inspect_documents(folder: Path, chunk_size: int) -> Found:
    from runner.data.documents import SUPPORTED_SUFFIXES, read_documents

    docs, skipped = read_documents(folder)
    if not docs:
        kinds = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise InitError(f"{folder}: no documents embx can read ({kinds}) and no BEIR corpus.jsonl + qrels/")
    if len(docs) < 3:
        raise InitError(f"{folder}: {len(docs)} document(s): a documents folder needs at least 3 (train and test)")
    words = sum(len(s.text.split()) for d in docs for s in d.sections)
    sections = sum(len(d.sections) for d in docs)
    chunks = max(sections, math.ceil(words * 1.3 / (chunk_size * 0.8)))  # ~1.3 tokens a word, chunks ~80% full
    found = Found("documents", folder)
    found.counts = {"documents": len(docs), "skipped": len(skipped), "words": words, "chunks (estimate)": chunks}
    train_share = 0.6
    if len(docs) < SMALL_FOLDER:
        found.splits["dev"] = None
        found.notes.append(
            f"{len(docs)} documents: too few for a dev split as well; 60% train, 40% test by document, no early"
            " stopping. Add documents for a dev split (data.split_shares, data.splits.dev)."
        )
    found.train_pairs = math.ceil(chunks * ICT_PER_CHUNK * train_share)
    found.notes += [f"skipped {s.item}: {s.reason}" for s in skipped[:5]]
    return found


def recipe(found: Found, *, base: str) -> Recipe:
    """Batch size, epochs and learning rate that give about :data:`TARGET_STEPS` steps on this much data."""
    pairs = max(1, found.train_pairs)
    batch = 32 if pairs >= 32 * 10 else max(8, 2 ** int(math.log2(max(1, pairs // 10))))
    steps = math.ceil(pairs / batch)
    epochs = min(MAX_EPOCHS, max(1, math.ceil(TARGET_STEPS / steps)))
    corpus = found.counts.get("corpus") or found.counts.get("eval_corpus") or 0
    negatives = "in-batch" if found.source == "documents" or corpus < 100 else "hard"
    out = Recipe(
        batch_size=batch,
        epochs=epochs,
        steps_per_epoch=steps,
        learning_rate=5e-5 if "minilm" in base.lower() else 2e-5,
        negatives=negatives,
        early_stopping=found.splits.get("dev") is not None and epochs > 1,
    )
    if steps * epochs < 10:
        found.notes.append(
            f"about {pairs} training pairs: {steps * epochs} optimizer steps at most; too little to learn much from"
        )
    return out


def _name(target: Path) -> str:
    stem = target.stem if target.is_file() else target.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "my-data"


def render(found: Found, plan: Recipe, *, spec_path: Path, base: str, max_len: int, chunk_size: int) -> str:
    """The commented spec text."""
    folder = spec_path.parent.resolve()

    def rel(path: Path) -> str:
        return os.path.relpath(path, folder).replace(os.sep, "/")

    counts = ", ".join(f"{v} {k}" for k, v in found.counts.items())
    dev = found.splits["dev"]
    lines = [
        f"# embx run {spec_path}",
        f"# Written by `embx init {found.path}`: {found.source} ({counts}).",
        *(f"# note: {n}" for n in found.notes),
        f"name: {_name(found.path)}",
        f"description: Fine-tuning {base} on {found.path.name}",
        "model:",
        f"  base: {base}                # a local folder or a Hugging Face hub id work too",
        f"  max_seq_length: {max_len}           # tokens per text; the base model's own limit",
        "data:",
        f"  source: {found.source}",
        f"  path: {rel(found.path)}     # relative to this file",
    ]
    if found.eval_path is not None:
        lines.append(f"  eval_path: {rel(found.eval_path)}")
    lines.append(f"  splits: {{train: train, dev: {dev or 'null'}, test: test}}")
    if found.source == "documents":
        shares = "[0.6, 0.0, 0.4]" if dev is None else "[0.6, 0.2, 0.2]"
        lines += [
            f"  split_shares: {shares}   # train/dev/test shares of the documents (whole documents)",
            "chunking:",
            "  strategy: recursive        # paragraphs, then lines, sentences, words",
            f"  chunk_size: {chunk_size}            # tokens of the base model: fits max_seq_length",
            f"  overlap: {chunk_size // 10}",
            "queries:",
            "  generator: ict             # a sentence of each chunk becomes its query; no LLM needed.",
            f"  per_chunk: {ICT_PER_CHUNK}               # For LLM questions: generator: llm, llm: {{base_url, model}}",
        ]
    stopping = "{metric: ndcg@10, patience: 1}" if plan.early_stopping else "null"
    lines += [
        "negatives:",
        f"  mode: {plan.negatives}"
        + ("           # hard: mined by the base model" if plan.negatives == "hard" else ""),
        *(["  per_query: 3"] if plan.negatives == "hard" else []),
        f"train:                       # sized to ~{found.train_pairs} training pairs: {plan.steps_per_epoch} steps an"
        " epoch",
        f"  epochs: {plan.epochs}",
        f"  batch_size: {plan.batch_size}",
        f"  learning_rate: {plan.learning_rate:.1e}",
        "  warmup_ratio: 0.1",
        f"  early_stopping: {stopping}",
        "eval:",
        "  metrics: [recall@1, recall@10, ndcg@10, mrr@10]",
        "  main: ndcg@10",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Initialised:
    """What `embx init` wrote."""

    path: Path
    found: Found
    recipe: Recipe


def init_spec(
    target: str | Path,
    *,
    output: str | Path | None = None,
    base: str = "all-MiniLM-L6-v2",
    eval_path: str | Path | None = None,
    force: bool = False,
) -> Initialised:
    """Inspect `target`, write a commented spec for it and check that it validates.

    Args:
        target: A folder of documents, a BEIR folder or a FlagEmbedding JSONL file.
        output: The spec to write (default: ``<name>.yaml`` here).
        base: The base model.
        eval_path: The BEIR folder a JSONL file is evaluated on.
        force: Overwrite an existing spec.

    Raises:
        InitError: When the target cannot be used, or the spec exists and `force` is not set.

    """
    from runner.spec import check_files, load_spec

    target = Path(target)
    max_len = min(model_max_length(base), 512)
    chunk_size = max(64, int(max_len * 0.75))
    found = inspect(target, eval_path=Path(eval_path) if eval_path else None, chunk_size=chunk_size)
    spec_path = Path(output or f"{_name(found.path)}.yaml")
    if spec_path.exists() and not force:
        raise InitError(f"{spec_path} exists: choose another -o, or --force to overwrite it")
    plan = recipe(found, base=base)
    text = render(found, plan, spec_path=spec_path, base=base, max_len=max_len, chunk_size=chunk_size)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(text, encoding="utf-8")
    check_files(load_spec(spec_path))  # what init writes must validate
    return Initialised(spec_path, found, plan)
