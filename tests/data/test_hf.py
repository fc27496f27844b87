"""hf source: a local dataset folder in the mteb layout, loaded with the datasets library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.data import DataError, load_data
from runner.data.hf import load_hf

README = """---
configs:
- config_name: corpus
  data_files:
  - split: corpus
    path: corpus.jsonl
- config_name: queries
  data_files:
  - split: queries
    path: queries.jsonl
- config_name: default
  data_files:
{splits}
---
# tiny retrieval set (mteb layout)
"""


def jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def mteb_folder(root: Path, qrels: dict[str, list[tuple[str, str, int]]], corpus=None, queries=None) -> Path:
    corpus = corpus or [{"_id": f"d{i}", "title": f"T{i}", "text": f"passage {i}"} for i in range(5)]
    queries = queries or [{"_id": f"q{i}", "text": f"question {i}"} for i in range(4)]
    jsonl(root / "corpus.jsonl", corpus)
    jsonl(root / "queries.jsonl", queries)
    for split, rows in qrels.items():
        jsonl(root / "qrels" / f"{split}.jsonl", [{"query-id": q, "corpus-id": d, "score": s} for q, d, s in rows])
    splits = "\n".join(f"  - split: {s}\n    path: qrels/{s}.jsonl" for s in qrels)
    (root / "README.md").write_text(README.format(splits=splits))
    return root


QRELS = {
    "train": [("q0", "d0", 1), ("q0", "d1", 2), ("q1", "d2", 1)],
    "dev": [("q2", "d3", 1)],
    "test": [("q3", "d4", 1), ("q3", "d0", 0)],
}


def test_load_hf_local_mteb_folder(tmp_path, hf_cache):
    root = mteb_folder(tmp_path / "ds", QRELS)
    data = load_hf(str(root))
    assert len(data.corpus) == 5 and len(data.queries) == 4
    assert data.corpus["d1"] == "T1 passage 1"
    assert data.queries["q3"] == "question 3"
    assert set(data.qrels) == {"train", "dev", "test"}
    assert data.qrels["train"] == {"q0": {"d0": 1, "d1": 2}, "q1": {"d2": 1}}
    assert data.split("test") == {"q3": {"d4": 1, "d0": 0}}
    assert len(data.pairs("train")) == 3
    assert data.source == f"hf:{root}"
    assert hf_cache.exists()  # the datasets cache went to the temporary folder


def test_load_data_hf_from_spec_relative_path(tmp_path, hf_cache, write_spec):
    from runner.spec import load_spec

    mteb_folder(tmp_path / "ds", QRELS)
    spec_path = write_spec(
        "name: hf\nmodel:\n  base: all-MiniLM-L6-v2\ndata:\n  source: hf\n  path: ds\n", name="hf.yaml"
    )
    spec = load_spec(spec_path).spec
    assert spec.data.path == str((tmp_path / "ds").resolve())
    data = load_data(spec)
    assert data.stats() == {
        "corpus": 5,
        "queries": 4,
        "train_queries": 2,
        "train_qrels": 3,
        "dev_queries": 1,
        "dev_qrels": 1,
        "test_queries": 1,
        "test_qrels": 2,
    }


def test_hf_bad_rows_listed(tmp_path, hf_cache):
    corpus = [
        {"_id": "d0", "title": "", "text": "zero"},
        {"_id": "d0", "title": "", "text": "dup"},
        {"_id": "d1", "title": "", "text": ""},
    ]
    queries = [{"_id": "q0", "text": "fine"}, {"_id": "q1", "text": " "}]
    root = mteb_folder(tmp_path / "ds", {"test": [("q0", "d0", 1), ("q0", "d9", 1)]}, corpus, queries)
    with pytest.raises(DataError) as info:
        load_hf(str(root))
    name = str(root)
    assert info.value.problems == [
        f"{name} corpus row 1: duplicate document id 'd0'",
        f"{name} corpus row 2: missing _id or empty text",
        f"{name} queries row 1: missing _id or empty text",
        f"{name} qrels test row 1: unknown query 'q0' or document 'd9'",
    ]


def test_hf_missing_dataset_is_a_data_error(tmp_path, hf_cache):
    with pytest.raises(DataError) as info:
        load_hf(str(tmp_path / "no-such-folder"))
    assert "config 'corpus'" in info.value.problems[0]
