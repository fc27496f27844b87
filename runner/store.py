"""The results store: DuckDB, append-only, schema by ordered migrations. The only module that writes SQL.

Connections are opened per operation and closed at once, so the file is locked only while a statement
runs; a writer that finds the file locked by another process retries with back-off for up to
``$EMBX_LOCK_TIMEOUT`` seconds. Read-only connections never write: not the schema (an older store is read
through an upgraded temporary copy), not the stale-run sweep, not even a lock file. A run's end that cannot be
written (the store stays locked, or is not writable) is saved to a recovery file beside the store,
``<db>.recovery/<run_id>.json``, which the next connection that writes imports.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import platform
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import duckdb

log = logging.getLogger(__name__)
T = TypeVar("T")

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


@contextmanager
def connect(
    db: str | Path, read_only: bool = False, attempts: int | None = None, *, timeout: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the store at the current schema, waiting while another process holds its lock.

    A writer creates a missing (or half-created, empty) store, migrates an older one in place and imports the
    recovery files of runs whose end could not be written before. A reader writes nothing: an older store is
    read through an upgraded temporary copy, and a missing or empty one is an error.

    Args:
        db: Path of the DuckDB file.
        read_only: Open without write access (the file must exist).
        attempts: Tries before giving up on a lock held elsewhere (default: as many as the timeout allows).
        timeout: Seconds to wait for such a lock (default: :func:`lock_timeout`).

    Raises:
        StoreMissing: Reading a store that does not exist.
        StoreLocked: The lock stayed held for the whole timeout.
        StoreError: The path is not a store (a directory, another file), its schema is newer than this embx
            knows, or it cannot be opened.

    """
    path = Path(db)
    wait = lock_timeout() if timeout is None else timeout
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a results store file (pass --db {path / DEFAULT_DB})")
    if read_only:
        con = _open_for_reading(path, attempts, wait)
    else:
        _ensure_created(path, attempts, wait)
        con = _open(path, False, attempts, wait)
        try:
            _check_version(con, path)
            _migrate(con)
            _import_recoveries(con, path)
        except BaseException as exc:
            con.close()
            if isinstance(exc, duckdb.IOException):
                raise StoreError(f"cannot write the results store {path}: {exc}") from exc
            raise
    try:
        yield con
    except duckdb.IOException as exc:  # a file that went away or became unwritable under us, a full disk
        raise StoreError(f"cannot use the results store {path}: {exc}") from exc
    finally:
        con.close()


def _retry_locked(action: Callable[[], T], path: Path, attempts: int | None, wait: float) -> T:
    """Run `action` (an open), retrying with back-off while another process holds the file's lock."""
    started = time.monotonic()
    tries = 0
    while True:
        try:
            return action()
        except duckdb.IOException as exc:
            if not re.search(r"\block\b", str(exc), re.IGNORECASE):  # "Could not set lock", not "block"
                raise StoreError(f"cannot open the results store {path}: {exc}") from exc
            tries += 1
            left = started + wait - time.monotonic()
            if left <= 0 or (attempts is not None and tries >= attempts):
                waited = time.monotonic() - started
                raise StoreLocked(
                    f"the results store {path} is locked by another process (waited {waited:.0f} s;"
                    f" ${LOCK_TIMEOUT_ENV} sets how long): {exc}"
                ) from exc
            time.sleep(min(left, min(2.0, 0.05 * 2 ** min(tries, 6)) * (0.5 + random.random())))
        except duckdb.Error as exc:
            raise StoreError(f"cannot open the results store {path}: {exc}") from exc


def _open(path: Path, read_only: bool, attempts: int | None, wait: float) -> duckdb.DuckDBPyConnection:
    return _retry_locked(lambda: duckdb.connect(str(path), read_only=read_only), path, attempts, wait)


def _ensure_created(path: Path, attempts: int | None, wait: float) -> None:
    """Create (and migrate) a missing store under an exclusive lock on a sidecar file.

    DuckDB leaves a new file empty and unlocked for a moment while creating it; a second process opening it
    then fails ("not a valid DuckDB database file"). All creators go through `<db>.lock`, and an empty file
    found there is a creation that died half-way: it is replaced. Writers only: readers wait in
    :func:`_open_for_reading`.
    """
    if path.exists() and path.stat().st_size > 0:
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no sidecar lock
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(f"{path}.lock", "a")  # noqa: SIM115 - held across the block below
    except OSError as exc:
        raise StoreError(f"cannot create the results store {path}: {exc}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists() and path.stat().st_size > 0:
                return
            path.unlink(missing_ok=True)
            con = _open(path, False, attempts, wait)
            try:
                _migrate(con)
            except duckdb.IOException as exc:
                raise StoreError(f"cannot create the results store {path}: {exc}") from exc
            finally:
                con.close()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open_for_reading(path: Path, attempts: int | None, wait: float) -> duckdb.DuckDBPyConnection:
    """A read-only connection at the current schema; nothing is written, not even a lock file."""
    if not path.exists():
        raise StoreMissing(f"no results store at {path} (run `embx run SPEC` first, or pass --db)")
    if path.stat().st_size == 0:
        _wait_for_creation(path)
        if path.stat().st_size == 0:
            raise StoreError(
                f"{path} is empty (0 bytes): a store whose creation did not finish; the next `embx run` or"
                " `embx search` recreates it (or remove the file)"
            )
    con = _open(path, True, attempts, wait)
    try:
        version = _check_version(con, path)
    except BaseException:
        con.close()
        raise
    if version == len(MIGRATIONS):
        return con
    con.close()
    return _upgraded_copy(path, version, attempts, wait)


def _wait_for_creation(path: Path) -> None:
    """Wait for a creator holding `<db>.lock` (opened for reading: a reader never creates it)."""
    try:
        import fcntl

        lock = open(f"{path}.lock")  # noqa: SIM115 - closed below
    except (ImportError, OSError):
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        fcntl.flock(lock, fcntl.LOCK_UN)


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


_COPIES: dict[str, tuple[tuple[int, ...], Path]] = {}
"""Upgraded copies of older stores made by this process: resolved path -> (file stamp, copy)."""


def _upgraded_copy(path: Path, version: int, attempts: int | None, wait: float) -> duckdb.DuckDBPyConnection:
    """Read an older store through a temporary copy migrated to the current schema (made once per process)."""
    stamp = tuple(
        value for p in (path, Path(f"{path}.wal")) if p.exists() for value in (p.stat().st_mtime_ns, p.stat().st_size)
    )
    key = str(path.resolve())
    if key in _COPIES and _COPIES[key][0] == stamp and _COPIES[key][1].exists():
        return duckdb.connect(str(_COPIES[key][1]), read_only=True)
    folder = Path(tempfile.mkdtemp(prefix="embx-store-"))
    atexit.register(shutil.rmtree, folder, True)
    copy = folder / "upgraded.duckdb"
    con = duckdb.connect(str(copy))
    try:
        quoted = str(path).replace("'", "''")
        _retry_locked(lambda: con.execute(f"ATTACH '{quoted}' AS old (READ_ONLY)"), path, attempts, wait)
        con.execute("COPY FROM DATABASE old TO upgraded")
        con.execute("DETACH old")
        _migrate(con)
    finally:
        con.close()
    _COPIES[key] = (stamp, copy)
    log.warning(
        "%s has schema version %d (this embx: %d); read through an upgraded temporary copy. The next `embx run`"
        " or `embx search` upgrades it in place.",
        path,
        version,
        len(MIGRATIONS),
    )
    return duckdb.connect(str(copy), read_only=True)


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


@dataclass
class RunRecord:
    """The provenance of a run, written when it starts."""

    run_id: str
    experiment: str
    description: str
    spec_path: str
    spec_text: str
    spec_json: str
    spec_hash: str
    overrides: list[str]
    versions: dict[str, str]
    git_commit: str | None
    device: str
    host: str
    pid: int
    variant: str = "base"
    changes: dict[str, Any] = field(default_factory=dict)
    repeat: int = 0
    baseline_key: str | None = None
    study: str | None = None
    trial: int | None = None
    started_at: datetime = field(default_factory=now)
    pid_start: str | None = None
    """The recording process's identity for the stale-run check (default: this process's, when it is `pid`)."""


@dataclass
class RunResults:
    """Everything a finished run adds, written in one transaction."""

    metrics: list[tuple[str, str, str, str, float]] = field(default_factory=list)
    """Rows of (split, stage, source, name, value)."""
    query_scores: list[tuple[str, str, str, str, float]] = field(default_factory=list)
    """Rows of (split, stage, query_id, name, value)."""
    rankings: list[tuple[str, str, str, int, str, float]] = field(default_factory=list)
    """Rows of (split, stage, query_id, rank, doc_id, score)."""
    train_log: list[tuple[int, float, str, float]] = field(default_factory=list)
    """Rows of (step, epoch, name, value)."""
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    texts: list[tuple[str, str, str]] = field(default_factory=list)
    """Rows of (kind, id, text) of the queries and documents reports show, for dataset `dataset`."""
    qrels: list[tuple[str, str, str, int]] = field(default_factory=list)
    """Rows of (split, query_id, doc_id, grade) of the evaluated split, for dataset `dataset`."""
    dataset: str = ""


def start_run(db: str | Path, rec: RunRecord) -> None:
    """Record a run as `running` (and its experiment, if new)."""
    pid_start = rec.pid_start
    if pid_start is None and rec.pid == os.getpid() and rec.host == platform.node():
        pid_start = process_identity(rec.pid)
    with connect(db) as con:
        con.execute("BEGIN TRANSACTION")
        con.execute(
            "INSERT INTO experiments VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
            [rec.experiment, rec.description, rec.started_at],
        )
        con.execute(
            "INSERT INTO runs (run_id, experiment, status, spec_path, spec_text, spec_json, spec_hash, overrides,"
            " versions, git_commit, device, host, pid, started_at, variant, changes, repeat, baseline_key, study,"
            " trial, pid_start)"
            " VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                rec.run_id,
                rec.experiment,
                rec.spec_path,
                rec.spec_text,
                rec.spec_json,
                rec.spec_hash,
                json.dumps(rec.overrides),
                json.dumps(rec.versions),
                rec.git_commit,
                rec.device,
                rec.host,
                rec.pid,
                rec.started_at,
                rec.variant,
                json.dumps(rec.changes),
                rec.repeat,
                rec.baseline_key,
                rec.study,
                rec.trial,
                pid_start,
            ],
        )
        con.execute("COMMIT")


def _insert_rows(
    con: duckdb.DuckDBPyConnection, table: str, key: str, rows: list[tuple], skip_existing: bool = False
) -> None:
    """Bulk insert rows whose first column is `key` (through Arrow: executemany is slow in DuckDB).

    Args:
        con: Open connection.
        table: Target table.
        key: Value of the first column (a run id, or a dataset key for texts and qrels).
        rows: The other columns, in table order.
        skip_existing: Leave rows whose primary key is already stored (texts and qrels shared by runs).

    """
    if not rows:
        return
    import pyarrow as pa

    columns = [c[0] for c in con.execute(f"SELECT * FROM {table} LIMIT 0").description]
    data = {columns[0]: [key] * len(rows)}
    for i, name in enumerate(columns[1:]):
        data[name] = [row[i] for row in rows]
    staged = pa.table(data)  # noqa: F841 - read by DuckDB's replacement scan below
    if skip_existing:
        con.execute(f"INSERT INTO {table} SELECT DISTINCT * FROM staged ON CONFLICT DO NOTHING")
    else:
        con.execute(f"INSERT INTO {table} SELECT * FROM staged")


def finish_run(db: str | Path, run_id: str, results: RunResults, *, timeout: float | None = None) -> Path | None:
    """Write a run's results and mark it ok, all in one transaction: a run is never half-written.

    When the store cannot be written (another process holds it past the lock timeout, or it is not writable)
    the results are saved to a recovery file beside it instead, which the next command that writes the store
    imports: a finished run is never lost.

    Args:
        db: Store path.
        run_id: The run, recorded by :func:`start_run`.
        results: Its rows.
        timeout: Seconds to wait for a lock held elsewhere (default: :func:`lock_timeout`).

    Returns:
        None when the results are in the store, else the recovery file holding them.

    Raises:
        StoreError: Neither the store nor the recovery file could be written.

    """
    return _record_end(db, run_id, "ok", None, results, timeout)


def end_run(
    db: str | Path,
    run_id: str,
    *,
    status: str,
    error: str,
    timings: dict[str, float],
    info: dict[str, Any],
    train_log: list[tuple[int, float, str, float]] | None = None,
    timeout: float | None = None,
) -> Path | None:
    """Mark a run failed, interrupted or pruned, with its error; no metrics are written.

    Falls back on a recovery file as :func:`finish_run` does.

    Args:
        db: Store path.
        run_id: The run.
        status: failed | interrupted | pruned.
        error: What happened.
        timings: Seconds per stage so far.
        info: Run facts gathered so far.
        train_log: Rows logged before the run stopped (a pruned trial's dev curve), kept for reports.
        timeout: Seconds to wait for a lock held elsewhere (default: :func:`lock_timeout`).

    Returns:
        None when recorded in the store, else the recovery file holding the record.

    Raises:
        StoreError: Neither the store nor the recovery file could be written.

    """
    results = RunResults(train_log=train_log or [], timings=timings, info=info)
    return _record_end(db, run_id, status, error, results, timeout)


def _record_end(
    db: str | Path, run_id: str, status: str, error: str | None, results: RunResults, timeout: float | None
) -> Path | None:
    finished_at = now()
    try:
        with connect(db, timeout=timeout) as con:
            _write_end(con, run_id=run_id, status=status, error=error, finished_at=finished_at, results=results, db=db)
        return None
    except (StoreError, duckdb.IOException, OSError) as exc:
        record = {
            "format": "embx-recovery/1",
            "run_id": run_id,
            "status": status,
            "error": error,
            "finished_at": finished_at.isoformat(),
            "why": str(exc),
            "results": asdict(results),
        }
        return _save_recovery(db, run_id, record, exc)


def _write_end(
    con: duckdb.DuckDBPyConnection,
    *,
    run_id: str,
    status: str,
    error: str | None,
    finished_at: datetime,
    results: RunResults,
    db: str | Path,
) -> None:
    """A run's end in one transaction: its rows, then its status (rolled back whole on any error)."""
    if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is None:
        raise StoreError(f"run {run_id} is not in {db}")
    con.execute("BEGIN TRANSACTION")
    try:
        _insert_rows(con, "metrics", run_id, results.metrics)
        _insert_rows(con, "query_scores", run_id, results.query_scores)
        _insert_rows(con, "rankings", run_id, results.rankings)
        _insert_rows(con, "train_log", run_id, results.train_log)
        _insert_rows(con, "texts", results.dataset, results.texts, skip_existing=True)
        _insert_rows(con, "qrels", results.dataset, results.qrels, skip_existing=True)
        con.execute(
            "UPDATE runs SET status = ?, error = ?, finished_at = ?, timings = ?, info = ? WHERE run_id = ?",
            [status, error, finished_at, json.dumps(results.timings), json.dumps(results.info, default=str), run_id],
        )
        con.execute("COMMIT")
    except BaseException:
        with suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


def recovery_dir(db: str | Path) -> Path:
    """Where the ends of runs that could not be written to `db` wait: ``<db>.recovery/``."""
    return Path(f"{db}.recovery")


def pending_recoveries(db: str | Path) -> list[Path]:
    """Recovery files waiting to be imported into `db` by the next command that writes it."""
    try:
        return sorted(p for p in recovery_dir(db).iterdir() if p.suffix == ".json")
    except OSError:
        return []


def _save_recovery(db: str | Path, run_id: str, record: dict[str, Any], why: BaseException) -> Path:
    """Write a run's end to ``<db>.recovery/<run_id>.json`` atomically (a temporary file, synced, renamed)."""
    folder = recovery_dir(db)
    target = folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', run_id)}.json"
    partial = folder / f".{target.stem}.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(record, handle, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except OSError as exc:
        with suppress(OSError):
            partial.unlink()
        raise StoreError(f"could not record run {run_id} in {db} ({why}), nor save it to {target}: {exc}") from exc
    return target


def _import_recoveries(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Import the recovery files beside the store (each in one transaction), then remove them.

    A file whose run is no longer `running` (nor marked stale by a sweep) was imported already and is only
    removed; one that cannot be read or whose run is not in the store stays, with a warning.
    """
    for file in pending_recoveries(path):
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
            run_id = record["run_id"]
            row = con.execute("SELECT status, error FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if row is None:
                raise StoreError(f"run {run_id} is not in the store")
            if row[0] == "running" or (row[0] == "interrupted" and (row[1] or "").startswith("stale:")):
                results = RunResults(**record["results"])
                finished_at = datetime.fromisoformat(record["finished_at"])
                _write_end(
                    con,
                    run_id=run_id,
                    status=record["status"],
                    error=record["error"],
                    finished_at=finished_at,
                    results=results,
                    db=path,
                )
                log.warning("imported run %s (%s) into %s from %s", run_id, record["status"], path, file)
        except (OSError, ValueError, KeyError, TypeError, duckdb.Error, StoreError) as exc:
            log.warning("could not import %s into %s (%s); the file stays", file, path, exc)
            continue
        with suppress(OSError):
            file.unlink()


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


def list_runs(db: str | Path, experiment: str | None = None) -> list[dict[str, Any]]:
    """Runs, newest first, each with its main test metric for base and tuned (stale runs as `stale?`)."""
    with connect(db, read_only=True) as con:
        where = "WHERE r.experiment = ?" if experiment else ""
        runs = _rows(
            con,
            "SELECT r.run_id, r.experiment, r.status, r.error, r.spec_hash, r.started_at, r.finished_at, r.device,"
            " r.variant, r.study, r.trial, r.host, r.pid, r.pid_start, r.info,"
            f" r.spec_json FROM runs r {where} ORDER BY r.started_at DESC, r.run_id DESC",
            [experiment] if experiment else [],
        )
        metrics = _rows(
            con, "SELECT run_id, stage, name, value FROM metrics WHERE split = 'test' AND source = 'native'"
        )
    by_run: dict[str, dict[str, dict[str, float]]] = {}
    for m in metrics:
        by_run.setdefault(m["run_id"], {}).setdefault(m["stage"], {})[m["name"]] = m["value"]
    out = []
    for run in runs:
        _mark_stale(run)
        for key in ("host", "pid", "pid_start"):
            del run[key]
        spec = json.loads(run.pop("spec_json") or "{}")
        main = spec.get("eval", {}).get("main")
        run["main_metric"] = main
        run["metrics"] = by_run.get(run["run_id"], {})
        run["model"] = saved_model_of(json.loads(run.pop("info") or "{}"))
        out.append(_decode(run))
    return out


def get_run(db: str | Path, run_id: str) -> dict[str, Any]:
    """One run with its metrics ({split: {stage: {name: value}}} per source) and training log.

    A `running` run whose process is gone shows as `stale?` (nothing is written).

    Args:
        db: Store path.
        run_id: Full id or a unique prefix, taken literally (``%`` and ``_`` are no wildcards).

    Raises:
        KeyError: If no run (or more than one) matches, or the prefix is empty.

    """
    if not run_id:
        raise KeyError("an empty run id prefix matches every run: give a run id or a unique prefix (see `embx ls`)")
    with connect(db, read_only=True) as con:
        found = _rows(con, "SELECT * FROM runs WHERE starts_with(run_id, ?) ORDER BY run_id", [run_id])
        if len(found) != 1:
            raise KeyError(f"no run {run_id!r}" if not found else f"run id prefix {run_id!r} is ambiguous")
        run = _decode(_mark_stale(found[0]))
        rid = run["run_id"]
        metrics = _rows(con, "SELECT split, stage, source, name, value FROM metrics WHERE run_id = ?", [rid])
        run["train_log"] = _rows(
            con, "SELECT step, epoch, name, value FROM train_log WHERE run_id = ? ORDER BY step, name", [rid]
        )
    run["metrics"] = {}
    run["metrics_by_split"] = {}
    for m in metrics:
        if m["source"] == "native" and m["split"] == "test":
            run["metrics"].setdefault(m["stage"], {})[m["name"]] = m["value"]
        split = run["metrics_by_split"].setdefault(m["split"], {})
        split.setdefault(m["source"], {}).setdefault(m["stage"], {})[m["name"]] = m["value"]
    return run


def find_ok_run(db: str | Path, spec_hash: str, *more: str) -> str | None:
    """The newest ok run of a resolved spec, if any (used to skip finished ablation variants).

    Args:
        db: The store.
        spec_hash: The spec's hash.
        *more: Other hashes the same spec had (an older hash algorithm's, which older runs were recorded under).

    """
    if not Path(db).exists():
        return None
    hashes = [spec_hash, *more]
    with connect(db, read_only=True) as con:
        row = con.execute(
            f"SELECT run_id FROM runs WHERE spec_hash IN ({', '.join('?' * len(hashes))}) AND status = 'ok'"
            " ORDER BY started_at DESC LIMIT 1",
            hashes,
        ).fetchone()
    return row[0] if row else None


def find_baseline(db: str | Path, key: str, split: str):
    """The base model's stored evaluation for a baseline key and split, from the run that computed it.

    Returns:
        (EvalResult, run_id) or None. Per-query scores and the top-10 rankings come back for the test split.

    """
    from runner.evaluate import EvalResult

    if not Path(db).exists():
        return None
    with connect(db, read_only=True) as con:
        row = con.execute(
            "SELECT r.run_id FROM runs r WHERE r.baseline_key = ? AND r.status = 'ok' AND EXISTS (SELECT 1 FROM"
            " metrics m WHERE m.run_id = r.run_id AND m.split = ? AND m.stage = 'base') ORDER BY r.started_at LIMIT 1",
            [key, split],
        ).fetchone()
        if not row:
            return None
        source = _rows(con, "SELECT info FROM runs WHERE run_id = ?", [row[0]])[0]
        origin = (json.loads(source["info"] or "{}").get("baseline_from") or {}).get(split, row[0])
        args = [row[0], split]
        metrics = con.execute(
            "SELECT name, value FROM metrics WHERE run_id = ? AND split = ? AND stage = 'base' AND source = 'native'",
            args,
        ).fetchall()
        scores = con.execute(
            "SELECT query_id, name, value FROM query_scores WHERE run_id = ? AND split = ? AND stage = 'base'", args
        ).fetchall()
        ranks = con.execute(
            "SELECT query_id, doc_id, score FROM rankings WHERE run_id = ? AND split = ? AND stage = 'base'", args
        ).fetchall()
    per_query: dict[str, dict[str, float]] = {}
    for qid, name, value in scores:
        per_query.setdefault(qid, {})[name] = value
    run: dict[str, dict[str, float]] = {}
    for qid, did, score in ranks:
        run.setdefault(qid, {})[did] = score
    return EvalResult(dict(metrics), per_query, run), origin


def experiment_names(db: str | Path) -> list[str]:
    """Experiments in the store, most recently run first."""
    with connect(db, read_only=True) as con:
        rows = con.execute("SELECT experiment FROM runs GROUP BY experiment ORDER BY max(started_at) DESC").fetchall()
    return [r[0] for r in rows]


def load_experiment(db: str | Path, experiment: str) -> dict[str, Any]:
    """Everything a report shows about one experiment: runs, metrics, per-query scores, curves, examples.

    Returns:
        A dict with lists of row dicts: ``runs`` (decoded, oldest first, stale ones as `stale?`), ``metrics``,
        ``query_scores`` (test), ``train_log``, ``rankings`` (test, top 10), and ``texts``/``qrels`` of the
        datasets the runs used.

    """
    with connect(db, read_only=True) as con:
        runs = [
            _decode(_mark_stale(r))
            for r in _rows(con, "SELECT * FROM runs WHERE experiment = ? ORDER BY started_at", [experiment])
        ]
        if not runs:
            raise KeyError(f"no experiment {experiment!r} in {db}")
        ids = [r["run_id"] for r in runs]
        datasets = sorted({(r.get("info") or {}).get("dataset") for r in runs} - {None})

        def select(sql: str, values: list) -> list[dict[str, Any]]:
            marks = ", ".join("?" for _ in values) or "NULL"
            return _rows(con, sql.format(marks=marks), values)

        return {
            "runs": runs,
            "metrics": select("SELECT * FROM metrics WHERE run_id IN ({marks})", ids),
            "query_scores": select("SELECT * FROM query_scores WHERE split = 'test' AND run_id IN ({marks})", ids),
            "train_log": select("SELECT * FROM train_log WHERE run_id IN ({marks}) ORDER BY step", ids),
            "rankings": select("SELECT * FROM rankings WHERE split = 'test' AND run_id IN ({marks})", ids),
            "texts": select("SELECT * FROM texts WHERE dataset IN ({marks})", datasets),
            "qrels": select("SELECT * FROM qrels WHERE dataset IN ({marks})", datasets),
        }


def reap_stale(db: str | Path) -> list[str]:
    """Mark runs left `running` by a process that is gone (SIGKILL, power loss) as interrupted.

    For commands that write the store anyway (run, search): it opens the store for writing, which also creates
    a half-created one again, upgrades an older one and imports recovery files first (so a run whose results
    wait there is not taken for stale). Read-only commands never call it; they show such runs as `stale?`.

    Returns:
        The run ids marked.

    """
    if not Path(db).exists():
        return []
    with connect(db) as con:
        rows = con.execute("SELECT run_id, host, pid, pid_start FROM runs WHERE status = 'running'").fetchall()
        dead = [run_id for run_id, host, pid, pid_start in rows if _is_stale(host, pid, pid_start)]
        for run_id in dead:
            con.execute(
                "UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? WHERE run_id = ? AND "
                "status = 'running'",
                [now(), "stale: its process is gone (killed without a chance to record it)", run_id],
            )
    if dead:
        log.info("marked %d run(s) whose process is gone as interrupted: %s", len(dead), ", ".join(dead))
    return dead


def _mark_stale(run: dict[str, Any]) -> dict[str, Any]:
    """Show a `running` run whose process is gone as `stale?` (read-only commands: the row is not changed)."""
    if run.get("status") == "running" and _is_stale(run.get("host"), run.get("pid"), run.get("pid_start")):
        run["status"] = "stale?"
    return run


def process_identity(pid: int) -> str | None:
    """``"<boot id> <pid namespace> <start time>"`` of a live process, from /proc (Linux; None elsewhere).

    The start time is field 22 of ``/proc/<pid>/stat`` (clock ticks since boot): with the boot id it tells a
    process from a later one that got the same pid; the pid namespace tells whether a pid can be checked here
    at all (containers on one machine may share a hostname but not their pids).
    """
    stat = _stat(pid)
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return None if stat is None else f"{boot} {namespace} {stat[1]}"


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, or None if there is none (or no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _is_stale(host: str | None, pid: int | None, pid_start: str | None) -> bool:
    """Whether a `running` row's process is certainly gone; False whenever it cannot be told from here.

    Rows of other hosts are not judged. With a recorded identity (see :func:`process_identity`): another boot
    of this host means gone; another pid namespace (another container) cannot be checked; otherwise the pid
    must still run, not as a zombie, and have started at the recorded time (not a reused pid). Rows recorded
    without one (older embx, no /proc) fall back to whether the pid exists.
    """
    if host != platform.node() or pid is None:
        return False
    mine = process_identity(os.getpid()) if pid_start else None
    if not pid_start or mine is None:
        return not process_alive(pid)
    boot, namespace, started = (pid_start.split(" ") + ["", "", ""])[:3]
    my_boot, my_namespace, _ = mine.split(" ")
    if boot != my_boot:
        return True  # this host has restarted since the run began
    if namespace != my_namespace:
        return False  # another container's process: its pid means nothing here
    stat = _stat(pid)
    return stat is None or stat[0] == "Z" or stat[1] != started


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _stat(pid)
    return stat is None or stat[0] != "Z"


def save_study(db: str | Path, summary: dict[str, Any]) -> None:
    """Insert or replace a study's summary (best trial, parameter importances, final run)."""
    cols = [
        "study",
        "experiment",
        "storage",
        "objective",
        "direction",
        "best_trial",
        "best_value",
        "best_params",
        "importances",
        "best_run_id",
    ]
    values = [json.dumps(summary.get(c)) if c in ("best_params", "importances") else summary.get(c) for c in cols]
    with connect(db) as con:
        con.execute(
            f"INSERT OR REPLACE INTO studies ({', '.join(cols)}, updated_at) VALUES ({', '.join('?' * len(cols))}, ?)",
            [*values, now()],
        )


def load_studies(db: str | Path, experiment: str) -> list[dict[str, Any]]:
    """Searches of an experiment, each with its trials (run id, trial, status, dev objective per epoch)."""
    with connect(db, read_only=True) as con:
        studies = _rows(con, "SELECT * FROM studies WHERE experiment = ? ORDER BY updated_at", [experiment])
        for study in studies:
            study["best_params"] = json.loads(study["best_params"] or "{}")
            study["importances"] = json.loads(study["importances"] or "{}")
            study["trials"] = _rows(
                con,
                "SELECT r.run_id, r.trial, r.status, r.changes, m.value AS dev_objective FROM runs r"
                " LEFT JOIN metrics m ON m.run_id = r.run_id AND m.split = 'dev' AND m.stage = 'tuned' AND m.name = ?"
                " WHERE r.study = ? AND r.trial IS NOT NULL AND r.variant LIKE 'trial %' ORDER BY r.trial",
                [study["objective"], study["study"]],
            )
            for trial in study["trials"]:
                trial["changes"] = json.loads(trial["changes"] or "{}")
                curve = con.execute(
                    "SELECT epoch, value FROM train_log WHERE run_id = ? AND name = ? ORDER BY epoch",
                    [trial["run_id"], f"dev_{study['objective']}"],
                ).fetchall()
                trial["curve"] = [list(row) for row in curve]
    return studies


def saved_models(db: str | Path, *, experiment: str | None = None) -> list[dict[str, Any]]:
    """Ok runs whose tuned model is on disk: run_id, experiment, started_at, path and the score that ranks them.

    The score is the tuned main metric on dev, or on test for a run without a dev split (None: neither).
    """
    where = " AND experiment = ?" if experiment else ""
    with connect(db, read_only=True) as con:
        runs = _rows(
            con,
            f"SELECT run_id, experiment, started_at, info, spec_json FROM runs WHERE status = 'ok'{where}",
            [experiment] if experiment else [],
        )
        scores = _rows(
            con,
            "SELECT run_id, split, name, value FROM metrics WHERE stage = 'tuned' AND source = 'native'"
            " AND split IN ('dev', 'test')",
        )
    by_run: dict[str, dict[tuple[str, str], float]] = {}
    for row in scores:
        by_run.setdefault(row["run_id"], {})[row["split"], row["name"]] = row["value"]
    out = []
    for run in runs:
        saved = json.loads(run["info"] or "{}").get("saved_model")
        path = saved.get("path") if isinstance(saved, dict) and not saved.get("removed") else saved
        if not isinstance(path, str) or not Path(path).is_dir():
            continue
        main = json.loads(run["spec_json"] or "{}").get("eval", {}).get("main")
        values = by_run.get(run["run_id"], {})
        score = values.get(("dev", main), values.get(("test", main)))
        out.append({**{k: run[k] for k in ("run_id", "experiment", "started_at")}, "path": path, "score": score})
    return out


def saved_model_of(info: dict[str, Any]) -> dict[str, Any] | None:
    """A run's saved model as {"path", "sha256", "removed"?} from its info (older runs stored a bare path)."""
    saved = info.get("saved_model")
    if isinstance(saved, str):
        return {"path": saved, "sha256": None}
    return saved if isinstance(saved, dict) else None


def forget_saved_model(db: str | Path, run_id: str, *, reason: str) -> None:
    """Record in a run's info that its saved model was removed (the path is kept, with the reason)."""
    with connect(db) as con:
        (info,) = con.execute("SELECT info FROM runs WHERE run_id = ?", [run_id]).fetchone()
        data = json.loads(info or "{}")
        saved = data.get("saved_model")
        data["saved_model"] = {**(saved if isinstance(saved, dict) else {"path": saved}), "removed": reason}
        con.execute("UPDATE runs SET info = ? WHERE run_id = ?", [json.dumps(data, default=str), run_id])


def record_index_eval(db: str | Path, run_id: str, figures: dict[str, Any]) -> None:
    """Record in a run's info the figures of `embx eval-index` (``index_eval``; a later measurement replaces it)."""
    with connect(db) as con:
        (info,) = con.execute("SELECT info FROM runs WHERE run_id = ?", [run_id]).fetchone()
        data = json.loads(info or "{}")
        data["index_eval"] = figures
        con.execute("UPDATE runs SET info = ? WHERE run_id = ?", [json.dumps(data, default=str), run_id])


def record_export(
    db: str | Path,
    run_id: str,
    *,
    fmt: str,
    path: str | None,
    parity: dict[str, Any],
    ok: bool,
    hub_repo: str | None = None,
) -> None:
    """Record an export of a run's saved model (`embx export`), passed or failed, with its parity figures."""
    with connect(db) as con:
        con.execute(
            "INSERT INTO exports (run_id, format, path, parity, ok, hub_repo, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [run_id, fmt, path, json.dumps(parity, default=str), ok, hub_repo, now()],
        )


def list_exports(db: str | Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """Exports, oldest first (of one run, if given), with their parity figures decoded."""
    with connect(db, read_only=True) as con:
        where, params = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
        rows = _rows(con, f"SELECT * FROM exports {where} ORDER BY created_at, run_id", params)
    for row in rows:
        row["parity"] = json.loads(row["parity"] or "{}")
        if isinstance(row.get("created_at"), datetime):
            row["created_at"] = row["created_at"].isoformat(timespec="seconds")
    return rows


def dataset_texts(
    db: str | Path, dataset: str
) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, dict[str, int]]]]:
    """The texts and judgements stored for a dataset (a run's test queries and the documents its reports show).

    Returns:
        (queries {id: text}, documents {id: text}, qrels {split: {query id: {document id: grade}}}); empty when
        nothing was stored (e.g. runs that never scored the test split).

    """
    with connect(db, read_only=True) as con:
        texts = con.execute("SELECT kind, id, text FROM texts WHERE dataset = ? ORDER BY id", [dataset]).fetchall()
        judged = con.execute(
            "SELECT split, query_id, doc_id, grade FROM qrels WHERE dataset = ? ORDER BY query_id, doc_id", [dataset]
        ).fetchall()
    queries = {i: t for kind, i, t in texts if kind == "query" and t is not None}
    docs = {i: t for kind, i, t in texts if kind == "doc" and t is not None}
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for split, qid, did, grade in judged:
        qrels.setdefault(split, {}).setdefault(qid, {})[did] = grade
    return queries, docs, qrels
