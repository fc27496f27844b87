"""`embx index` / `embx query` against a real Chroma: embedded folder, a second process, a server on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli

from runner import store

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "what should someone with high blood pressure eat"


def _ids(uri: Path, name: str) -> list[str]:
    from runner.vectordb import open_collection

    return sorted(open_collection(uri, name).all_ids())


def _meta(uri: Path, name: str) -> dict:
    from runner.vectordb import open_collection

    return open_collection(uri, name).metadata()


@pytest.fixture
def tiny_spec(tmp_path, make_spec) -> Path:
    return make_spec(tmp_path / "tiny.yaml")


def test_index_then_query_ranks_the_sodium_diet_passage_above_the_runners_one(tmp_path):
    """The README's acceptance, with the bundled base model (specs/medical.yaml's all-MiniLM-L6-v2, untuned)."""
    db, vectors = tmp_path / "r.duckdb", tmp_path / "vectors"
    result = cli("index", ROOT / "specs" / "medical.yaml", "--data", ROOT / "data" / "medical-demo", "--db", db)
    assert result.exit_code == 0, result.output
    assert "index medical-base in" in result.output and "325 passages (325 encoded" in result.output
    assert (tmp_path / "r.vectors").is_dir()  # the embedded default: beside the results store
    result = cli("query", "medical-base", QUESTION, "-k", 20, "--db", db, "--json")
    assert result.exit_code == 0, result.output
    hits = [h["id"] for h in json.loads(result.output)["hits"]]
    assert "htn-diet" in hits and hits.index("htn-diet") < (hits.index("sport-hydr") if "sport-hydr" in hits else 99)
    assert hits[0] == "htn-diet"
    shown = cli("query", "medical-base", QUESTION, "-k", 3, "--db", db).output
    assert "htn-diet" in shown and "corpus.jsonl:" in shown and "Hypertension: dietary sodium" in shown
    assert not vectors.exists()


def test_reindexing_is_idempotent_and_a_changed_passage_replaces_its_point(tmp_path, tiny_spec, beir_copy):
    uri = tmp_path / "v"
    first = cli("index", tiny_spec, "--data", beir_copy, "--to", uri, "--name", "tiny", "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert report["passages"] == 40 and report["encoded"] == 40 and report["dim"] == 32
    ids = _ids(uri, "tiny")
    again = cli("index", tiny_spec, "--data", beir_copy, "--to", uri, "--name", "tiny", "--ef-search", 300, "--json")
    again = json.loads(again.output)
    assert (again["passages"], again["encoded"], again["present"], again["removed"]) == (40, 0, 40, 0)
    from runner.vectordb import open_collection

    assert open_collection(uri, "tiny").collection.configuration["hnsw"]["ef_search"] == 300
    assert _ids(uri, "tiny") == ids
    lines = (beir_copy / "corpus.jsonl").read_text().splitlines()
    changed = json.loads(lines[0]) | {"text": "An edited passage about the heart."}
    (beir_copy / "corpus.jsonl").write_text("\n".join([json.dumps(changed), *lines[1:]]) + "\n")
    third = json.loads(cli("index", tiny_spec, "--data", beir_copy, "--to", uri, "--name", "tiny", "--json").output)
    assert (third["passages"], third["encoded"], third["removed"]) == (40, 1, 1)
    assert len(set(_ids(uri, "tiny")) - set(ids)) == 1
    assert _meta(uri, "tiny")["embx_complete"] is True


KILLER = """
import os, signal, sys
from runner import index as ix
from runner.vectordb import ChromaIndex

calls = {"n": 0}
original = ChromaIndex.upsert

def upsert(self, ids, vectors, texts, metas):
    calls["n"] += 1
    if calls["n"] == 3:  # the third batch: write half of it, then die as SIGKILL does (no clean-up at all)
        original(self, ids[:2], vectors[:2], texts[:2], metas[:2])
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, ids, vectors, texts, metas)

ChromaIndex.upsert = upsert
ix.build_index(sys.argv[1], sys.argv[2], data=sys.argv[3], uri=sys.argv[4], name="tiny", batch=5)
"""


def test_an_index_killed_midway_resumes_to_exactly_one_point_per_passage(tmp_path, tiny_spec, tiny_beir):
    uri = tmp_path / "v"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-c", KILLER, tmp_path / "r.duckdb", tiny_spec, tiny_beir, uri]
    proc = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    meta = _meta(uri, "tiny")
    assert meta["embx_complete"] is False
    assert len(_ids(uri, "tiny")) == 12  # two whole batches of 5 and half of the third
    result = cli("index", tiny_spec, "--data", tiny_beir, "--to", uri, "--name", "tiny", "--batch", 5, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["passages"], report["encoded"], report["present"]) == (40, 28, 12)
    ids = _ids(uri, "tiny")
    assert len(ids) == len(set(ids)) == 40
    assert _meta(uri, "tiny")["embx_complete"] is True


def test_a_collection_of_another_model_or_dimension_is_refused(tmp_path, tiny_spec, tiny_beir, make_spec):
    from conftest import build_tiny_model

    uri = tmp_path / "v"
    assert cli("index", tiny_spec, "--data", tiny_beir, "--to", uri, "--name", "shared").exit_code == 0
    other = make_spec(tmp_path / "other.yaml", model={"base": str(build_tiny_model(tmp_path / "m2", seed=1))})
    result = cli("index", other, "--data", tiny_beir, "--to", uri, "--name", "shared")
    assert result.exit_code == 2
    assert "never mixed" in result.output and "--recreate" in result.output
    longer = make_spec(tmp_path / "longer.yaml", model={"max_seq_length": 48})  # same weights, other settings
    result = cli("index", longer, "--data", tiny_beir, "--to", uri, "--name", "shared")
    assert result.exit_code == 2 and "max_seq_length 32 there, 48 now" in result.output
    minilm = ROOT / "specs" / "medical.yaml"
    result = cli("index", minilm, "--data", tiny_beir, "--to", uri, "--name", "shared")
    assert result.exit_code == 2 and "32-dimensional vectors" in result.output and "384-dimensional" in result.output
    assert len(_ids(uri, "shared")) == 40  # nothing of the refused models was written
    result = cli("index", other, "--data", tiny_beir, "--to", uri, "--name", "shared", "--recreate", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["encoded"] == 40


def _documents(root: Path) -> Path:
    docs = root / "docs"
    for name, specialty, tags, body in (
        ("heart.md", "cardiology", "[adult, chronic]", "Chest pain on exertion suggests angina. Rest relieves it."),
        ("skin.md", "dermatology", "[child]", "Eczema causes itchy dry skin. Emollients help the skin barrier."),
        ("kidney.md", "nephrology", "[adult]", "Kidney stones cause severe flank pain. Drink plenty of water."),
    ):
        folder = docs / specialty
        folder.mkdir(parents=True)
        (folder / name).write_text(
            f"---\ntitle: {name[:-3]}\nspecialty: {specialty}\ntags: {tags}\n---\n# {name[:-3].title()}\n\n"
            f"## Overview\n\n{body}\n"
        )
    return docs


def test_points_carry_source_headings_and_metadata_for_filters(tmp_path, tiny_spec):
    db, docs = tmp_path / "r.duckdb", _documents(tmp_path)
    assert cli("index", tiny_spec, "--data", docs, "--db", db, "--name", "docs").exit_code == 0
    result = cli("query", "docs", "pain", "--db", db, "--json")
    hits = json.loads(result.output)["hits"]
    assert len(hits) == 3
    heart = next(h for h in hits if h["meta"]["source"] == "cardiology/heart.md")
    assert heart["id"] == "cardiology/heart.md#fine-0" and heart["meta"]["heading_path"] == "Heart > Overview"
    assert heart["meta"]["parent"] == "" and heart["meta"]["tags"] == ["adult", "chronic"]
    only = json.loads(cli("query", "docs", "pain", "--filter", "specialty=cardiology", "--db", db, "--json").output)
    assert [h["meta"]["specialty"] for h in only["hits"]] == ["cardiology"]
    adults = cli("query", "docs", "pain", "--filter", "tags=adult", "--db", db, "--json").output
    assert sorted(h["meta"]["source"] for h in json.loads(adults)["hits"]) == [
        "cardiology/heart.md",
        "nephrology/kidney.md",
    ]
    both = cli("query", "docs", "pain", "--filter", "tags=adult", "--filter", "specialty=nephrology", "--db", db)
    assert "nephrology/kidney.md" in both.output and "heart.md" not in both.output
    bad = cli("query", "docs", "pain", "--filter", "specialty", "--db", db)
    assert bad.exit_code == 2 and "expected key=value" in bad.output


def test_a_second_process_reopens_the_embedded_database(tmp_path, tiny_spec, tiny_beir):
    db = tmp_path / "r.duckdb"
    assert cli("index", tiny_spec, "--data", tiny_beir, "--db", db, "--name", "tiny").exit_code == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "runner.cli", "query", "tiny", "renal stone", "-k", "3", "--db", str(db), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["hits"]) == 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_fails_within_seconds_without_showing_the_password(tiny_spec, tiny_beir):
    port = _free_port()
    started = time.perf_counter()
    result = cli("index", tiny_spec, "--data", tiny_beir, "--to", f"http://admin:s3cret@127.0.0.1:{port}")
    assert result.exit_code == 2
    assert time.perf_counter() - started < 30  # the model loads first; the probe itself waits at most 5 s
    assert f"cannot reach the vector database server at http://127.0.0.1:{port}" in result.output
    assert "s3cret" not in result.output and "admin" not in result.output
    result = cli("query", "tiny", "x", "--to", f"http://admin:s3cret@127.0.0.1:{port}")
    assert result.exit_code == 2 and "s3cret" not in result.output


@pytest.fixture
def chroma_server(tmp_path):
    """A real Chroma server (`chroma run`, shipped in the chromadb package) on a free loopback port."""
    exe = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    assert Path(exe).is_file(), "the chroma command comes with the chromadb dependency"
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    command = [exe, "run", "--path", str(tmp_path / "server"), "--port", str(port)]
    server = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_the_same_commands_write_to_and_query_a_server(chroma_server, tiny_spec, tiny_beir):
    result = cli("index", tiny_spec, "--data", tiny_beir, "--to", chroma_server, "--name", "tiny", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passages"] == 40 and report["uri"] == chroma_server and report["size_bytes"] is None
    again = cli("index", tiny_spec, "--data", tiny_beir, "--to", chroma_server, "--name", "tiny", "--json")
    again = json.loads(again.output)
    assert again["encoded"] == 0 and again["passages"] == 40
    hits = json.loads(cli("query", "tiny", "renal stone", "--to", chroma_server, "-k", 5, "--json").output)["hits"]
    assert len(hits) == 5


def test_a_corpus_with_duplicate_ids_or_empty_texts_is_refused_before_anything_is_written(tmp_path, tiny_spec):
    corpus = tmp_path / "bad" / "corpus.jsonl"
    corpus.parent.mkdir()
    rows = [{"_id": "a", "text": "one"}, {"_id": "b", "text": "  "}, {"_id": "a", "text": "again"}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    uri = tmp_path / "v"
    result = cli("index", tiny_spec, "--data", corpus.parent, "--to", uri, "--name", "bad")
    assert result.exit_code == 2
    assert "corpus.jsonl:2: passage 'b': empty text" in result.output
    assert "corpus.jsonl:3: duplicate passage id 'a' (first on line 1)" in result.output
    assert not uri.exists()
    missing = cli("index", tiny_spec, "--data", tmp_path / "nowhere", "--to", uri)
    assert missing.exit_code == 2 and "not found" in missing.output


def test_bad_targets_and_unknown_indexes_are_named(tmp_path, tiny_spec, tiny_beir):
    db = tmp_path / "r.duckdb"
    with store.connect(db):
        pass
    result = cli("index", "no-such-run", "--data", tiny_beir, "--db", db)
    assert result.exit_code == 2 and "no-such-run" in result.output
    assert cli("index", tiny_spec, "--data", tiny_beir, "--db", db, "--name", "tiny").exit_code == 0
    result = cli("query", "tinny", "x", "--db", db)
    assert result.exit_code == 2 and "no index named 'tinny'" in result.output and "tiny" in result.output
    result = cli("index", tiny_spec, "--data", tiny_beir, "--db", db, "--name", "a/b")
    assert result.exit_code == 2 and "collection name" in result.output


def test_a_runs_saved_model_builds_the_index_and_answers_its_queries(tmp_path, make_spec, tiny_beir):
    """Also eval.index: the run scores its test split through the index beside exact search, stored and reported."""
    spec = make_spec(
        tmp_path / "run.yaml",
        model={"query_prefix": "query: ", "passage_prefix": "passage: "},
        train={"epochs": 1},
        eval={"batch_size": 16, "index": {"k": 10}},
        output={"save_model": True, "dir": str(tmp_path / "runs"), "embedding_cache": False},
    )
    db = tmp_path / "r.duckdb"
    assert cli("run", spec, "--db", db).exit_code == 0
    (run_id,) = [r["run_id"] for r in store.list_runs(db)]
    result = cli("index", run_id[:15], "--data", tiny_beir, "--db", db, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["name"] == run_id and json.loads(result.output)["model"] == f"run {run_id}"
    meta = _meta(tmp_path / "r.vectors", run_id)
    assert meta["embx_model_path"] == store.get_run(db, run_id)["info"]["saved_model"]["path"]
    assert json.loads(meta["embx_model_spec"])["query_prefix"] == "query: "
    hits = json.loads(cli("query", run_id, "renal stone", "--db", db, "--json").output)["hits"]
    assert len(hits) == 10

    run = store.get_run(db, run_id)
    figures = run["info"]["index_eval"]
    assert figures["passages"] == 40 and figures["queries"] > 0
    assert abs(figures["exact"]["ndcg@10"] - run["metrics"]["tuned"]["ndcg@10"]) < 1e-3  # exact = the run's dense
    assert figures["recall_vs_exact@10"] == 1.0 and figures["ann"] == figures["exact"]  # 40 points: HNSW is exact
    assert figures["build_seconds"] > 0 and figures["size_bytes"] > 0 and figures["latency_ms"]["p95"] > 0
    assert "index_eval" in run["timings"]
    report = tmp_path / "report.html"
    assert cli("report", "--db", db, "-o", report).exit_code == 0
    assert "approximate vs exact search" in report.read_text()
    shown = cli("show", run_id, "--db", db).output
    assert "approximate vs exact search" in shown and "ANN top-10 recall vs exact top-10: 1.0000" in shown
    again = cli("eval-index", run_id, "--db", db, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["run_id"] == run_id
    assert store.get_run(db, run_id)["info"]["index_eval"]["model"] == f"run {run_id}"
