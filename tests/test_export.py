"""`embx export`: round trips per format with their parity check, a parity failure, the card, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, query, run_record

from runner import store

TEXTS = ["query: chest pain problems", "passage: The signs of cardiac disease involve artery.", "renal stone"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, make_spec):
    """A tiny run with its tuned model saved: (db, run id, saved model folder)."""
    root = tmp_path_factory.mktemp("export-run")
    spec = make_spec(
        root / "spec.yaml",
        model={"query_prefix": "query: ", "passage_prefix": "passage: "},
        output={"save_model": True, "dir": str(root / "runs"), "embedding_cache": False},
    )
    db = root / "r.duckdb"
    result = cli("run", spec, "--db", db)
    assert result.exit_code == 0, result.output
    (run_id,) = [r["run_id"] for r in store.list_runs(db)]
    saved = Path(store.get_run(db, run_id)["info"]["saved_model"]["path"])
    assert (saved / "modules.json").is_file()
    return db, run_id, saved


def _embed(model, texts=TEXTS) -> np.ndarray:
    emb = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    return np.asarray(emb, dtype=np.float32)


def _left_over(parent: Path) -> list[str]:
    """Temporary export folders left beside a target."""
    return sorted(p.name for p in parent.iterdir() if ".embx-" in p.name) if parent.exists() else []


def _exports(db: Path) -> list[tuple]:
    return query(db, "SELECT run_id, format, path, ok FROM exports ORDER BY created_at")


@pytest.mark.parametrize(
    ("fmt", "backend", "file_name", "min_cos"),
    [
        ("sentence-transformers", "torch", None, 0.9999),
        pytest.param("onnx", "onnx", "onnx/model_O2.onnx", 0.9999, marks=pytest.mark.onnx),
        pytest.param("onnx-int8", "onnx", "onnx/model_qint8_arm64.onnx", 0.99, marks=pytest.mark.onnx),
    ],
)
def test_export_round_trip_loads_and_gives_the_runs_embeddings(saved_run, tmp_path, fmt, backend, file_name, min_cos):
    from sentence_transformers import SentenceTransformer

    db, run_id, saved = saved_run
    out = tmp_path / "export"
    result = cli("export", run_id[:12], "-o", out, "--format", fmt, "--int8-config", "arm64", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["ok"] and report["path"] == str(out.resolve()) and report["load"]["file_name"] == file_name
    parity = json.loads((out / "parity.json").read_text())
    assert parity["ok"] and parity["texts"] == "store" and parity["queries"] > 0 and parity["passages"] > 0
    if fmt == "onnx-int8":
        assert parity["ranking"]["ndcg@10_delta"] >= -0.005 and parity["ranking"]["top10_overlap"] >= 0.9
    else:
        assert parity["min_cosine"] >= 0.9999
    kwargs = {"backend": "onnx", "model_kwargs": {"file_name": file_name}} if backend == "onnx" else {}
    exported = SentenceTransformer(str(out), device="cpu", **kwargs)
    reference = SentenceTransformer(str(saved), device="cpu")
    cos = np.sum(_embed(exported) * _embed(reference), axis=1)
    assert cos.min() >= min_cos
    if backend == "onnx":
        assert not (out / "model.safetensors").exists() and (out / file_name).is_file()
    assert (out / "README.md").read_text().startswith("---\n")
    assert _left_over(tmp_path) == []
    rows = [r for r in _exports(db) if r[2] == str(out.resolve())]
    assert rows == [(run_id, fmt, str(out.resolve()), True)]


def test_card_is_written_from_the_store(saved_run, tmp_path):
    from ruamel.yaml import YAML

    db, run_id, _ = saved_run
    out = tmp_path / "card"
    assert cli("export", run_id, "-o", out, "--language", "en", "--license", "apache-2.0", "--db", db).exit_code == 0
    card = (out / "README.md").read_text()
    meta = YAML(typ="safe").load(card.split("---\n")[1])
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert meta["language"] == ["en"] and meta["license"] == "apache-2.0" and "embx" in meta["tags"]
    assert "base_model" not in meta  # a local folder has no Hub id
    run = store.get_run(db, run_id)
    spec = json.loads(run["spec_json"])
    assert f"`{spec['model']['base']}` (a local model)" in card
    test = run["metrics_by_split"]["test"]["native"]
    tuned, base = test["tuned"]["ndcg@10"], test["base"]["ndcg@10"]
    assert f"| ndcg@10 | {base:.4f} | {tuned:.4f} | {tuned - base:+.4f} |" in card
    assert "query_prefix = 'query: '" in card and "passage_prefix = 'passage: '" in card
    assert "### Dev curve" in card and "| 0 |" in card
    assert f"| corpus | {run['info']['data']['corpus']} |" in card
    assert "| loss | mnrl |" in card and f"| learning_rate | {spec['train']['learning_rate']} |" in card
    assert "save_model: true" in card  # the spec text
    assert "Criterion: min cosine >= 0.9999: **passed**" in card


@pytest.mark.onnx
def test_card_of_an_onnx_export_shows_how_to_load_it(saved_run, tmp_path):
    db, run_id, _ = saved_run
    out = tmp_path / "int8"
    assert (
        cli("export", run_id, "-o", out, "--format", "onnx-int8", "--int8-config", "arm64", "--db", db).exit_code == 0
    )
    card = (out / "README.md").read_text()
    assert 'backend="onnx", model_kwargs={"file_name": \'onnx/model_qint8_arm64.onnx\'}' in card
    assert "arm64 config" in card and "- onnx\n- int8\n" in card


def test_hub_ids_for_the_card_metadata():
    from runner.card import hub_base_model

    assert hub_base_model("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_base_model("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    assert hub_base_model("/models/mine") is None


def test_an_export_that_does_not_reproduce_the_run_fails_and_leaves_nothing(saved_run, tmp_path, monkeypatch):
    from runner import export

    db, run_id, _ = saved_run
    written = export._write

    def cls_pooling(fmt, *, source, folder, quantization):
        load = written(fmt, source=source, folder=folder, quantization=quantization)
        config = folder / "1_Pooling" / "config.json"
        pooling = json.loads(config.read_text())
        assert pooling["pooling_mode"] == "mean"
        pooling["pooling_mode"] = "cls"
        config.write_text(json.dumps(pooling))
        return load

    monkeypatch.setattr(export, "_write", cls_pooling)
    out = tmp_path / "target"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier export")
    before = len(_exports(db))
    result = cli("export", run_id, "-o", out, "--overwrite", "--db", db)
    assert result.exit_code == 1, result.output
    assert "parity check failed: min cosine" in result.output and "FAILED" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # the old target is untouched
    assert _left_over(tmp_path) == []
    assert _exports(db)[before:] == [(run_id, "sentence-transformers", None, False)]

    kept = cli("export", run_id, "-o", tmp_path / "new", "--keep-failed", "--db", db)
    assert kept.exit_code == 1 and not (tmp_path / "new").exists()
    (left,) = _left_over(tmp_path)
    assert left in kept.output.replace("\n", "") and (tmp_path / left / "parity.json").is_file()


def test_overwrite_replaces_a_non_empty_target(saved_run, tmp_path):
    db, run_id, _ = saved_run
    out = tmp_path / "target"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert cli("export", run_id, "-o", out, "--overwrite", "--db", db).exit_code == 0
    assert not (out / "old.txt").exists() and (out / "modules.json").is_file()
    assert _left_over(tmp_path) == []


def _fake_run(db: Path, saved_run, run_id: str, *, status: str = "ok", saved: object = "keep", **info) -> str:
    """A run record beside the real one: its spec and data, with a chosen status and saved_model."""
    real = store.get_run(saved_run[0], saved_run[1])
    store.start_run(db, run_record(run_id, spec_json=real["spec_json"], host="elsewhere"))
    info = {"dataset": real["info"]["dataset"], **info}
    if saved != "keep":
        info["saved_model"] = saved
    if status == "ok":
        store.finish_run(db, run_id, store.RunResults(info=info))
    elif status != "running":
        store.end_run(db, run_id, status=status, error="boom", timings={}, info=info)
    return run_id


def _static_model(folder: Path) -> Path:
    """A model ONNX Runtime cannot run: a StaticEmbedding (no transformers model)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    from runner.models import resolve_model

    tokenizer = Tokenizer.from_file(str(Path(resolve_model("all-MiniLM-L6-v2").location) / "tokenizer.json"))
    SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8)], device="cpu").save(str(folder))
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", "no run 'nope'"),
        ("failed", "is failed: only a finished (ok) run can be exported (error: boom)"),
        ("pruned", "is pruned"),
        ("running", "is running"),
        ("unsaved", "has no saved model: rerun its spec with `output: {save_model: true}`"),
        ("missing", "is missing on disk"),
        ("not-empty", "exists and is not empty: pass --overwrite"),
        ("a-file", "is a file"),
        ("inside", "overlaps the run's saved model"),
        pytest.param("static", "have no transformers model that ONNX Runtime can run", marks=pytest.mark.onnx),
        ("no-store", "no results store"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(saved_run, tmp_path, case, message):
    db = tmp_path / "r.duckdb"
    real_db, real_id, saved = saved_run
    out = tmp_path / "out" / "export"
    args = ["--format", "onnx"] if case == "static" else []
    if case == "unknown":
        run_id = "nope"
        store.start_run(db, run_record("other"))
    elif case in ("failed", "pruned", "running"):
        run_id = _fake_run(db, saved_run, case, status=case, saved=str(saved))
    elif case == "unsaved":
        run_id = _fake_run(db, saved_run, case)
    elif case == "missing":
        run_id = _fake_run(db, saved_run, case, saved={"path": str(tmp_path / "gone"), "sha256": "0" * 64})
    elif case == "static":
        run_id = _fake_run(db, saved_run, case, saved=str(_static_model(tmp_path / "static")))
    elif case == "no-store":
        db, run_id = tmp_path / "none.duckdb", real_id
    else:
        db, run_id = real_db, real_id
        if case == "not-empty":
            out.mkdir(parents=True)
            (out / "x").write_text("x")
        elif case == "a-file":
            out.parent.mkdir(parents=True)
            out.write_text("x")
        else:
            out = saved / "export"
    before = _exports(db) if db.exists() else None
    result = cli("export", run_id, "-o", out, "--db", db, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")
    if case not in ("not-empty", "a-file", "inside"):
        assert not out.parent.exists()  # not even the parent folder
    assert _left_over(out.parent) == []
    assert (_exports(db) if db.exists() else None) == before


def test_onnx_export_without_the_onnx_extra_exits_2_naming_the_install(saved_run, tmp_path, monkeypatch):
    """Without optimum (the onnx extra: the transformers 4 stack), an ONNX export says what to install."""
    import sys

    db, run_id, _ = saved_run
    for name in [m for m in sys.modules if m == "optimum" or m.startswith("optimum.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "optimum", None)
    out = tmp_path / "out" / "export"
    before = _exports(db)
    result = cli("export", run_id, "-o", out, "--format", "onnx-int8", "--db", db)
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "ONNX export needs the onnx extra: optimum is not installed" in flat
    assert 'pip install torch==2.13.0 -e ".[onnx]"' in flat
    assert not out.parent.exists() and _exports(db) == before


def test_saved_model_as_a_dict_with_its_sha256(saved_run, tmp_path):
    db = tmp_path / "r.duckdb"
    digest = "ab" * 32
    run_id = _fake_run(db, saved_run, "dict", saved={"path": str(saved_run[2]), "sha256": digest})
    # the fake run's texts live in the real store: copy them over by exporting from a store with no texts
    result = cli("export", run_id, "-o", tmp_path / "out", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    parity = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert parity["texts"] == "probe" and parity["ok"]  # no texts stored in this store: probe sentences
    assert f"saved model sha256: `{digest}`" in (tmp_path / "out" / "README.md").read_text()


class FakeHub:
    """The Hugging Face Hub endpoints huggingface_hub's HfApi uses to create a repo and commit a folder, on loopback.

    create_repo: POST /api/repos/create; upload_folder: POST /api/validate-yaml (the card's metadata),
    POST /api/models/<repo>/preupload/<rev> (every file
    "regular", so no LFS round trip) and POST /api/models/<repo>/commit/<rev> (NDJSON: a header, then one line per
    file with its base64 content).
    """

    def __init__(self) -> None:
        import base64
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.repos: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.auth: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.metadata: dict = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                hub.requests.append(("GET", self.path))
                self.send_error(404)

            def do_POST(self):  # noqa: N802 - http.server's naming
                hub.requests.append(("POST", self.path))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.auth.add(self.headers.get("Authorization", ""))
                if self.path == "/api/repos/create":
                    repo = json.loads(body)
                    hub.repos.append(repo)
                    return self._json({"url": f"{hub.url}/{repo.get('organization')}/{repo['name']}"})
                if self.path == "/api/validate-yaml":  # the card's metadata, checked as the Hub would parse it
                    import yaml

                    meta = json.loads(body)["content"].split("---\n")[1]
                    hub.metadata = yaml.safe_load(meta)
                    return self._json({"errors": [], "warnings": []})
                if "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    return self._json(
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                    )
                if "/commit/" in self.path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    return self._json(
                        {
                            # huggingface_hub parses this against its built-in endpoint, as the real Hub answers
                            "commitUrl": f"https://huggingface.co/me/tiny/commit/{'a' * 40}",
                            "commitOid": "a" * 40,
                            "pullRequestUrl": None,
                        }
                    )
                self.send_error(404)

            def _json(self, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_push_to_hub_creates_the_repo_uploads_the_folder_and_never_prints_the_token(saved_run, tmp_path, monkeypatch):
    """A real HfApi against a fake Hub on loopback (HF_ENDPOINT): the repo is created private, every file arrives."""
    db, run_id, _ = saved_run
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    out = tmp_path / "pushed"
    try:
        result = cli(
            "export", run_id, "-o", out, "--push-to-hub", "me/tiny", "--private", "--language", "en", "--db", db
        )
    finally:
        hub.close()
    assert result.exit_code == 0, (result.output, hub.requests)
    assert "hf_secret_token" not in result.output and "pushed to the Hub: me/tiny" in result.output
    (repo,) = hub.repos
    assert (repo["organization"], repo["name"]) == ("me", "tiny")
    # huggingface-hub 0.x sends {"private": true}; 1.x and later {"visibility": "private"}
    assert repo.get("private") is True or repo.get("visibility") == "private"
    assert hub.auth == {"Bearer hf_secret_token"}
    assert hub.metadata["library_name"] == "sentence-transformers" and hub.metadata["language"] == ["en"]
    assert {"README.md", "parity.json", "modules.json"} <= set(hub.files)
    assert hub.files["modules.json"] == (out / "modules.json").read_bytes()
    card = hub.files["README.md"].decode()
    assert "SentenceTransformer('me/tiny')" in card and "language:\n- en" in card
    assert "hf_secret_token" not in card and "hf_secret_token" not in (out / "README.md").read_text()
    assert query(db, "SELECT hub_repo FROM exports WHERE hub_repo IS NOT NULL") == [("me/tiny",)]
