"""From a folder of documents to a run: chunks, ICT queries, split by document, checks, hybrid and two-stage, prepare.

Also the planted-leak acceptance test: a test query copied into train is found, and on_leak: error stops the
run before training.
"""

from __future__ import annotations

import json

import pytest
from helpers import cli, query

from runner import store
from runner.data.types import DataError
from runner.pipeline import run_spec
from runner.spec import load_spec

TOPICS = {
    "asthma": ("respiratory", "wheeze", "inhaler", "airway inflammation", "peak flow"),
    "gout": ("rheumatology", "uric acid", "joint swelling", "allopurinol", "big toe"),
    "migraine": ("neurology", "aura", "throbbing headache", "triptan", "light sensitivity"),
    "glaucoma": ("ophthalmology", "optic nerve", "eye pressure", "eye drops", "visual field"),
    "anaemia": ("haematology", "ferritin", "tiredness", "iron tablets", "pale skin"),
    "eczema": ("dermatology", "itchy skin", "emollient", "flare", "steroid cream"),
    "angina": ("cardiology", "chest tightness", "nitrate spray", "exertion", "coronary artery"),
    "cystitis": ("urology", "burning urine", "antibiotics", "frequency", "bladder"),
}


def document(topic: str, words: tuple[str, ...]) -> str:
    specialty, a, b, c, d = words
    sections = {
        "Symptoms": [
            f"People with {topic} often notice {a} that comes and goes over several weeks.",
            f"The {a} of {topic} is usually worse at night and after exercise or stress.",
            f"Some patients with {topic} also describe {d} during a bad episode of the illness.",
        ],
        "Treatment": [
            f"The first treatment for {topic} is usually {c} given by the family doctor.",
            f"Doctors review {c} for {topic} after three months to see whether {b} has improved.",
            f"If {b} continues despite {c}, a specialist in {specialty} may change the plan.",
        ],
    }
    body = "\n\n".join(f"## {h}\n\n" + " ".join(s) for h, s in sections.items())
    return f"---\ntitle: {topic.title()}\nspecialty: {specialty}\n---\n# {topic.title()}\n\n{body}\n"


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    for topic, words in TOPICS.items():
        (root / f"{topic}.md").write_text(document(topic, words))
    (root / "notes.txt").write_text(
        "Vaccination notes\n\nAdults should check that their tetanus vaccination is up to date every ten years. "
        "Travel clinics advise on hepatitis vaccines before long journeys abroad."
    )
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (root / "image.bin").write_bytes(bytes(range(256)))
    return root


def docs_spec(make_spec, folder, path, **sections):
    base = {
        "data": {
            "source": "documents",
            "path": str(folder),
            "split_shares": [0.5, 0.25, 0.25],
            "on_leak": "warn",
            "leak_similarity": 0.9999,  # the tiny model is untrained: its cosines say little
        },
        "chunking": {"strategy": "recursive", "chunk_size": 40, "overlap": 0, "levels": ["coarse", "fine"]},
        "queries": {"generator": "ict", "per_chunk": 2, "min_words": 5},
        "negatives": {"mode": "in-batch"},
        "train": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None},
        "eval": {"batch_size": 16, "retrievers": ["dense", "bm25", "hybrid"], "two_stage": 2},
    }
    base["chunking"]["coarse_size"] = 120
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return make_spec(path, **base)


@pytest.fixture(scope="module")
def docs_run(make_spec, docs_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs-run")
    path = docs_spec(make_spec, docs_folder, folder / "docs.yaml")
    db = folder / "runs.duckdb"
    return path, db, run_spec(load_spec(path), db)


def test_documents_run_end_to_end_with_hybrid_and_two_stage(docs_run):
    _, db, result = docs_run
    assert result.status == "ok"
    assert set(result.other) == {"bm25", "hybrid", "two-stage"}
    assert set(result.other["hybrid"]) == {"base", "tuned"} and set(result.other["two-stage"]) == {"base", "tuned"}
    by_split = store.get_run(db, result.run_id)["metrics_by_split"]["test"]
    assert set(by_split) == {"native", "bm25", "hybrid", "two-stage"}
    assert 0.0 <= by_split["bm25"]["base"]["ndcg@10"] <= 1.0
    data = result.info["data"]
    skipped = {s["item"]: s["reason"] for s in data["skipped"]}
    assert "broken.pdf" in skipped and "pdf" in skipped["broken.pdf"].lower()
    assert "image.bin" in skipped
    prep = data["preparation"]
    assert prep["documents"] == len(TOPICS) + 1 and prep["chunks_coarse"] > 0
    assert prep["queries"]["kept"] > 0
    # Split by document, nothing leaks: no query or passage of train is (near-)identical to one of dev or test.
    # The tiny model is untrained, so only (near-)exact copies count (leak_similarity 0.9999); near-identical
    # paraphrases are found with a real model in test_pipeline.py.
    counts = result.info["checks"]["counts"]
    kinds = ("query_exact", "query_near", "positive_exact", "positive_near")
    assert {f"{split}_{kind}": counts[f"{split}_{kind}"] for split in ("dev", "test") for kind in kinds} == {
        f"{split}_{kind}": 0 for split in ("dev", "test") for kind in kinds
    }
    assert counts["leaks"] == 0 and result.info["checks"]["leaks"] == []


def test_documents_are_split_by_document_and_ict_sentences_are_masked(docs_run, tiny_model):
    from runner.data.prepare import prepare_documents
    from runner.models import load_model

    path, _, _ = docs_run
    spec = load_spec(path).spec
    data = prepare_documents(spec, load_model(spec.model, "cpu"), path.parent)
    doc_of = {chunk: meta["doc_id"] for chunk, meta in data.meta.items()}
    docs_by_split = {split: {doc_of[c] for docs in qrels.values() for c in docs} for split, qrels in data.qrels.items()}
    assert docs_by_split["train"] and docs_by_split["test"]
    assert not docs_by_split["train"] & docs_by_split["test"]
    assert not docs_by_split["train"] & docs_by_split.get("dev", set())
    for split in ("test", "dev"):
        for qid, docs in data.qrels.get(split, {}).items():
            for chunk in docs:
                assert data.queries[qid] not in data.corpus[chunk]  # taken out of its passage...
                assert data.queries[qid] not in data.coarse[data.parents[chunk]]  # ...and out of the coarse one
    for qid, positive in data.positives.items():  # training positives lack their query sentence too
        assert data.queries[qid] not in positive


def test_metadata_filter_restricts_retrieval(make_spec, docs_folder, tmp_path):
    path = docs_spec(
        make_spec,
        docs_folder,
        tmp_path / "filtered.yaml",
        eval={"retrievers": ["dense", "bm25"], "two_stage": None, "filter": {"specialty": ["neurology", "urology"]}},
    )
    db = tmp_path / "runs.duckdb"
    result = run_spec(load_spec(path), db)
    docs = {d for (d,) in query(db, "SELECT DISTINCT doc_id FROM rankings WHERE run_id = ?", [result.run_id])}
    assert docs and all(d.startswith(("migraine.md", "cystitis.md")) for d in docs)


def test_prepare_writes_training_set_beir_folder_and_card(make_spec, docs_folder, tmp_path):
    from runner.data.beir import load_beir

    path = docs_spec(make_spec, docs_folder, tmp_path / "prep.yaml", negatives={"mode": "random", "per_query": 2})
    out = tmp_path / "prepared"
    result = cli("prepare", path, "-o", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert rows and all(len(r["pos"]) == 1 and len(r["neg"]) == 2 for r in rows)
    beir = load_beir(out / "beir")
    assert set(beir.qrels) >= {"train", "test"}
    card = json.loads((out / "data_card.json").read_text())
    assert card["counts"]["train_pairs"] == len(rows)
    assert {s["item"] for s in card["skipped"]} >= {"broken.pdf", "image.bin"}
    assert card["token_lengths"]["passages"]["max"] <= 40
    assert "## Skipped" in (out / "data_card.md").read_text()


# --------------------------------------------------------------------------------------------- planted leak


@pytest.fixture
def leaky_beir(beir_copy):
    """The tiny BEIR set with one test query copied into train (new id, same text, same positive)."""
    qrels = (beir_copy / "qrels" / "test.tsv").read_text().splitlines()
    qid, doc, _ = qrels[1].split("\t")
    queries = [json.loads(line) for line in (beir_copy / "queries.jsonl").read_text().splitlines()]
    text = next(q["text"] for q in queries if q["_id"] == qid)
    with (beir_copy / "queries.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "planted", "text": text.upper() + "?"}) + "\n")
    with (beir_copy / "qrels" / "train.tsv").open("a") as f:
        f.write(f"planted\t{doc}\t1\n")
    return beir_copy, qid


def test_planted_leak_stops_the_run_before_training(tmp_path, write_spec, leaky_beir):
    beir, test_qid = leaky_beir
    db = tmp_path / "runs.duckdb"
    # The tiny model is untrained, so its cosine similarities say little: only (near-)exact copies count here.
    path = write_spec(data={"path": str(beir), "on_leak": "error", "leak_similarity": 0.9999})
    with pytest.raises(DataError) as err:
        run_spec(load_spec(path), db)
    assert "planted" in str(err.value) and test_qid in str(err.value)
    ((run_id, status, error),) = query(db, "SELECT run_id, status, error FROM runs")
    assert status == "failed" and "leak" in error
    assert query(db, "SELECT count(*) FROM train_log WHERE run_id = ?", [run_id]) == [(0,)]
    timings = store.get_run(db, run_id)["timings"]
    assert "checks" in timings and "train" not in timings


def test_planted_leak_warn_and_drop(tmp_path, write_spec, leaky_beir):
    beir, _ = leaky_beir
    fast = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}
    data = {"path": str(beir), "leak_similarity": 0.9999}
    warned = run_spec(load_spec(write_spec(data={**data, "on_leak": "warn"}, train=fast)), tmp_path / "a")
    dropped = run_spec(
        load_spec(write_spec(name="drop.yaml", data={**data, "on_leak": "drop"}, train=fast)), tmp_path / "b"
    )
    assert warned.info["checks"]["counts"]["leaks"] == 1
    assert dropped.info["data"]["train_pairs"] == warned.info["data"]["train_pairs"] - 1
