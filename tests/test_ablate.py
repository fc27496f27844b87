"""Ablations: `ablate:` expanded into variants (one-at-a-time, grid, repeats with their seeds), and run end to end."""

from __future__ import annotations

import json

import pytest
from helpers import cli, query

from runner.ablate import expand
from runner.spec import load_spec

FAST = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}


def variants_of(write_spec, **ablate):
    """The variants of the tiny spec (train.seed 7) with this `ablate:` section (written with sorted keys)."""
    return expand(load_spec(write_spec(train={**FAST, "seed": 7}, ablate=ablate)).spec)


def test_one_at_a_time_changes_one_factor_and_skips_the_base_value(write_spec):
    """one-at-a-time: the base first, then one variant per value that differs from the base spec's value."""
    variants = variants_of(
        write_spec, factors={"train.learning_rate": [1e-3, 1e-4], "negatives.mode": ["in-batch", "random"]}
    )
    assert [v.label for v in variants] == ["base", 'negatives.mode="random"', "train.learning_rate=0.0001"]
    assert [v.changes for v in variants] == [{}, {"negatives.mode": "random"}, {"train.learning_rate": 1e-4}]
    assert variants[2].spec.train.learning_rate == 1e-4 and variants[2].spec.negatives.mode == "in-batch"
    assert variants[1].spec.negatives.mode == "random" and variants[1].spec.train.learning_rate == 1e-3
    assert all(v.repeat == 0 and v.spec.train.seed == 7 and v.spec.ablate is None for v in variants)


def test_grid_runs_every_combination(write_spec):
    """grid: the product of the factors' values (2 x 3 = 6 variants), each label naming both values, and no
    separate base variant."""
    variants = variants_of(
        write_spec,
        mode="grid",
        factors={"train.learning_rate": [1e-3, 1e-4], "train.batch_size": [4, 8, 16]},
    )
    assert len(variants) == 6
    assert [v.label for v in variants] == [
        f"train.batch_size={bs}, train.learning_rate={lr}" for bs in (4, 8, 16) for lr in ("0.001", "0.0001")
    ]
    combos = {(v.spec.train.learning_rate, v.spec.train.batch_size) for v in variants}
    assert combos == {(lr, bs) for lr in (1e-3, 1e-4) for bs in (4, 8, 16)}
    assert len({v.spec.spec_hash() for v in variants}) == 6


def test_repeats_run_each_variant_with_the_next_seeds(write_spec):
    """repeats: 3 runs per variant with train.seed + 0, 1, 2 (same label, repeat index 0..2)."""
    variants = variants_of(write_spec, mode="grid", factors={"train.learning_rate": [1e-3, 1e-4]}, repeats=3)
    assert len(variants) == 2 * 3
    assert [(v.label, v.repeat, v.spec.train.seed) for v in variants] == [
        (label, repeat, 7 + repeat)
        for label in ("train.learning_rate=0.001", "train.learning_rate=0.0001")
        for repeat in range(3)
    ]
    assert len({v.spec.spec_hash() for v in variants}) == 6  # every repeat is its own run


def test_grid_with_repeats_end_to_end(write_spec, tmp_path):
    """`embx run` of a 2-value grid with 2 repeats records 4 ok runs: each labelled with its variant and repeat,
    trained with seeds 7 and 8, all in one experiment."""
    db = tmp_path / "runs.duckdb"
    spec = write_spec(
        data={"limit": 8},
        train={**FAST, "seed": 7},
        ablate={"mode": "grid", "factors": {"train.learning_rate": [1e-3, 1e-4]}, "repeats": 2},
    )
    result = cli("run", spec, "--db", db)
    assert result.exit_code == 0, result.output
    rows = query(db, "SELECT experiment, variant, repeat, status, spec_json FROM runs ORDER BY started_at")
    seen = [(r[1], r[2], json.loads(r[4])["train"]["seed"], json.loads(r[4])["train"]["learning_rate"]) for r in rows]
    assert seen == [
        ("train.learning_rate=0.001", 0, 7, 1e-3),
        ("train.learning_rate=0.001", 1, 8, 1e-3),
        ("train.learning_rate=0.0001", 0, 7, 1e-4),
        ("train.learning_rate=0.0001", 1, 8, 1e-4),
    ]
    assert {r[0] for r in rows} == {"tiny"} and {r[3] for r in rows} == {"ok"}


@pytest.mark.parametrize("factor", ["ablate.repeats", "name"])
def test_ablate_and_name_cannot_be_factors(write_spec, factor):
    """A factor on `ablate` itself or on the experiment name is a spec error."""
    from runner.spec import SpecError

    with pytest.raises(SpecError, match="cannot be ablated"):
        load_spec(write_spec(ablate={"factors": {factor: [1]}}))
