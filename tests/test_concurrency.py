"""Several processes and one results store: concurrent writers, killed and terminated runs, lock retries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli, query, run_record

from runner import store

PROCESSES, RUNS_EACH = 4, 25
METRICS = ["recall@1", "recall@10", "ndcg@10", "mrr@10", "map@100"]
QUERIES, DEPTH = 18, 10

# One writer process of the store-level stress test: RUNS_EACH runs, each started and finished as run_spec
# does (start_run, then finish_run with the rows of a tiny-BEIR run), all released by a shared "go" file.
STORE_WRITER = f"""
import os, sys, time
from pathlib import Path
from runner import store

db, proc, runs, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
metrics, queries, depth = {METRICS!r}, {QUERIES}, {DEPTH}
while not go.exists():
    time.sleep(0.005)
for i in range(runs):
    run_id = f"p{{proc}}-r{{i:02d}}"
    value = proc + i / 100
    store.start_run(db, store.RunRecord(
        run_id=run_id, experiment="stress", description="", spec_path="/x/stress.yaml", spec_text="name: stress\\n",
        spec_json='{{"eval": {{"main": "ndcg@10"}}}}', spec_hash=f"hash-{{proc}}-{{i}}", overrides=[],
        versions={{"python": "3"}}, git_commit=None, device="cpu: 1 threads", host="stress", pid=os.getpid(),
    ))
    qids = [f"q{{k}}" for k in range(queries)]
    store.finish_run(db, run_id, store.RunResults(
        metrics=[(split, stage, "native", m, value) for split in ("test", "dev") for stage in ("base", "tuned")
                 for m in metrics],
        query_scores=[("test", stage, q, m, value) for stage in ("base", "tuned") for q in qids for m in metrics],
        rankings=[("test", stage, q, r, f"d{{r}}", 1 / r) for stage in ("base", "tuned") for q in qids
                  for r in range(1, depth + 1)],
        train_log=[(step, step / 6, "loss", 2.0 - step / 10) for step in range(1, 7)],
        timings={{"total": 1.0}},
        info={{"proc": proc}},
        texts=[("query", q, "text of " + q) for q in qids]
        + [("doc", f"d{{r}}", f"doc {{r}}") for r in range(1, depth + 1)],
        qrels=[("test", q, "d1", 1) for q in qids],
        dataset="tiny",
    ))
"""


def record(run_id: str) -> store.RunRecord:
    return run_record(
        run_id, experiment="locks", spec_path="/x/locks.yaml", spec_text="name: locks\n", host="elsewhere"
    )


def start_all(commands: list[list[str]], logs: Path) -> list[tuple[subprocess.Popen, Path]]:
    procs = []
    for i, cmd in enumerate(commands):
        err = logs / f"proc{i}.err"
        with err.open("w") as handle:
            procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=handle), err))
    return procs


def wait_all(procs: list[tuple[subprocess.Popen, Path]], timeout: float) -> list[str]:
    """Wait for every process (killing those past the deadline); all must exit 0. Returns their stderr."""
    deadline = time.monotonic() + timeout
    codes = []
    for proc, _ in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append("timeout")
    errors = [err.read_text() for _, err in procs]
    for code, err in zip(codes, errors):
        assert code == 0, f"process exited {code}:\n{err[-3000:]}"
    return errors


# ------------------------------------------------------------------------------------- 6. many writers


def test_four_processes_write_100_runs_into_one_store(tmp_path):
    """4 processes x 25 runs (start_run + finish_run with a tiny run's rows), all at once, into one store.

    The store exists before they start: creating it concurrently is the bug shown by
    test_store_file_seen_mid_creation_is_not_fatal.
    """
    db, go = tmp_path / "results.duckdb", tmp_path / "go"
    with store.connect(db):
        pass
    procs = start_all(
        [[sys.executable, "-c", STORE_WRITER, str(db), str(p), str(RUNS_EACH), str(go)] for p in range(PROCESSES)],
        tmp_path,
    )
    time.sleep(1.0)  # let every interpreter import duckdb and wait at the line
    go.touch()
    errors = wait_all(procs, timeout=150)
    assert not any("Traceback" in e or "Could not set lock" in e for e in errors), errors

    total = PROCESSES * RUNS_EACH
    assert query(db, "SELECT status, count(*) FROM runs GROUP BY status") == [("ok", total)]
    per_run = {
        "metrics": 2 * 2 * len(METRICS),
        "query_scores": 2 * QUERIES * len(METRICS),
        "rankings": 2 * QUERIES * DEPTH,
        "train_log": 6,
    }
    for table, rows in per_run.items():
        counts = query(
            db, f"SELECT r.run_id, count(t.run_id) FROM runs r LEFT JOIN {table} t USING (run_id) GROUP BY 1"
        )
        assert len(counts) == total
        assert {n for _, n in counts} == {rows}, table
    # Every run's metrics are its own (the value encodes process and run), read through the store's API.
    listed = store.list_runs(db)
    assert len(listed) == total
    for run in listed:
        proc, index = run["run_id"].removeprefix("p").split("-r")
        expected = int(proc) + int(index) / 100
        assert run["metrics"]["tuned"] == dict.fromkeys(METRICS, expected), run["run_id"]
    # Shared dataset rows were added once, whichever process came first.
    assert query(db, "SELECT count(*) FROM texts") == [(QUERIES + DEPTH,)]
    assert query(db, "SELECT count(*) FROM qrels") == [(QUERIES,)]
    assert query(db, "SELECT max(version) FROM schema_migrations") == [(len(store.MIGRATIONS),)]


def test_store_file_seen_mid_creation_is_not_fatal(tmp_path):
    db = tmp_path / "results.duckdb"
    db.touch()  # what a second process sees while the first one creates the store
    store.start_run(db, record("after-empty"))
    assert [r["run_id"] for r in store.list_runs(db)] == ["after-empty"]


@pytest.mark.slow
def test_four_processes_100_real_runs(make_spec, tmp_path):
    """The same with real `embx run`s of the tiny model: 4 processes, each an ablation of 25 variants."""
    db = tmp_path / "results.duckdb"
    with store.connect(db):  # created first: see test_store_file_seen_mid_creation_is_not_fatal
        pass
    commands = []
    for p in range(PROCESSES):
        spec = make_spec(
            tmp_path / f"stress{p}.yaml",
            name=f"stress{p}",
            data={"limit": 8, "splits": {"train": "train", "dev": None, "test": "test"}},
            train={"epochs": 1, "batch_size": 4, "early_stopping": None},
            eval={"batch_size": 16, "metrics": ["recall@10", "ndcg@10"]},
            ablate={"factors": {"train.seed": list(range(RUNS_EACH - 1))}},  # the base (seed 42) + 24 variants
        )
        commands.append([sys.executable, "-m", "runner.cli", "run", str(spec), "--db", str(db)])
    errors = wait_all(start_all(commands, tmp_path), timeout=1800)
    assert not any("Traceback" in e for e in errors), errors
    total = PROCESSES * RUNS_EACH
    assert query(db, "SELECT status, count(*) FROM runs GROUP BY status") == [("ok", total)]
    counts = query(
        db,
        "SELECT r.run_id, count(m.run_id) FROM runs r LEFT JOIN metrics m ON m.run_id = r.run_id"
        " AND m.split = 'test' AND m.source = 'native' GROUP BY 1",
    )
    assert len(counts) == total and {n for _, n in counts} == {4}  # base and tuned x 2 metrics
    assert sorted(n for (n,) in query(db, "SELECT count(*) FROM runs GROUP BY experiment")) == [RUNS_EACH] * PROCESSES


# ---------------------------------------------------------------------------------- 7. killed runs


@pytest.fixture
def long_spec(make_spec, tmp_path) -> Path:
    """A run that trains for minutes: 100 epochs, no dev split, no early stopping."""
    return make_spec(
        tmp_path / "long.yaml",
        name="long",
        data={"limit": 16, "splits": {"train": "train", "dev": None, "test": "test"}},
        train={"epochs": 100, "batch_size": 4, "early_stopping": None},
        eval={"batch_size": 16, "metrics": ["ndcg@10"]},
    )


def start_run(spec: Path, db: Path, tmp: Path) -> subprocess.Popen:
    """`embx run SPEC` in a child process whose temporary folders (the trainer's work dir) go under `tmp`."""
    tmp.mkdir()
    with (tmp.parent / "run.log").open("w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "runner.cli", "run", str(spec), "--db", str(db)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TMPDIR": str(tmp)},
        )


def wait_training(proc: subprocess.Popen, db: Path, tmp: Path, timeout: float = 120) -> dict:
    """Poll until the child's run is recorded as running and its trainer's work dir exists (training began)."""
    log = tmp.parent / "run.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"embx run exited {proc.returncode} early:\n{log.read_text()[-3000:]}")
        runs = store.list_runs(db) if db.exists() else []
        if runs and runs[0]["status"] == "running" and list(tmp.glob(f"embx-*-{runs[0]['run_id']}-*")):
            return runs[0]
        time.sleep(0.2)
    pytest.fail(f"the run did not start training within {timeout} s:\n{log.read_text()[-3000:]}")


def test_sigkilled_run_is_reaped_and_the_store_stays_usable(long_spec, tmp_path):
    db, tmp = tmp_path / "results.duckdb", tmp_path / "tmp"
    proc = start_run(long_spec, db, tmp)
    try:
        run = wait_training(proc, db, tmp)
        time.sleep(0.5)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # The file opens and reads: the row is still 'running' (the process had no chance to record anything).
    assert query(db, "SELECT run_id, status, pid, error FROM runs") == [(run["run_id"], "running", proc.pid, None)]
    assert query(db, "SELECT count(*) FROM metrics") == [(0,)]

    # A read-only command notices the dead process and shows its run as `stale?`, writing nothing ...
    listed = cli("ls", "--db", db, "--json")
    assert listed.exit_code == 0, listed.output
    (stale,) = json.loads(listed.stdout)
    assert stale["run_id"] == run["run_id"]
    assert stale["status"] == "stale?"
    assert query(db, "SELECT status FROM runs") == [("running",)]

    # ... and the next writing command marks it interrupted; the same spec runs to the end afterwards (one
    # epoch instead of a hundred, to stay quick).
    again = cli("run", long_spec, "--db", db, "--set", "train.epochs=1")
    assert again.exit_code == 0, again.output
    assert query(db, "SELECT status, error IS NULL FROM runs ORDER BY started_at, run_id") == [
        ("interrupted", False),
        ("ok", True),
    ]
    (error, finished) = query(db, "SELECT error, finished_at FROM runs WHERE status = 'interrupted'")[0]
    assert error.startswith("stale: ") and finished is not None
    (ok_id,) = query(db, "SELECT run_id FROM runs WHERE status = 'ok'")[0]
    assert query(db, "SELECT stage FROM metrics WHERE run_id = ? AND split = 'test' ORDER BY stage", [ok_id]) == [
        ("base",),
        ("tuned",),
    ]


def test_sigterm_records_the_run_as_interrupted(long_spec, tmp_path):
    db, tmp = tmp_path / "results.duckdb", tmp_path / "tmp"
    proc = start_run(long_spec, db, tmp)
    try:
        run = wait_training(proc, db, tmp)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = (tmp_path / "run.log").read_text()
    assert code == 130, output[-3000:]
    assert f"interrupted (run recorded as interrupted in {db})" in output
    # Recorded by the process itself (read directly: nothing has reaped it) ...
    rows = query(db, "SELECT run_id, status, error, finished_at IS NOT NULL FROM runs")
    assert rows == [(run["run_id"], "interrupted", f"interrupted (signal {int(signal.SIGTERM)})", True)]
    # ... which also removed the trainer's work dir on the way out.
    assert list(tmp.glob("embx-*")) == []


# ------------------------------------------------------------------------------------ 8. lock retries

HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("SELECT count(*) FROM runs").fetchall()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
print("released", flush=True)
"""


def test_connect_waits_for_a_lock_held_by_another_process(tmp_path):
    db = tmp_path / "results.duckdb"
    store.start_run(db, record("first"))
    for action in ("write", "read"):
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(db), "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
            # The lock is real: a single attempt fails ...
            with pytest.raises(store.StoreLocked, match="locked by another process"), store.connect(db, attempts=1):
                pass
            # ... and the store's own calls wait for it and succeed.
            started = time.monotonic()
            if action == "write":
                store.start_run(db, record("second"))
            else:
                runs = store.list_runs(db)
            waited = time.monotonic() - started
            assert holder.wait(timeout=30) == 0
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        assert holder.stdout.read().strip() == "released"
        assert waited > 0.5, f"{action} did not wait for the lock ({waited:.2f} s)"
    assert sorted(r["run_id"] for r in runs) == ["first", "second"]
