"""Golden values of the identities the store and the caches persist.

These keys name rows in results stores and files in embedding/LLM caches that users already have: a refactor
that changes one silently makes old stores miss their finished variants and old caches miss their files. The
values were recorded before the pipeline was split into stages (commit b86a61e) and must never change by
accident; change one only on purpose, with a migration note.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.evaluate import CorpusIndex
from runner.memo import baseline_key, data_key, model_key
from runner.spec import LLMSpec, Spec

FIXED_NS = 1_700_000_000_000_000_000  # every file's mtime, so fingerprints do not depend on when the test ran


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(FIXED_NS, FIXED_NS))


@pytest.fixture
def golden_dir(tmp_path: Path, monkeypatch) -> Path:
    """A fixed BEIR set and a fake model folder, at relative paths, with fixed sizes and mtimes."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "data/corpus.jsonl", '{"_id": "d1", "title": "t", "text": "heart attack"}\n')
    _write(tmp_path / "data/queries.jsonl", '{"_id": "q1", "text": "chest pain"}\n')
    for split in ("train", "dev", "test"):
        _write(tmp_path / f"data/qrels/{split}.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    _write(tmp_path / "model/config.json", '{"hidden_size": 32}\n')
    _write(tmp_path / "model/modules.json", "[]\n")
    return tmp_path


def _spec(**changes) -> Spec:
    spec = Spec.model_validate(
        {"name": "golden", "recipe": "manual", "model": {"base": "./model"}, "data": {"path": "data"}}
    )
    return spec.variant(changes) if changes else spec


def test_spec_hash_is_frozen(golden_dir):
    # Changed on purpose once (was 8550937f14fea47e / 697eeb9186b67065 before): the hash leaves out `output:`,
    # which says where results go and what is kept, never what they are, and every null field, so a new optional
    # section (merge:) or output setting never makes a finished run look unfinished. Changed on purpose again (was
    # 42c4a9b7be30fb7d / b3655b5bb4494698): train.early_stopping.metric now defaults to eval.main instead of
    # recall@10, which trains differently, so a run that relied on the old default is run again once.
    assert _spec().spec_hash() == "499e4e92b6265e21"
    # `recipe` itself is not hashed, what it fills in is: a minimal spec that trained the plain recipe before
    # `recipe: auto` became the default now trains another one, so its finished run is run again once
    auto = Spec.model_validate({"name": "golden", "model": {"base": "./model"}, "data": {"path": "data"}})
    assert auto.spec_hash() != _spec().spec_hash()
    filled = Spec.model_validate(auto.model_dump(mode="json") | {"recipe": "manual"})  # every filled value set
    assert filled.recipe_choices == [] and filled.spec_hash() == auto.spec_hash()
    assert _spec(**{"train.learning_rate": 1e-5}).spec_hash() == "70af665dcd40690f"
    assert _spec(**{"output.save_model": "none", "output.dir": "elsewhere"}).spec_hash() == _spec().spec_hash()
    assert _spec(**{"merge": None, "ablate": None}).spec_hash() == _spec().spec_hash()
    # memory settings that compute the same steps: same experiment
    assert _spec(**{"train.gradient_checkpointing": True, "eval.memory_mb": 64}).spec_hash() == _spec().spec_hash()
    # New optional settings default to null, so they leave existing hashes alone too.
    assert _spec(**{"train.gist_margin": None, "train.lora": None, "negatives.rescore": None}).spec_hash() == (
        _spec().spec_hash()
    )


def test_data_key_is_frozen(golden_dir):
    assert data_key(_spec()) == "c8fcdb4d53d204db"
    # the training sample drawn from the data is not part of it
    assert data_key(_spec(**{"data.limit": 10})) == data_key(_spec())


def test_model_key_is_frozen(golden_dir):
    assert model_key(_spec()) == "879fb319c48d1326"
    assert model_key(_spec(**{"model.base": "org/some-model"})) is None  # hub id without a revision: no caching
    assert model_key(_spec(**{"model.base": "org/some-model", "model.revision": "abc"})) == "52a58b2f597df4ba"


def test_baseline_key_is_frozen(golden_dir):
    assert baseline_key(_spec()) == "81d255127d32a1b9"
    assert baseline_key(_spec(**{"eval.precision": "fp32"})) == "b4d88bf9c8d1808b"


def test_embedding_cache_path_is_frozen(golden_dir):
    spec = _spec()
    index = CorpusIndex({"d1": "t heart attack", "d2": "kidney stone"}, Path("runs/embeddings"), model_key(spec))
    path = index._disk_path(spec.model, "cpu", "fp32")
    assert path == Path("runs/embeddings/b4ea1743f1300934c985ae2e.pt")


def test_llm_cache_key_is_frozen():
    from runner.memo import llm_answer_key as _cache_key

    llm = LLMSpec(base_url="http://localhost:8000/v1/", model="tiny-chat")
    assert _cache_key(llm, "Write 2 questions about: heart", 2) == (
        "c0e947ef388c9429cd2c33d62ac822976940fb4901fe3c2c89438baabe127b80"
    )


def test_vector_index_keys_are_frozen():
    """Point ids and the model key live in users' vector databases: a change would re-encode or refuse them."""
    from runner.memo import index_model_key, point_id

    assert point_id("htn-diet", "Reducing dietary sodium") == "9204f27f0972ace6"
    model = {"base": "all-MiniLM-L6-v2", "max_seq_length": 256}
    assert index_model_key(model=model, weights="abc") == "cbe9d0db8b4b6374"


def _spec_in(folder: Path) -> Path:
    """The same spec file and data (a BEIR folder beside it, a model folder) under `folder`."""
    _write(folder / "data/corpus.jsonl", '{"_id": "d1", "title": "t", "text": "heart attack"}\n')
    _write(folder / "model/config.json", '{"hidden_size": 32}\n')
    _write(folder / "specs/spec.yaml", "name: golden\nrecipe: manual\nmodel: {base: ../model}\ndata: {path: ../data}\n")
    return folder / "specs/spec.yaml"


def test_spec_hash_is_the_same_in_another_folder(tmp_path):
    """Paths take part in the hash relative to the spec file (since this commit; before, as absolute strings, so
    a moved checkout or another machine missed its finished runs). Runs recorded under the old hash are still
    found: `legacy_spec_hash` is the old value, which `run_experiment` also looks up."""
    from runner.spec import load_spec

    one, two = load_spec(_spec_in(tmp_path / "a")).spec, load_spec(_spec_in(tmp_path / "elsewhere/b")).spec
    assert one.data.path != two.data.path  # absolute, as loaded
    assert one.spec_hash() == two.spec_hash() == "187b924ba2facc51"  # early stopping on eval.main
    assert one.variant({"train.epochs": 2}).spec_hash() == two.variant({"train.epochs": 2}).spec_hash()
    assert one.legacy_spec_hash() != two.legacy_spec_hash()
    # the old hash: the absolute paths as they are (the golden values above are specs built without a file)
    unrooted = Spec.model_validate(one.model_dump(mode="json"))
    assert one.legacy_spec_hash() == unrooted.spec_hash()
    # a hub id is left as written
    hub = load_spec(_spec_in(tmp_path / "c"), ["model.base=org/model"]).spec
    assert hub.model.base == "org/model"
    assert hub.spec_hash() == load_spec(_spec_in(tmp_path / "d"), ["model.base=org/model"]).spec.spec_hash()
