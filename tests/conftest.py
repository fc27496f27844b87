"""Shared fixtures: a tiny randomly initialised BERT embedding model and a tiny BEIR set, built at test time."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

TOPICS = {
    "heart": ("cardiac", "chest pain", "artery"),
    "lung": ("pulmonary", "breathing", "cough"),
    "skin": ("dermal", "rash", "itch"),
    "kidney": ("renal", "urine", "stone"),
    "liver": ("hepatic", "jaundice", "alcohol"),
    "bone": ("skeletal", "fracture", "calcium"),
    "brain": ("neural", "headache", "memory"),
    "stomach": ("gastric", "acid", "ulcer"),
    "eye": ("ocular", "vision", "blur"),
    "blood": ("vascular", "pressure", "salt"),
}
ASPECTS = {
    "symptoms": ("signs", "what do you feel with"),
    "treatment": ("therapy", "how do doctors fix"),
    "diet": ("nutrition", "what should I eat for"),
    "tests": ("diagnosis", "how do they check"),
}


def _split(qid: str) -> str:
    bucket = int(hashlib.md5(qid.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 60 else "dev" if bucket < 75 else "test"


def write_beir(root: Path) -> Path:
    """Write a tiny BEIR set: 40 passages, 80 queries, train/dev/test by query-id hash."""
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    docs, queries, qrels = [], [], {"train": [], "dev": [], "test": []}
    for topic, (clinical, lay, extra) in TOPICS.items():
        for aspect, (formal, ask) in ASPECTS.items():
            did = f"{topic}-{aspect}"
            docs.append(
                {
                    "_id": did,
                    "title": f"{clinical} {formal}",
                    "text": f"The {formal} of {clinical} disease involve {extra}.",
                }
            )
            for k, text in enumerate((f"{ask} {lay} problems", f"{lay} {aspect} question about {extra}")):
                qid = f"q-{did}-{k}"
                queries.append({"_id": qid, "text": text})
                qrels[_split(qid)].append((qid, did))
    with (root / "corpus.jsonl").open("w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    with (root / "queries.jsonl").open("w") as f:
        f.writelines(json.dumps(q) + "\n" for q in queries)
    for split, rows in qrels.items():
        with (root / "qrels" / f"{split}.tsv").open("w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t1\n" for q, d in rows)
    return root


def tiny_bert_config(tokenizer, **fields):
    """A 2-layer, 32-dim BERT configuration over `tokenizer`'s vocabulary; keyword fields override."""
    from transformers import BertConfig

    base = {
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    }
    return BertConfig(**{**base, **fields})


def build_tiny_model(root: Path, seed: int = 0, dropout: float = 0.1, max_seq_length: int = 64) -> Path:
    """A 2-layer, 32-dim BERT with the bundled MiniLM tokenizer, saved as a sentence-transformers folder in `root`."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertModel

    from runner.models import resolve_model

    torch.manual_seed(seed)
    hf_dir = root / "hf"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2").location)
    config = tiny_bert_config(tokenizer, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    st_dir = root / "st"
    transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length)
    SentenceTransformer(modules=[transformer, Pooling(32, "mean"), Normalize()], device="cpu").save(str(st_dir))
    return st_dir


def build_tiny_cross_encoder(root):
    """A 2-layer, 32-dim BERT cross-encoder (one relevance logit) with the bundled MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from runner.models import resolve_model

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2").location)
    config = tiny_bert_config(tokenizer, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(autouse=True)
def _needs_extra(request):
    """A test marked `onnx` needs that extra: skipped without it, failed under CI.

    The extra selects the transformers 4 stack, so it cannot share an environment with the main set: `.ci/run`
    deselects these tests in the main environment and runs them in a second one that has the extra.
    """
    from helpers import unavailable

    from runner.spec.external import EXTRAS, require

    for extra in EXTRAS:
        if request.node.get_closest_marker(extra):
            try:
                require(extra)
            except ValueError as exc:
                unavailable(str(exc))


@pytest.fixture(scope="session", autouse=True)
def _work_in_a_temporary_folder(tmp_path_factory):
    """Run every test from an empty folder: what runs write relative to the working directory (saved models
    under ./runs, the default ./results.duckdb, prepared/) never lands in the checkout."""
    import os

    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny model (dropout 0.1), built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory) -> Path:
    """The tiny BEIR folder (read-only by convention: copy it before changing it)."""
    return write_beir(tmp_path_factory.mktemp("beir") / "tiny")


def spec_data(model_dir: Path, beir: Path, **sections) -> dict:
    """A spec mapping for the tiny model and data; keyword sections are merged into (or replace) the defaults."""
    spec = {
        "name": "tiny",
        "recipe": "manual",  # the plain defaults: each test sets what it exercises (tests/test_spec_recipe.py: auto)
        "model": {"base": str(model_dir), "max_seq_length": 32},
        "data": {"path": str(beir)},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": {"patience": 1}},
        "eval": {"batch_size": 16},
        "output": {"embedding_cache": False},  # hermetic tests: no corpus embeddings shared through ./runs
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def dump_yaml(data: dict, path: Path) -> Path:
    """Write a mapping as YAML."""
    from ruamel.yaml import YAML

    YAML(typ="safe").dump(data, path)
    return path


@pytest.fixture(scope="session")
def make_spec(tiny_model, tiny_beir):
    """Like `write_spec`, at a path of the caller's choosing, so module- and session-scoped fixtures can use it."""

    def make(path: Path, **sections) -> Path:
        return dump_yaml(spec_data(tiny_model, tiny_beir, **sections), path)

    return make


@pytest.fixture
def write_spec(tmp_path, tiny_model, tiny_beir):
    """Write a spec YAML for the tiny model and data; keyword sections override the defaults."""

    def write(text: str | None = None, name: str = "spec.yaml", **sections) -> Path:
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
            return path
        return dump_yaml(spec_data(tiny_model, tiny_beir, **sections), path)

    return write


@pytest.fixture
def beir_copy(tmp_path, tiny_beir) -> Path:
    """A private, writable copy of the tiny BEIR folder."""
    import shutil

    return Path(shutil.copytree(tiny_beir, tmp_path / "beir-copy"))


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """Point the datasets cache at a temporary folder, so hf tests leave nothing behind."""
    import datasets

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache
