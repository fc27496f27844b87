"""Training through torchrun: 2 processes with the gloo backend on CPU, the tiny model, both backends.

The training set is 16 pairs with 16 different positives and the per-process batch is 8, so the first (and only)
optimizer step of a 2-process run sees all 16 pairs: its loss is comparable with one process training on a batch
of 16. With cross-device negatives every query is scored against all 16 positives, as in one process; without,
against the 8 of its own process. The model has no dropout, so the first-step losses are deterministic.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import build_tiny_model, dump_yaml
from helpers import query

from runner import store
from runner.pipeline import run_spec
from runner.spec import load_spec
from runner.train.launch import TrainingFailed

WORDS = [
    "heart",
    "lung",
    "skin",
    "kidney",
    "liver",
    "bone",
    "brain",
    "stomach",
    "eye",
    "blood",
    "ear",
    "nose",
    "tooth",
    "hair",
    "nail",
    "knee",
]
ASPECTS = ["symptoms", "treatment"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """32 passages; 16 train queries with distinct positives, 8 dev and 8 test queries."""
    root = tmp_path_factory.mktemp("dist-beir")
    (root / "qrels").mkdir()
    docs, queries, qrels = [], [], {"train": [], "dev": [], "test": []}
    for i, (word, aspect) in enumerate((w, a) for a in ASPECTS for w in WORDS):
        did = f"d{i}"
        docs.append({"_id": did, "text": f"The {aspect} of {word} disease: clinical notes on the {word}."})
        queries.append({"_id": f"q{i}", "text": f"what about {word} {aspect}"})
        split = "train" if i < 16 else "dev" if i < 24 else "test"
        qrels[split].append((f"q{i}", did))
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, rows in qrels.items():
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in rows)
        )
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny BERT without dropout."""
    return build_tiny_model(tmp_path_factory.mktemp("nodropout"), seed=1, dropout=0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spec_file(folder: Path, model: Path, data: Path, name: str, *, nproc: int, batch: int, **train) -> Path:
    spec = {
        "name": name,
        "model": {"base": str(model), "max_seq_length": 32},
        "data": {"path": str(data)},
        "negatives": {"mode": "in-batch"},
        "train": {
            "epochs": 1,
            "batch_size": batch,
            "learning_rate": 5e-3,
            "warmup_ratio": 0.0,  # one step in all: with warm-up its learning rate would be 0
            "precision": "fp32",  # losses are compared across processes to 1e-4
            "early_stopping": None,
            "distributed": {"nproc_per_node": nproc, "master_port": free_port(), "workdir": str(folder / "jobs")},
            **train,
        },
        "eval": {"batch_size": 16, "metrics": ["ndcg@10", "recall@10"]},
    }
    return dump_yaml(spec, folder / f"{name}.yaml")


def first_loss(db: Path, run_id: str) -> float:
    log = store.get_run(db, run_id)["train_log"]
    return next(r["value"] for r in log if r["name"] == "loss" and r["step"] == 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model, data):
    """One-process references with a batch of 16 and 2-process runs with 8 per process, for each backend."""
    folder = tmp_path_factory.mktemp("dist")
    db = folder / "runs.duckdb"
    out = {}
    for backend in ("sentence-transformers", "flagembedding"):
        cases = {
            "single": {"nproc": 1, "batch": 16},
            "cross": {"nproc": 2, "batch": 8, "cross_device_negatives": True},
        }
        if backend == "sentence-transformers":
            cases["local"] = {"nproc": 2, "batch": 8, "cross_device_negatives": False}
        for case, kwargs in cases.items():
            name = f"{backend[:2]}-{case}"
            path = spec_file(folder, model, data, name, backend=backend, **kwargs)
            out[backend, case] = run_spec(load_spec(path), db)
    return db, out


@pytest.mark.parametrize("backend", ["sentence-transformers", "flagembedding"])
def test_two_ranks_train_and_one_run_is_recorded(runs, backend):
    db, out = runs
    result = out[backend, "cross"]
    assert result.status == "ok"
    assert query(db, "SELECT count(*) FROM runs WHERE experiment = ?", [result.experiment]) == [(1,)]
    train = store.get_run(db, result.run_id)["info"]["train"]
    assert train["world_size"] == 2 and train["per_device_batch"] == 8 and train["global_batch"] == 16
    assert train["cross_device_negatives"] is True
    # Both ranks trained: one optimizer step each (8 of the 16 pairs per rank), 16 samples in all.
    assert [r["rank"] for r in train["ranks"]] == [0, 1]
    assert all(r["steps"] == 1 for r in train["ranks"])
    assert train["samples"] == 16
    assert result.metrics["tuned"] != result.metrics["base"]
    # The dev split was scored after the epoch (on rank 0, broadcast to rank 1).
    assert "ndcg@10" in result.dev["tuned"]
    dev_rows = [r for r in store.get_run(db, result.run_id)["train_log"] if r["name"] == "dev_ndcg@10"]
    assert len(dev_rows) == 2  # the base model (epoch 0) and after epoch 1


@pytest.mark.parametrize("backend", ["sentence-transformers", "flagembedding"])
def test_cross_device_negatives_give_the_single_process_loss(runs, backend):
    db, out = runs
    single = first_loss(db, out[backend, "single"].run_id)
    cross = first_loss(db, out[backend, "cross"].run_id)
    assert cross == pytest.approx(single, rel=1e-4, abs=1e-4)


def test_without_cross_device_negatives_each_rank_sees_only_its_own_batch(runs):
    db, out = runs
    single = first_loss(db, out["sentence-transformers", "single"].run_id)
    local = first_loss(db, out["sentence-transformers", "local"].run_id)
    # 8 candidates per query instead of 16: a visibly lower loss at the same weights.
    assert local < single - 0.1


def test_a_dead_rank_fails_the_run_and_names_it(tmp_path, model, data, monkeypatch):
    monkeypatch.setenv("EMBX_FAULT_RANK", "1")
    db = tmp_path / "runs.duckdb"
    path = spec_file(tmp_path, model, data, "dies", nproc=2, batch=8, cross_device_negatives=True)
    with pytest.raises(TrainingFailed, match=r"rank 1: died \(SIGKILL\)"):
        run_spec(load_spec(path), db)
    ((status, error),) = query(db, "SELECT status, error FROM runs")
    assert status == "failed" and "rank 1" in error
    # Nothing left hanging: no worker of this job is still alive.
    left = subprocess.run(["pgrep", "-f", f"runner.train.worker {tmp_path}"], capture_output=True, text=True)
    assert left.stdout.strip() == ""


@pytest.mark.slow
def test_two_nodes_on_one_machine(tmp_path, model, data):
    """A leader and a follower `embx run` (nnodes 2, one process each) sharing a workdir, through the CLI."""
    db, workdir = tmp_path / "runs.duckdb", tmp_path / "shared"
    path = spec_file(tmp_path, model, data, "nodes", nproc=1, batch=8, cross_device_negatives=True)
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--set", f"train.distributed.workdir={workdir}"]
    embx = [sys.executable, "-m", "runner.cli", "run", str(path), "--db", str(db), *common]
    logs = {rank: tmp_path / f"node{rank}.log" for rank in (0, 1)}
    nodes = {
        rank: subprocess.Popen(
            [*embx, "--node-rank", str(rank)], stdout=logs[rank].open("w"), stderr=subprocess.STDOUT, text=True
        )
        for rank in (1, 0)
    }
    # Either node failing ends the test at once (the other would wait for it until its rendezvous times out).
    deadline = time.monotonic() + 600
    while any(p.poll() is None for p in nodes.values()) and time.monotonic() < deadline:
        if any(p.returncode not in (None, 0) for p in nodes.values()):
            break
        time.sleep(0.5)
    for p in nodes.values():
        if p.poll() is None:
            p.kill()
            p.wait()
    leader_out, follower_out = logs[0].read_text(), logs[1].read_text()
    assert nodes[0].returncode == 0, f"leader: {leader_out[-2000:]}\nfollower: {follower_out[-2000:]}"
    assert nodes[1].returncode == 0 and "took part in 1 training job(s)" in follower_out, follower_out[-2000:]
    ((run_id, status),) = query(db, "SELECT run_id, status FROM runs")
    train = store.get_run(db, run_id)["info"]["train"]
    assert status == "ok" and train["world_size"] == 2 and train["global_batch"] == 16


def test_a_distillation_loss_trains_under_torchrun_on_the_teachers_scores(tmp_path, model, data):
    import math

    from conftest import build_tiny_cross_encoder
    from ruamel.yaml import YAML

    teacher = build_tiny_cross_encoder(tmp_path / "cross-encoder")
    # batches of 2 per process: the trainer's no-duplicates sampler can form them although mined negatives are
    # other pairs' positives in this 32-passage corpus
    path = spec_file(tmp_path, model, data, "distill", nproc=2, batch=2, loss="margin-mse")
    spec = YAML(typ="safe").load(path)
    spec["negatives"] = {"mode": "hard", "per_query": 1, "mine_range": [1, 10], "rescore": {"model": str(teacher)}}
    result = run_spec(load_spec(dump_yaml(spec, path)), tmp_path / "r.duckdb")
    run = store.get_run(tmp_path / "r.duckdb", result.run_id)
    assert run["status"] == "ok" and run["info"]["train"]["world_size"] == 2 and run["info"]["train"]["samples"] > 0
    assert run["info"]["negatives"]["teacher_scored"] == 16 * 2  # each pair's positive and its negative
    losses = [r["value"] for r in run["train_log"] if r["name"] == "loss"]
    assert losses and all(math.isfinite(v) for v in losses)
