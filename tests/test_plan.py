"""`embx plan` / `embx run --dry-run`: the variants that would run and those done, sizes, steps, estimates."""

from __future__ import annotations

import json

import pytest
from helpers import cli, query

FAST = {"train": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}}
ABLATE = {"factors": {"data.limit": [16], "negatives.mode": ["random"]}}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache/embx/throughput.json"


def _rows(output: str) -> dict[str, str]:
    """Variant label -> its line of the plan table."""
    labels = ("base", "data.limit=16", 'negatives.mode="random"')
    return {label: line for line in output.splitlines() for label in labels if line.strip().startswith(label + " ")}


def test_plan_lists_the_variants_to_run_and_skips_the_done_ones(write_spec, tmp_path, cache):
    db = tmp_path / "results.duckdb"
    spec = write_spec(ablate=ABLATE, **FAST)
    first = cli("plan", spec, "--db", db)
    assert first.exit_code == 0, first.output
    rows = _rows(first.output)
    assert set(rows) == {"base", "data.limit=16", 'negatives.mode="random"'}
    assert all("to run" in line for line in rows.values())
    # 47 train pairs (16 with the limit), batch 8: 6 (2) steps an epoch, 2 epochs
    assert rows["base"].split()[3:6] == ["47", "6", "2"]
    assert rows["data.limit=16"].split()[3:6] == ["16", "2", "2"]
    assert "tiny on cpu" in first.output
    assert "40 corpus, 47 train pairs, 18 test queries, 15 dev queries" in first.output
    assert "throughput (probed now)" in first.output and "3 run(s) to do, 0 done; estimated" in first.output
    assert set(json.loads(cache.read_text())) and not db.exists()  # probed and cached; nothing written to the store

    only_base = write_spec(name="base.yaml", **FAST)  # the reference spec alone: the same resolved spec as "base"
    assert cli("run", only_base, "--db", db).exit_code == 0
    dry = cli("run", spec, "--db", db, "--dry-run")
    assert dry.exit_code == 0, dry.output
    rows = _rows(dry.output)
    (done,) = query(db, "SELECT run_id FROM runs")
    assert f"done: {done[0]}" in rows["base"] and "to run" in rows["data.limit=16"]
    assert "throughput (cached)" in dry.output and "2 run(s) to do, 1 done" in dry.output
    assert query(db, "SELECT count(*) FROM runs") == [(1,)]  # the dry run ran nothing
    forced = cli("plan", spec, "--db", db, "--force")
    assert "3 run(s) to do, 0 done" in forced.output
