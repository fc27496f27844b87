"""Small helpers shared by the test modules (importable because tests/ is on sys.path under pytest)."""

from __future__ import annotations

from pathlib import Path

import duckdb
from click.testing import CliRunner

from runner import store
from runner.cli import main


def cli(*args):
    """Invoke `embx` in-process with stringified arguments; exceptions propagate."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    """Read the store directly (read-only, no stale-run reaping)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def run_record(run_id: str, **fields) -> store.RunRecord:
    """A minimal RunRecord for store-level tests; keyword arguments override its fields."""
    base = {
        "run_id": run_id,
        "experiment": "tests",
        "description": "",
        "spec_path": "/x.yaml",
        "spec_text": "",
        "spec_json": "{}",
        "spec_hash": run_id,
        "overrides": [],
        "versions": {},
        "git_commit": None,
        "device": "cpu",
        "host": "h",
        "pid": 1,
    }
    return store.RunRecord(**{**base, **fields})
