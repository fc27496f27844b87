"""What a run writes: its provenance record, its result rows, and the one transaction that ends it."""

from __future__ import annotations

import json
import logging
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from runner.store.base import StoreError, now

log = logging.getLogger(__name__)


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
