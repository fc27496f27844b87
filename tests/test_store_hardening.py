"""The results store under stress: locked at a run's end, old and newer schemas, stale runs, bad paths, prefixes.

Each test here failed before the store was hardened (issue "Hardening"): the run's results were lost when another
process held the store at its end, read-only commands wrote (upgrades, the stale-run sweep), bad `--db` paths
gave tracebacks, and `embx show %` matched a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest
from helpers import cli, query, run_record

from runner import store
from runner.spec import Spec

MAIN = Spec.model_validate({"name": "e", "data": {"path": "x"}}).resolved_json()  # what ls and report read
FAST = {"train": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}}

# Another process that opens the store for writing and keeps it until killed.
HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("SELECT 1").fetchall()
print("locked", flush=True)
time.sleep(600)
"""


@contextmanager
def lock_held(db: Path) -> Iterator[None]:
    """The store held by a second process (a real DuckDB write connection) for the duration of the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        yield
    finally:
        holder.kill()
        holder.wait(timeout=30)


def results() -> store.RunResults:
    return store.RunResults(
        metrics=[("test", "base", "native", "ndcg@10", 0.25), ("test", "tuned", "native", "ndcg@10", 0.5)],
        query_scores=[("test", "tuned", "q1", "ndcg@10", 0.5)],
        rankings=[("test", "tuned", "q1", 1, "d1", 0.9), ("test", "tuned", "q1", 2, "d2", 0.8)],
        train_log=[(1, 1.0, "loss", 2.0)],
        timings={"total": 1.5},
        info={"negatives": {"mode": "random"}},
        texts=[("query", "q1", "a question"), ("doc", "d1", "a passage")],
        qrels=[("test", "q1", "d1", 1)],
        dataset="tiny",
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def refuse_writes(monkeypatch) -> None:
    """Make every read-write DuckDB open fail as it does on a read-only file (root ignores chmod)."""
    real = duckdb.connect

    def connect(database=":memory:", read_only=False, **kw):
        if not read_only and str(database) != ":memory:":
            raise duckdb.IOException(f'IO Error: Cannot open file "{database}": Permission denied')
        return real(database, read_only=read_only, **kw)

    monkeypatch.setattr(duckdb, "connect", connect)


# ----------------------------------------------------------------------- A. a finished run is never lost


def test_finish_run_saves_the_results_beside_a_store_that_stays_locked(tmp_path, monkeypatch):
    db = tmp_path / "results.duckdb"
    store.start_run(db, run_record("run-a", spec_json=MAIN))
    monkeypatch.setenv("EMBX_LOCK_TIMEOUT", "1")
    with lock_held(db):
        saved = store.finish_run(db, "run-a", results())
    assert saved == tmp_path / "results.duckdb.recovery" / "run-a.json"
    assert json.loads(saved.read_text())["run_id"] == "run-a"
    assert list(saved.parent.iterdir()) == [saved]  # written through a temporary file, renamed
    assert query(db, "SELECT status FROM runs") == [("running",)]

    # A read-only command never writes, so it leaves the file for later ...
    assert store.list_runs(db)[0]["metrics"] == {}
    assert store.pending_recoveries(db) == [saved]
    # ... and the next write imports it, in one transaction, with the time the run finished.
    store.start_run(db, run_record("run-b"))
    run = store.get_run(db, "run-a")
    assert run["status"] == "ok" and run["error"] is None
    assert run["metrics"] == {"base": {"ndcg@10": 0.25}, "tuned": {"ndcg@10": 0.5}}
    assert run["timings"] == {"total": 1.5} and run["info"] == {"negatives": {"mode": "random"}}
    assert query(db, "SELECT count(*) FROM rankings WHERE run_id = 'run-a'") == [(2,)]
    assert query(db, "SELECT count(*) FROM texts") == [(2,)]
    assert not saved.exists()
    assert store.pending_recoveries(db) == []


def test_end_run_saves_the_end_beside_a_store_that_stays_locked(tmp_path, monkeypatch):
    db = tmp_path / "results.duckdb"
    store.start_run(db, run_record("run-p"))
    monkeypatch.setenv("EMBX_LOCK_TIMEOUT", "1")
    with lock_held(db):
        saved = store.end_run(
            db,
            "run-p",
            status="pruned",
            error="pruned: trial 3",
            timings={"total": 2.0},
            info={},
            train_log=[(1, 1.0, "dev", 0.1)],
        )
    assert saved == tmp_path / "results.duckdb.recovery" / "run-p.json"
    assert store.reap_stale(db) == []  # a writing command: imports first, so the run is not taken for stale
    run = store.get_run(db, "run-p")
    assert (run["status"], run["error"]) == ("pruned", "pruned: trial 3")
    assert [(r["step"], r["name"], r["value"]) for r in run["train_log"]] == [(1, "dev", 0.1)]
    assert not saved.exists()


def test_a_run_whose_store_stays_locked_at_its_end_keeps_its_results(write_spec, tmp_path, monkeypatch, caplog):
    """`embx run` while another process holds the store when the run ends: exit 0, the results reach the store."""
    db = tmp_path / "results.duckdb"
    spec = write_spec(**FAST)
    real_finish = store.finish_run

    def finish_while_locked(*args, **kwargs):
        with lock_held(db):
            return real_finish(*args, **kwargs)

    monkeypatch.setattr(store, "finish_run", finish_while_locked)
    monkeypatch.setenv("EMBX_LOCK_TIMEOUT", "1")
    result = cli("run", spec, "--db", db)
    assert result.exit_code == 0, result.output
    ((run_id,),) = query(db, "SELECT run_id FROM runs")
    saved = tmp_path / "results.duckdb.recovery" / f"{run_id}.json"
    assert saved.exists()
    said = " ".join(caplog.text.split())
    assert f"results saved to {saved}; they will be imported into {db} by the next" in said, said
    assert query(db, "SELECT status FROM runs") == [("running",)]

    listed = cli("ls", "--db", db, "--json")  # says where the results wait, writes nothing
    assert listed.exit_code == 0
    assert "1 run(s) wait" in " ".join(listed.stderr.split()) and saved.exists()

    monkeypatch.setattr(store, "finish_run", real_finish)
    again = cli("run", spec, "--db", db)  # the next writing command imports them (and then skips the done run)
    assert again.exit_code == 0, again.output
    assert query(db, "SELECT run_id, status FROM runs") == [(run_id, "ok")]
    assert query(db, "SELECT DISTINCT stage FROM metrics WHERE split = 'test' ORDER BY 1") == [("base",), ("tuned",)]
    assert not saved.exists()


def test_an_unwritable_store_at_a_runs_end_is_not_called_recorded(write_spec, beir_copy, tmp_path, monkeypatch):
    qrels = beir_copy / "qrels" / "dev.tsv"
    with qrels.open("a") as f:
        f.write("q-heart-symptoms-0\tno-such-doc\t1\n")  # a DataError once the run has started
    db = tmp_path / "results.duckdb"
    real_start = store.start_run

    def start_then_lose_the_store(*args, **kwargs):
        real_start(*args, **kwargs)
        refuse_writes(monkeypatch)
        Path(f"{db}.recovery").write_text("in the way")  # no recovery folder either

    monkeypatch.setattr(store, "start_run", start_then_lose_the_store)
    result = cli("run", write_spec(data={"path": str(beir_copy)}), "--db", db)
    assert result.exit_code == 2, result.output
    err = " ".join(result.stderr.split())
    assert "document 'no-such-doc' is not in corpus.jsonl" in err
    assert "run recorded as failed" not in err
    assert f"(not recorded: could not record run {run_id(db)} in {db}" in err and "Permission denied" in err
    monkeypatch.undo()
    assert query(db, "SELECT status FROM runs") == [("running",)]


def run_id(db: Path) -> str:
    ((only,),) = query(db, "SELECT run_id FROM runs")
    return only


def test_a_store_locked_when_the_run_starts_exits_2_without_a_record(write_spec, tmp_path, monkeypatch):
    db = tmp_path / "results.duckdb"
    store.start_run(db, run_record("earlier"))
    monkeypatch.setenv("EMBX_LOCK_TIMEOUT", "1")
    with lock_held(db):
        result = CliRunnerResult.of("run", write_spec(**FAST), "--db", db)
    assert result.exit_code == 2, result.output
    assert "locked by another process" in " ".join(result.stderr.split())
    assert "recorded" not in result.stderr
    assert query(db, "SELECT run_id FROM runs") == [("earlier",)]


class CliRunnerResult:
    """`embx` in-process, tracebacks turned into exit 1 (a test of error handling must see them, not raise)."""

    @staticmethod
    def of(*args):
        from click.testing import CliRunner

        from runner.cli import main

        return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------------------- B. schemas, stale runs


def test_a_store_from_a_newer_embx_is_refused(tmp_path):
    db = tmp_path / "results.duckdb"
    store.start_run(db, run_record("r1", spec_json=MAIN))
    newer = len(store.MIGRATIONS) + 1
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_migrations VALUES (?, now())", [newer])
    con.close()
    before = digest(db)
    for args in (["ls"], ["show", "r1"], ["report", "-o", tmp_path / "r.html"]):
        result = CliRunnerResult.of(*args, "--db", db)
        assert result.exit_code == 2, (args, result.output)
        err = " ".join(result.stderr.split())
        assert f"schema version {newer}" in err and f"version {len(store.MIGRATIONS)}" in err, err
        assert str(db) in err
    with pytest.raises(store.StoreError, match="newer embx"):
        store.start_run(db, run_record("r2"))
    assert digest(db) == before


def old_store(path: Path, version: int) -> None:
    """A store written by an embx whose schema stopped at `version`, holding one finished run."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    for number, sql in enumerate(store.MIGRATIONS[:version], 1):
        con.execute(sql)
        con.execute("INSERT INTO schema_migrations VALUES (?, now())", [number])
    con.execute(
        "INSERT INTO runs (run_id, experiment, status, spec_json, started_at, finished_at, host, pid)"
        " VALUES ('old-run', 'old', 'ok', ?, now(), now(), 'h', 1)",
        [MAIN],
    )
    con.execute(
        "INSERT INTO metrics VALUES ('old-run', 'test', 'base', 'native', 'ndcg@10', 0.25),"
        " ('old-run', 'test', 'tuned', 'native', 'ndcg@10', 0.5)"
    )
    con.close()


def test_read_only_commands_read_an_old_store_without_upgrading_it(tmp_path):
    db = tmp_path / "results.duckdb"
    old_store(db, 2)
    before = digest(db)
    listed = cli("ls", "--db", db, "--json")
    assert listed.exit_code == 0, listed.output
    (run,) = json.loads(listed.stdout)
    assert run["run_id"] == "old-run" and run["metrics"]["tuned"] == {"ndcg@10": 0.5}
    assert cli("show", "old-run", "--db", db).exit_code == 0
    report = cli("report", "--db", db, "-o", tmp_path / "r.html")
    assert report.exit_code == 0, report.output
    assert digest(db) == before
    assert query(db, "SELECT max(version) FROM schema_migrations") == [(2,)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "results.duckdb"]
    # A writing command upgrades it in place.
    store.start_run(db, run_record("new-run"))
    assert query(db, "SELECT max(version) FROM schema_migrations") == [(len(store.MIGRATIONS),)]
    assert {r["run_id"] for r in store.list_runs(db)} == {"old-run", "new-run"}


RECORD_AND_EXIT = """
import os, platform, sys
from runner import store
from runner.spec import Spec
store.start_run(sys.argv[1], store.RunRecord(
    run_id="by-child", experiment="e", description="", spec_path="/x.yaml", spec_text="", spec_json="{}",
    spec_hash="h", overrides=[], versions={}, git_commit=None, device="cpu", host=platform.node(), pid=os.getpid()))
"""


def child_run(db: Path) -> int:
    """A run recorded by a child process of this host, which then exits. Returns the child's pid."""
    done = subprocess.run(
        [sys.executable, "-c", RECORD_AND_EXIT, str(db)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    ((pid,),) = query(db, "SELECT pid FROM runs WHERE run_id = 'by-child'")
    return pid


def test_stale_sweep_notices_a_pid_reused_by_another_process(tmp_path):
    db = tmp_path / "results.duckdb"
    child_run(db)
    # The child's pid now belongs to another live process (this one): pid alone says "alive".
    con = duckdb.connect(str(db))
    con.execute("UPDATE runs SET pid = ? WHERE run_id = 'by-child'", [os.getpid()])
    con.close()
    assert store.reap_stale(db) == ["by-child"]
    assert query(db, "SELECT status FROM runs") == [("interrupted",)]


def test_stale_sweep_leaves_runs_it_cannot_check(tmp_path):
    """Containers on one machine share a hostname but not a pid namespace: a pid there says nothing here."""
    db = tmp_path / "results.duckdb"
    child_run(db)
    ((recorded,),) = query(db, "SELECT pid_start FROM runs")
    boot, _, ticks = recorded.split(" ")
    con = duckdb.connect(str(db))
    con.execute("UPDATE runs SET pid_start = ?", [f"{boot} pid:[1] {ticks}"])
    con.close()
    assert store.reap_stale(db) == []
    assert query(db, "SELECT status FROM runs") == [("running",)]


# ------------------------------------------------------------------------------------ C. bad store paths


@pytest.mark.parametrize("kind", ["directory", "text file"])
def test_a_db_path_that_is_not_a_store_exits_2_naming_it(kind, write_spec, tmp_path):
    db = tmp_path / "results.duckdb"
    if kind == "directory":
        db.mkdir()
    else:
        db.write_text("not a database\n")
    for args in (["ls"], ["show", "x"], ["report", "-o", tmp_path / "r.html"], ["run", write_spec(**FAST)]):
        result = CliRunnerResult.of(*args, "--db", db)
        assert result.exit_code == 2, (args, result.output)
        assert str(db) in result.stderr and "Traceback" not in result.output
        assert "recorded" not in result.stderr
    assert db.is_dir() if kind == "directory" else db.read_text() == "not a database\n"


def test_an_empty_store_file(tmp_path):
    db = tmp_path / "results.duckdb"
    db.touch()  # a creation that died half-way
    result = CliRunnerResult.of("ls", "--db", db)
    assert result.exit_code == 2, result.output
    assert str(db) in result.stderr and "empty" in result.stderr
    assert db.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["results.duckdb"]
    # The sweep of a writing command repairs it instead of crashing on it.
    assert store.reap_stale(db) == []
    store.start_run(db, run_record("after"))
    assert [r["run_id"] for r in store.list_runs(db)] == ["after"]


def test_read_only_commands_never_write_even_with_a_stale_run(tmp_path, monkeypatch):
    db = tmp_path / "results.duckdb"
    store.start_run(db, run_record("done", experiment="e", spec_json=MAIN))
    store.finish_run(db, "done", results())
    store.start_run(db, run_record("gone", experiment="e", spec_json=MAIN, host=platform.node(), pid=dead_pid()))
    before, files = digest(db), sorted(p.name for p in tmp_path.iterdir())
    db.chmod(0o444)
    refuse_writes(monkeypatch)  # as a read-only file does (root ignores the mode)

    listed = cli("ls", "--db", db, "--json")
    assert listed.exit_code == 0, listed.output
    assert {r["run_id"]: r["status"] for r in json.loads(listed.stdout)} == {"done": "ok", "gone": "stale?"}
    assert "stale?" in cli("ls", "--db", db).stdout
    shown = cli("show", "gone", "--db", db, "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["status"] == "stale?"
    report = cli("report", "--db", db, "-o", tmp_path / "r.html")
    assert report.exit_code == 0, report.output

    monkeypatch.undo()
    assert digest(db) == before
    assert query(db, "SELECT run_id, status FROM runs ORDER BY run_id") == [("done", "ok"), ("gone", "running")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*files, "r.html"])  # no lock file, no WAL
    # A writing command's sweep marks it.
    db.chmod(0o644)
    assert store.reap_stale(db) == ["gone"]


# --------------------------------------------------------------------------------------- D. run prefixes


@pytest.mark.parametrize("prefix", ["%", "_", "2025%", "20250101_"])
def test_show_does_not_treat_like_wildcards_as_a_prefix(prefix, tmp_path):
    db = tmp_path / "results.duckdb"
    store.start_run(db, run_record("20250101-000000-abcdef"))
    result = cli("show", prefix, "--db", db)
    assert result.exit_code == 2, result.output
    assert f"no run {prefix!r}" in result.stderr


def test_show_refuses_an_empty_prefix(tmp_path):
    db = tmp_path / "results.duckdb"
    store.start_run(db, run_record("20250101-000000-abcdef"))
    result = cli("show", "", "--db", db)
    assert result.exit_code == 2, result.output
    assert "empty" in result.stderr
    with pytest.raises(KeyError, match="empty"):
        store.get_run(db, "")


def test_a_prefix_with_an_underscore_is_literal(tmp_path):
    db = tmp_path / "results.duckdb"
    store.start_run(db, run_record("a_b1"))
    store.start_run(db, run_record("axb2"))
    assert store.get_run(db, "a_")["run_id"] == "a_b1"
