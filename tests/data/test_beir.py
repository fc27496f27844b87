"""BEIR folders: good data loads with the right counts; each kind of bad input is reported as file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.data import DataError, load_data
from runner.data.beir import doc_text, load_beir
from runner.data.types import RetrievalData


def jsonl(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def tsv(path: Path, rows: list[str], header: bool = True) -> None:
    path.write_text(("query-id\tcorpus-id\tscore\n" if header else "") + "".join(r + "\n" for r in rows))


def small(root: Path) -> Path:
    """A four-document BEIR folder with a train and a test split."""
    (root / "qrels").mkdir(parents=True)
    jsonl(
        root / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Heart", "text": "cardiac things"},
            {"_id": "d2", "title": "", "text": "lungs"},
            {"_id": "d3", "text": "kidney"},
            {"_id": "d4", "title": "Bone", "text": ""},
        ],
    )
    jsonl(root / "queries.jsonl", [{"_id": "q1", "text": "heart?"}, {"_id": "q2", "text": "lung?"}])
    tsv(root / "qrels" / "train.tsv", ["q1\td1\t1", "q1\td3\t2", "q2\td4\t0"])
    tsv(root / "qrels" / "test.tsv", ["q2\td2\t1"])
    return root


def problems(folder: Path, **kw) -> list[str]:
    with pytest.raises(DataError) as info:
        load_beir(folder, **kw)
    return info.value.problems


def test_doc_text():
    assert doc_text("Title ", " body") == "Title body"
    assert doc_text(None, "body") == "body"
    assert doc_text("only title", "  ") == "only title"


def test_load_small_folder(tmp_path):
    data = load_beir(small(tmp_path / "b"))
    assert data.corpus == {"d1": "Heart cardiac things", "d2": "lungs", "d3": "kidney", "d4": "Bone"}
    assert data.queries == {"q1": "heart?", "q2": "lung?"}
    assert data.qrels == {"train": {"q1": {"d1": 1, "d3": 2}, "q2": {"d4": 0}}, "test": {"q2": {"d2": 1}}}
    # Only grades > 0 make positives: q2 has none in train.
    assert data.split("train") == {"q1": {"d1": 1, "d3": 2}}
    assert [(p.query_id, p.positive_id) for p in data.pairs("train")] == [("q1", "d1"), ("q1", "d3")]
    assert data.stats() == {
        "corpus": 4,
        "queries": 2,
        "train_queries": 2,
        "train_qrels": 3,
        "test_queries": 1,
        "test_qrels": 1,
    }


def test_tiny_beir_fixture_counts(tiny_beir):
    data = load_beir(tiny_beir, required_splits=["train", "dev", "test"])
    assert len(data.corpus) == 40 and len(data.queries) == 80
    assert sum(len(data.qrels[s]) for s in ("train", "dev", "test")) == 80
    assert len(data.pairs("train")) == len(data.qrels["train"])


def test_two_column_qrels_default_to_grade_one(tmp_path):
    root = small(tmp_path / "b")
    tsv(root / "qrels" / "test.tsv", ["q2\td2"], header=False)
    assert load_beir(root).qrels["test"] == {"q2": {"d2": 1}}


def test_malformed_jsonl_is_file_line(tmp_path):
    root = small(tmp_path / "b")
    jsonl(root / "queries.jsonl", [{"_id": "q1", "text": "heart?"}, "{not json", "[1, 2]", {"_id": "q2", "text": "x"}])
    found = problems(root)
    path = root / "queries.jsonl"
    assert len(found) == 2
    assert found[0].startswith(f"{path}:2: malformed JSON")
    assert found[1] == f"{path}:3: expected a JSON object, got list"


def test_duplicate_ids_empty_text_and_missing_fields(tmp_path):
    root = small(tmp_path / "b")
    jsonl(
        root / "corpus.jsonl",
        [
            {"_id": "d1", "text": "one"},
            {"_id": "d2", "text": "two"},
            {"_id": "d3", "text": "three"},
            {"_id": "d4", "text": "four"},
            {"_id": "d2", "text": "again"},
            {"_id": "d5", "title": " ", "text": "  "},
            {"text": "no id"},
            {"_id": "d6", "title": "no text field"},
        ],
    )
    path = root / "corpus.jsonl"
    assert problems(root) == [
        f"{path}:5: duplicate document id 'd2' (first on line 2)",
        f"{path}:6: document 'd5': empty text",
        f"{path}:7: missing field '_id'",
        f"{path}:8: document 'd6': missing field 'text'",
    ]


def test_qrels_naming_missing_doc_or_query(tmp_path):
    root = small(tmp_path / "b")
    tsv(root / "qrels" / "train.tsv", ["q1\td1\t1", "q1\tnope\t1", "qx\td1\t1", "q1\td2\tabc", "lonely"])
    path = root / "qrels" / "train.tsv"
    assert problems(root) == [
        f"{path}:3: document 'nope' is not in corpus.jsonl",
        f"{path}:4: query 'qx' is not in queries.jsonl",
        f"{path}:5: score 'abc' is not a finite number",
        f"{path}:6: expected query-id<TAB>corpus-id<TAB>score, got ['lonely']",
    ]


def test_missing_split_and_empty_split(tmp_path):
    root = small(tmp_path / "b")
    tsv(root / "qrels" / "test.tsv", [])  # header only: a split with no queries
    found = problems(root, required_splits=["train", "dev"])
    assert found == [
        f"{root / 'qrels' / 'test.tsv'}: no judgements (a split with no queries)",
        f"{root / 'qrels' / 'dev.tsv'}: split 'dev' not found",
    ]


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="BEIR folder not found"):
        load_beir(tmp_path / "nowhere")
    root = small(tmp_path / "b")
    (root / "queries.jsonl").unlink()
    with pytest.raises(DataError, match=r"queries\.jsonl: file not found"):
        load_beir(root)
    root = small(tmp_path / "c")
    for f in (root / "qrels").iterdir():
        f.unlink()
    assert problems(root) == [f"{root / 'qrels'}: no qrels/<split>.tsv files"]


def test_all_problems_listed_at_once(tmp_path):
    root = small(tmp_path / "b")
    jsonl(root / "corpus.jsonl", [{"_id": "d1", "text": "one"}, {"_id": "d1", "text": "dup"}, "oops"])
    jsonl(root / "queries.jsonl", [{"_id": "q1", "text": ""}, {"_id": "q2", "text": "fine"}])
    tsv(root / "qrels" / "train.tsv", ["q2\td9\t1", "q2\td1\t1"])
    tsv(root / "qrels" / "test.tsv", ["q1\td1\t1"])
    with pytest.raises(DataError) as info:
        load_beir(root, required_splits=["train", "dev", "test"])
    found = info.value.problems
    expected_fragments = [
        "corpus.jsonl:2: duplicate document id 'd1'",
        "corpus.jsonl:3: malformed JSON",
        "queries.jsonl:1: query 'q1': empty text",
        # qrels files in name order: test.tsv, then train.tsv
        "test.tsv:2: query 'q1' is not in queries.jsonl",
        "test.tsv: no judgements",
        "train.tsv:2: document 'd9' is not in corpus.jsonl",
        "split 'dev' not found",
    ]
    assert len(found) == len(expected_fragments)
    for fragment, problem in zip(expected_fragments, found):
        assert fragment in problem
    text = str(info.value)
    assert text.startswith("7 data problems:")


def test_error_text_is_capped():
    err = DataError([f"p{i}" for i in range(25)])
    lines = str(err).splitlines()
    assert lines[0] == "25 data problems:"
    assert lines[-1] == "... and 5 more"
    assert len(lines) == 22


def test_split_lookup_errors():
    data = RetrievalData(corpus={"d": "x"}, queries={"q": "y"}, qrels={"train": {"q": {"d": 0}}}, source="src")
    with pytest.raises(DataError, match=r"split 'dev' not found \(splits present: train\)"):
        data.split("dev")
    with pytest.raises(DataError, match="no query with a positive"):
        data.split("train")


def test_pairs_limit_is_a_stable_seeded_sample(tiny_beir):
    data = load_beir(tiny_beir)
    full = data.pairs("train")
    some = data.pairs("train", limit=10, seed=1)
    assert len(some) == 10
    assert {(p.query_id, p.positive_id) for p in some} <= {(p.query_id, p.positive_id) for p in full}
    assert [p.query_id for p in data.pairs("train", limit=10, seed=1)] == [p.query_id for p in some]
    assert [p.query_id for p in data.pairs("train", limit=10, seed=2)] != [p.query_id for p in some]
    assert len(data.pairs("train", limit=10_000)) == len(full)


def test_load_data_beir_and_jsonl(write_spec, tiny_beir, tmp_path):
    from runner.spec import load_spec

    spec = load_spec(write_spec()).spec
    data = load_data(spec)
    assert data.train_pairs is None and len(data.corpus) == 40
    train = tmp_path / "train.jsonl"
    jsonl(train, [{"query": "q", "pos": ["p1", "p2"]}])
    spec = load_spec(
        write_spec(name="j.yaml", data={"source": "jsonl", "path": str(train), "eval_path": str(tiny_beir)})
    ).spec
    data = load_data(spec)
    assert [(p.query, p.positive) for p in data.train_pairs] == [("q", "p1"), ("q", "p2")]
    assert data.stats()["jsonl_pairs"] == 2
    assert [p.positive for p in data.pairs("ignored")] == ["p1", "p2"]


def test_load_data_jsonl_requires_eval_splits(write_spec, tmp_path):
    from runner.spec import load_spec

    root = small(tmp_path / "b")  # has train and test, no dev
    train = tmp_path / "train.jsonl"
    jsonl(train, [{"query": "q", "pos": ["p"]}])
    spec = load_spec(write_spec(data={"source": "jsonl", "path": str(train), "eval_path": str(root)})).spec
    with pytest.raises(DataError) as info:
        load_data(spec)
    assert info.value.problems == [f"{root / 'qrels' / 'dev.tsv'}: split 'dev' not found"]
