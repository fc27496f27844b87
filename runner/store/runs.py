"""A run's record lifecycle: started as `running`, ended ok, failed, interrupted or pruned; stale ones reaped."""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import duckdb

from runner.store.base import StoreError, now
from runner.store.connection import connect
from runner.store.liveness import _is_stale, process_identity
from runner.store.recovery import _save_recovery
from runner.store.writes import RunRecord, RunResults, _write_end

log = logging.getLogger(__name__)


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
