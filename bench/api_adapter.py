"""A query adapter over an API model's cached embeddings, end to end through HTTP, against the local adapter.

No commercial endpoint is reachable here, so the "API model" is the bundled all-MiniLM-L6-v2 served on loopback
behind an OpenAI-compatible ``/v1/embeddings`` (fp32, its 256-token limit, unit vectors): the API path (the cache
filled by ``embx select``, training queries embedded through the endpoint, the adapter over cached vectors) then
has an exact local twin, ``train.query_adapter`` over the same model, and both run in one invocation:

    python bench/api_adapter.py --out bench/results/api_adapter_medical_cpu.json

Both specs are specs/medical.yaml with ``train.query_adapter: {}`` (the API one adds ``api:`` and a ``select:``
candidate). The result file has each path's test NDCG@10 (base -> tuned, with the run's paired test), the paired
test of the two tuned models, and what the endpoint was sent: the corpus once during the selection, then only
training queries during the run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import cpu_info  # noqa: E402


class Endpoint:
    """The bundled model behind ``POST /v1/embeddings`` on loopback; counts what it embeds."""

    def __init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(_bundled()), device="cpu")
        self.model.max_seq_length = 256
        self.sent: list[str] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                with endpoint.lock:
                    endpoint.sent.extend(texts)
                    vectors = endpoint.model.encode(texts, batch_size=32, normalize_embeddings=True)
                data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
                tokens = sum(len(endpoint.model.tokenizer(t)["input_ids"]) for t in texts)
                raw = json.dumps(
                    {
                        "object": "list",
                        "data": data,
                        "model": body["model"],
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _bundled() -> Path:
    from runner.models import resolve_model

    return Path(resolve_model("all-MiniLM-L6-v2").location)


def _embx(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True, check=True)


def _spec(path: Path, *, name: str, api: dict | None) -> Path:
    lines = [f"extends: {ROOT / 'specs' / 'medical.yaml'}", f"name: {name}", "train:", "  query_adapter:"]
    if api is None:
        lines[-1] += " {}"
    else:
        block = json.dumps(api)
        lines += [f"    api: {block}", "select:", "  candidates:", f"    - {{label: minilm-api, api: {block}}}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _per_query(db: Path, run_id: str, stage: str) -> dict[str, float]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT query_id, value FROM query_scores WHERE run_id = ? AND split = 'test' AND stage = ? "
            "AND name = 'ndcg@10'",
            [run_id, stage],
        ).fetchall()
    finally:
        con.close()
    return dict(rows)


def main() -> None:
    """Run both paths and write the result file."""
    from runner.stats import paired_test

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/embx-api-adapter"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    db = work / "results.duckdb"
    endpoint = Endpoint()
    api = {"base_url": endpoint.url, "model": "all-MiniLM-L6-v2", "api_key_env": None, "max_input_tokens": 256}
    local = _spec(work / "local.yaml", name="adapter-local", api=None)
    remote = _spec(work / "api.yaml", name="adapter-api", api=api)
    common = ("--db", str(db), "--set", f"output.dir={work / 'runs'}")
    started = time.perf_counter()
    _embx("run", str(local), *common)
    local_seconds = time.perf_counter() - started
    started = time.perf_counter()
    _embx("select", str(remote), *common)
    select_seconds, by_select = time.perf_counter() - started, len(endpoint.sent)
    started = time.perf_counter()
    _embx("run", str(remote), *common)
    run_seconds = time.perf_counter() - started
    sent_by_run = endpoint.sent[by_select:]
    from runner.data.beir import load_beir

    corpus = set(load_beir(ROOT / "data" / "medical-demo", ["test"]).corpus.values())
    listed = json.loads(_embx("ls", "--db", str(db), "--json").stdout)
    paths = {}
    for name in ("adapter-local", "adapter-api"):
        run = next(r for r in listed if r["experiment"] == name and r["status"] == "ok")
        shown = json.loads(_embx("show", run["run_id"], "--db", str(db), "--json").stdout)
        base, tuned = (_per_query(db, run["run_id"], stage) for stage in ("base", "tuned"))
        qids = sorted(base)
        gain = paired_test([base[q] for q in qids], [tuned[q] for q in qids])
        paths[name] = {
            "run_id": run["run_id"],
            "test_ndcg@10": {
                "base": round(sum(base.values()) / len(base), 4),
                "tuned": round(sum(tuned.values()) / len(tuned), 4),
            },
            "gain": round(gain["mean_diff"], 4),
            "ci": [round(gain["ci_low"], 4), round(gain["ci_high"], 4)],
            "p": round(gain["p_value"], 4),
            "epochs_run": shown["info"]["train"]["epochs_run"],
            "best_epoch": shown["info"]["train"]["best_epoch"],
            "tuned": tuned,
        }
    local_t, api_t = paths["adapter-local"].pop("tuned"), paths["adapter-api"].pop("tuned")
    qids = sorted(local_t)
    twin = paired_test([local_t[q] for q in qids], [api_t[q] for q in qids])
    result = {
        "command": "python bench/api_adapter.py " + " ".join(sys.argv[1:]),
        "machine": cpu_info(),
        "paths": paths,
        "api_minus_local_tuned": {
            "delta": round(twin["mean_diff"], 4),
            "ci": [round(twin["ci_low"], 4), round(twin["ci_high"], 4)],
            "p": round(twin["p_value"], 4),
        },
        "endpoint": {
            "texts_sent_by_select": by_select,
            "texts_sent_by_run": len(sent_by_run),
            "corpus_passages_sent_by_run": len(corpus & set(sent_by_run)),
            "corpus_passages": len(corpus),
        },
        "seconds": {
            "local_run": round(local_seconds, 1),
            "select": round(select_seconds, 1),
            "api_run": round(run_seconds, 1),
        },
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
