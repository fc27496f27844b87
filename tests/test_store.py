"""The DuckDB store: migrations, run lifecycle, lookups."""

from __future__ import annotations

import hashlib
from datetime import datetime

import duckdb
import pytest

from runner import store


def record(run_id: str, experiment: str = "exp", started: datetime | None = None, **kw) -> store.RunRecord:
    fields = {
        "run_id": run_id,
        "experiment": experiment,
        "description": "a test",
        "spec_path": "/x/spec.yaml",
        "spec_text": "name: exp\n",
        "spec_json": '{"eval": {"main": "ndcg@10"}}',
        "spec_hash": "abc123",
        "overrides": ["train.epochs=1"],
        "versions": {"python": "3.11"},
        "git_commit": "deadbeef",
        "device": "cpu: 2 threads",
        "host": "box",
        "pid": 42,
    }
    fields.update(kw)
    if started is not None:
        fields["started_at"] = started
    return store.RunRecord(**fields)


def results() -> store.RunResults:
    return store.RunResults(
        metrics=[
            ("test", "base", "native", "ndcg@10", 0.25),
            ("test", "tuned", "native", "ndcg@10", 0.5),
            ("test", "tuned", "native", "recall@10", 0.75),
            ("dev", "tuned", "native", "ndcg@10", 0.4),
        ],
        query_scores=[("test", "tuned", "q1", "ndcg@10", 0.5)],
        rankings=[("test", "tuned", "q1", 1, "d1", 0.9), ("test", "tuned", "q1", 2, "d2", 0.8)],
        train_log=[(1, 0.5, "loss", 2.0), (2, 1.0, "loss", 1.5), (2, 1.0, "dev_ndcg@10", 0.4)],
        timings={"total": 1.5},
        info={"negatives": {"mode": "random"}},
    )


def count(db, table: str, run_id: str | None = None) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        if run_id is None:
            return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]).fetchone()[0]
    finally:
        con.close()


def test_migrations_are_idempotent(tmp_path):
    db = tmp_path / "r.duckdb"
    with store.connect(db):
        pass
    with store.connect(db) as con:
        versions = con.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        tables = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert [v for (v,) in versions] == list(range(1, len(store.MIGRATIONS) + 1))
    assert {"experiments", "runs", "metrics", "query_scores", "rankings", "train_log"} <= tables


# Migrations are applied in order and never edited once released: a store at version N has run exactly these.
MIGRATION_SHA256 = [
    "b1f9fb47577b5711cda714ac15cdc5bd001e0e83fd1a97eb3d815660c284c5f3",
    "506fd0a22322e9aa7335a261fb8bbfb8e4ae41d9fdcb398adf0e3d9f557ce7dd",
    "1830db40902cf97f9e1dd63df413158c7eec85b226bf86939e869da2a6326344",
    "89555c1e3387f7ea73b6009c456cb1fabbbe81a4726a8aef99f88738bf4bc3d9",
    "11bc1690e15d64e8d469a6021a9f1cb02d722736293e034743a3196f96dc57b8",
]


def test_released_migrations_are_never_edited():
    released = store.MIGRATIONS[: len(MIGRATION_SHA256)]
    assert [hashlib.sha256(sql.encode()).hexdigest() for sql in released] == MIGRATION_SHA256


def test_migration_4_records_the_process_start_of_a_run():
    assert "ALTER TABLE runs ADD COLUMN pid_start VARCHAR" in store.MIGRATIONS[3]


def test_migration_5_records_exports():
    assert len(store.MIGRATIONS) == 5
    assert "CREATE TABLE exports" in store.MIGRATIONS[4]


def test_a_version_3_store_is_upgraded_in_place_keeping_its_runs(tmp_path):
    db = tmp_path / "r.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    for version, sql in enumerate(store.MIGRATIONS[:3], 1):
        con.execute(sql)
        con.execute("INSERT INTO schema_migrations VALUES (?, now())", [version])
    con.execute("INSERT INTO runs (run_id, experiment, status, host, pid) VALUES ('old', 'exp', 'ok', 'box', 7)")
    con.close()
    store.start_run(db, record("new"))
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT max(version) FROM schema_migrations").fetchone() == (len(store.MIGRATIONS),)
        rows = con.execute("SELECT run_id, status, pid, pid_start FROM runs ORDER BY run_id").fetchall()
    finally:
        con.close()
    assert rows == [("new", "running", 42, None), ("old", "ok", 7, None)]


def test_start_finish_round_trip(tmp_path):
    db = tmp_path / "r.duckdb"
    store.start_run(db, record("20250101-000000-aaaaaa"))
    (running,) = store.list_runs(db)
    assert running["status"] == "running" and running["metrics"] == {}

    store.finish_run(db, "20250101-000000-aaaaaa", results())
    run = store.get_run(db, "20250101-000000-aaaaaa")
    assert run["status"] == "ok" and run["error"] is None
    assert run["metrics"] == {"base": {"ndcg@10": 0.25}, "tuned": {"ndcg@10": 0.5, "recall@10": 0.75}}
    assert run["metrics_by_split"]["dev"] == {"native": {"tuned": {"ndcg@10": 0.4}}}
    assert run["overrides"] == ["train.epochs=1"]
    assert run["versions"] == {"python": "3.11"}
    assert run["timings"] == {"total": 1.5}
    assert run["info"] == {"negatives": {"mode": "random"}}
    assert run["spec_text"] == "name: exp\n" and run["spec_hash"] == "abc123"
    assert isinstance(run["started_at"], str) and isinstance(run["finished_at"], str)
    assert [(r["step"], r["name"], r["value"]) for r in run["train_log"]] == [
        (1, "loss", 2.0),
        (2, "dev_ndcg@10", 0.4),
        (2, "loss", 1.5),
    ]
    assert count(db, "rankings", run["run_id"]) == 2
    assert count(db, "query_scores", run["run_id"]) == 1

    (listed,) = store.list_runs(db)
    assert listed["status"] == "ok"
    assert listed["main_metric"] == "ndcg@10"
    assert listed["metrics"] == {"base": {"ndcg@10": 0.25}, "tuned": {"ndcg@10": 0.5, "recall@10": 0.75}}


def test_list_runs_newest_first_and_by_experiment(tmp_path):
    db = tmp_path / "r.duckdb"
    store.start_run(db, record("run-old", "a", started=datetime(2025, 1, 1)))
    store.start_run(db, record("run-new", "b", started=datetime(2025, 6, 1)))
    store.start_run(db, record("run-mid", "a", started=datetime(2025, 3, 1)))
    assert [r["run_id"] for r in store.list_runs(db)] == ["run-new", "run-mid", "run-old"]
    assert [r["run_id"] for r in store.list_runs(db, "a")] == ["run-mid", "run-old"]
    assert store.list_runs(db, "nope") == []
    # One experiment row per name, however many runs.
    assert count(db, "experiments") == 2


def test_failed_run_keeps_error_and_no_metrics(tmp_path):
    db = tmp_path / "r.duckdb"
    store.start_run(db, record("run-x"))
    store.end_run(
        db, "run-x", status="failed", error="DataError: bad line", timings={"data": 0.1}, info={"device": "cpu"}
    )
    run = store.get_run(db, "run-x")
    assert run["status"] == "failed"
    assert run["error"] == "DataError: bad line"
    assert run["metrics"] == {} and run["metrics_by_split"] == {} and run["train_log"] == []
    assert run["timings"] == {"data": 0.1} and run["info"] == {"device": "cpu"}
    assert run["finished_at"] is not None
    assert count(db, "metrics") == 0


def test_finish_run_is_all_or_nothing(tmp_path):
    db = tmp_path / "r.duckdb"
    store.start_run(db, record("run-y"))
    bad = results()
    bad.rankings = [("test", "tuned")]  # too short a row: the insert fails part-way
    with pytest.raises(IndexError):
        store.finish_run(db, "run-y", bad)
    assert store.get_run(db, "run-y")["status"] == "running"
    assert count(db, "metrics") == 0


def test_get_run_by_prefix(tmp_path):
    db = tmp_path / "r.duckdb"
    store.start_run(db, record("20250101-000000-abc111"))
    store.start_run(db, record("20250101-000000-abd222"))
    assert store.get_run(db, "20250101-000000-abc")["run_id"] == "20250101-000000-abc111"
    assert store.get_run(db, "20250101-000000-abd222")["run_id"] == "20250101-000000-abd222"
    with pytest.raises(KeyError, match="ambiguous"):
        store.get_run(db, "20250101-000000-ab")
    with pytest.raises(KeyError, match="no run"):
        store.get_run(db, "2030")


def test_read_only_on_missing_file(tmp_path):
    missing = tmp_path / "missing.duckdb"
    with pytest.raises(FileNotFoundError, match="no results store"):
        store.list_runs(missing)
    with pytest.raises(FileNotFoundError):
        store.get_run(missing, "x")
    assert not missing.exists()


def test_default_db(monkeypatch):
    monkeypatch.delenv("EMBX_DB", raising=False)
    assert store.default_db() == "results.duckdb"
    monkeypatch.setenv("EMBX_DB", "/tmp/elsewhere.duckdb")
    assert store.default_db() == "/tmp/elsewhere.duckdb"
