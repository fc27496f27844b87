"""The store's vocabulary: its schema (ordered migrations), errors, paths, clock, and row helpers."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

log = logging.getLogger(__name__)


DEFAULT_DB = "results.duckdb"
LOCK_TIMEOUT_ENV = "EMBX_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 120.0
"""Seconds a connection waits for a lock held by another process (about what 60 back-off attempts took)."""
MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE experiments (
        name VARCHAR PRIMARY KEY,
        description VARCHAR,
        created_at TIMESTAMP
    );
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY,
        experiment VARCHAR NOT NULL,
        status VARCHAR NOT NULL,          -- running | ok | failed | interrupted | pruned
        error VARCHAR,
        spec_path VARCHAR,
        spec_text VARCHAR,                -- the YAML as written
        spec_json VARCHAR,                -- the resolved spec (defaults, extends and --set applied)
        spec_hash VARCHAR,
        overrides VARCHAR,                -- JSON list of --set strings
        versions VARCHAR,                 -- JSON: package versions
        git_commit VARCHAR,
        device VARCHAR,
        host VARCHAR,
        pid INTEGER,
        started_at TIMESTAMP,
        finished_at TIMESTAMP,
        timings VARCHAR,                  -- JSON: seconds per stage
        info VARCHAR                      -- JSON: data counts, negative stats, epochs, warnings
    );
    CREATE TABLE metrics (
        run_id VARCHAR NOT NULL,
        split VARCHAR NOT NULL,
        stage VARCHAR NOT NULL,           -- base | tuned
        source VARCHAR NOT NULL,          -- native (embx) | mteb
        name VARCHAR NOT NULL,
        value DOUBLE
    );
    CREATE TABLE query_scores (
        run_id VARCHAR NOT NULL,
        split VARCHAR NOT NULL,
        stage VARCHAR NOT NULL,
        query_id VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        value DOUBLE
    );
    CREATE TABLE rankings (
        run_id VARCHAR NOT NULL,
        split VARCHAR NOT NULL,
        stage VARCHAR NOT NULL,
        query_id VARCHAR NOT NULL,
        rank INTEGER NOT NULL,
        doc_id VARCHAR NOT NULL,
        score DOUBLE
    );
    CREATE TABLE train_log (
        run_id VARCHAR NOT NULL,
        step INTEGER,
        epoch DOUBLE,
        name VARCHAR NOT NULL,
        value DOUBLE
    );
    """,
    # 2: ablations (variant of a run, baseline identity) and the texts reports show.
    """
    ALTER TABLE runs ADD COLUMN variant VARCHAR DEFAULT 'base';
    ALTER TABLE runs ADD COLUMN changes VARCHAR DEFAULT '{}';
    ALTER TABLE runs ADD COLUMN repeat INTEGER DEFAULT 0;
    ALTER TABLE runs ADD COLUMN baseline_key VARCHAR;
    CREATE TABLE texts (
        dataset VARCHAR NOT NULL,          -- content key of the dataset
        kind VARCHAR NOT NULL,             -- query | doc
        id VARCHAR NOT NULL,
        text VARCHAR,
        PRIMARY KEY (dataset, kind, id)
    );
    CREATE TABLE qrels (
        dataset VARCHAR NOT NULL,
        split VARCHAR NOT NULL,
        query_id VARCHAR NOT NULL,
        doc_id VARCHAR NOT NULL,
        grade INTEGER,
        PRIMARY KEY (dataset, split, query_id, doc_id)
    );
    """,
    # 3: Optuna searches: each trial is a run; a study's summary for the report.
    """
    ALTER TABLE runs ADD COLUMN study VARCHAR;
    ALTER TABLE runs ADD COLUMN trial INTEGER;
    CREATE TABLE studies (
        study VARCHAR PRIMARY KEY,
        experiment VARCHAR,
        storage VARCHAR,                   -- where Optuna keeps the study (passwords removed)
        objective VARCHAR,
        direction VARCHAR,
        best_trial INTEGER,
        best_value DOUBLE,
        best_params VARCHAR,               -- JSON
        importances VARCHAR,               -- JSON: Optuna's parameter importances
        best_run_id VARCHAR,               -- the run that evaluated the best spec on test
        updated_at TIMESTAMP
    );
    """,
    # 4: the start of the recording process, so the stale-run check tells a live run from a reused pid (or from
    # a process of another container that shares the hostname and the store).
    """
    ALTER TABLE runs ADD COLUMN pid_start VARCHAR;  -- "<boot id> <pid namespace> <start ticks>" (Linux)
    """,
    # 5: exports of saved models (`embx export`), each with its parity check against the run's own model.
    """
    CREATE TABLE exports (
        run_id VARCHAR NOT NULL,
        format VARCHAR NOT NULL,          -- sentence-transformers | onnx | onnx-int8
        path VARCHAR,                     -- the export folder (absolute); none when parity failed
        parity VARCHAR,                   -- JSON: the parity figures
        ok BOOLEAN NOT NULL,              -- whether the parity check passed
        hub_repo VARCHAR,                 -- the Hub repository it was pushed to, if any
        created_at TIMESTAMP
    );
    """,
]


class StoreError(Exception):
    """The results store cannot be used as asked: not a store, from a newer embx, locked too long, not writable.

    The message names the file; the CLI prints it and exits 2.
    """


class StoreMissing(StoreError, FileNotFoundError):
    """No store at the path (read-only commands do not create one)."""


class StoreLocked(StoreError):
    """Another process held the store for longer than the lock timeout."""


def default_db() -> str:
    """The store path: $EMBX_DB, else ./results.duckdb."""
    return os.environ.get("EMBX_DB") or DEFAULT_DB


def now() -> datetime:
    """Current UTC time without tzinfo (DuckDB TIMESTAMP)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def lock_timeout() -> float:
    """Seconds to wait for a lock held by another process: ``$EMBX_LOCK_TIMEOUT``, else 120."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise StoreError(f"{LOCK_TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None


def _check_version(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """The store's schema version (0 for a new, empty file); refuse one from a newer embx or another program."""
    tables = {
        row[0]
        for row in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database()"
            " AND table_schema = 'main'"
        ).fetchall()
    }
    if "schema_migrations" not in tables:
        if tables:
            raise StoreError(f"{path} is a DuckDB database but not an embx results store (no schema_migrations)")
        return 0
    version = con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] or 0
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path} was written by a newer embx: its schema version {version} is past the version"
            f" {len(MIGRATIONS)} this embx knows; upgrade embx to use it"
        )
    return version


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    for version, sql in enumerate(MIGRATIONS, 1):
        if version in done:
            continue
        con.execute("BEGIN TRANSACTION")
        con.execute(sql)
        con.execute("INSERT INTO schema_migrations VALUES (?, ?)", [version, now()])
        con.execute("COMMIT")


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [c[0] for c in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _decode(run: dict[str, Any]) -> dict[str, Any]:
    for key in ("overrides", "versions", "timings", "info", "changes"):
        if isinstance(run.get(key), str):
            run[key] = json.loads(run[key])
    for key in ("started_at", "finished_at"):
        if isinstance(run.get(key), datetime):
            run[key] = run[key].isoformat(timespec="seconds")
    return run
