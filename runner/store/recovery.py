"""Ends of runs that could not be written: saved beside the store, imported by the next writer."""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from runner.store.base import StoreError
from runner.store.writes import RunResults, _write_end

log = logging.getLogger(__name__)


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
