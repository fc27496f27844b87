"""The results store under stress: locked at a run's end, old and newer schemas, stale runs, bad paths, prefixes.

Each test here failed before the store was hardened (issue "Hardening").
"""

from __future__ import annotations

import pytest
from helpers import cli, run_record

from runner import store

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
