"""The forgetting guard: exact weight interpolation, the alpha choice under a guard set, and its bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import cli, query

from runner.merge import interpolate, snapshot

FAST = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}


def test_interpolation_is_exact_at_both_ends_and_between(tiny_model):
    from runner.models import load_model
    from runner.spec import ModelSpec

    base = snapshot(load_model(ModelSpec(base=str(tiny_model)), "cpu"))
    torch.manual_seed(0)
    tuned = {k: v + torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in base.items()}
    assert all(torch.equal(interpolate(base, tuned, alpha=0.0)[k], base[k]) for k in base)
    assert all(torch.equal(interpolate(base, tuned, alpha=1.0)[k], tuned[k]) for k in base)
    mid = interpolate(base, tuned, alpha=0.3)
    for name, value in mid.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.3 * tuned[name] + 0.7 * base[name], rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, tuned[name])  # ids and masks are never averaged
    with pytest.raises(ValueError, match="architecture"):
        interpolate(base, {k: v for k, v in tuned.items() if "embeddings" not in k}, alpha=0.5)
    name = next(k for k, v in base.items() if v.dim() == 2)
    with pytest.raises(ValueError, match="shape"):
        interpolate(base, {**tuned, name: tuned[name][:1]}, alpha=0.5)


def _merge_spec(write_spec, guard: Path, **merge):
    return write_spec(
        train=FAST,
        eval={"batch_size": 16, "sets": [{"name": "general", "path": str(guard), "guard": True}]},
        merge={"alphas": [0.0, 0.5, 1.0], **merge},
        output={"save_model": "none"},
    )


def test_a_run_scores_every_alpha_and_keeps_one_the_guard_allows(write_spec, tiny_beir, tmp_path: Path):
    guard = Path(shutil.copytree(tiny_beir, tmp_path / "general"))
    db = tmp_path / "r.duckdb"
    result = cli("run", _merge_spec(write_spec, guard, max_guard_drop=0.5), "--db", db)
    assert result.exit_code == 0, result.output
    (info,) = (json.loads(i) for (i,) in query(db, "SELECT info FROM runs"))
    rows = info["merge"]["alphas"]
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[0]["drop"] == {"general": 0.0}  # alpha 0 is the base model itself
    chosen = next(r for r in rows if r["alpha"] == info["merge"]["chosen_alpha"])
    assert chosen["ok"] and chosen["dev"] == max(r["dev"] for r in rows if r["ok"])
    # the report draws domain gain against guard drop and tables every alpha
    assert cli("report", "--db", db, "-o", tmp_path / "report.html").exit_code == 0
    html = (tmp_path / "report.html").read_text()
    section = html[html.index("Forgetting guard") :]
    assert "<svg" in section and section.count("<td>0.5</td>") == 1 and "chosen" in section


def test_no_alpha_within_the_guard_keeps_the_base_model_loudly(write_spec, tiny_beir, tmp_path: Path):
    guard = Path(shutil.copytree(tiny_beir, tmp_path / "general"))
    db = tmp_path / "r.duckdb"
    spec = _merge_spec(write_spec, guard, alphas=[0.5, 1.0], max_guard_drop=0.0)
    # a learning rate that wrecks the model: every merged alpha loses on the guard set
    spec.write_text(spec.read_text().replace("learning_rate: 0.001", "learning_rate: 0.5"))
    result = cli("run", spec, "--db", db)
    assert result.exit_code == 0, result.output
    assert "no merge alpha keeps the guard sets" in " ".join(result.output.split())
    (info,) = (json.loads(i) for (i,) in query(db, "SELECT info FROM runs"))
    assert info["merge"]["chosen_alpha"] == 0.0 and not any(r["ok"] for r in info["merge"]["alphas"])
    scores = dict(
        query(db, "SELECT stage, value FROM metrics WHERE split='test' AND name='ndcg@10' AND source='native'")
    )
    assert scores["tuned"] == pytest.approx(scores["base"], abs=1e-6)  # the base weights were kept


def test_merge_needs_a_dev_split_and_a_guard_set(write_spec, tiny_beir):
    no_guard = write_spec(name="a.yaml", merge={"alphas": [0.5]})
    assert "needs a guard set" in " ".join(cli("validate", no_guard).output.split())
    bad_alpha = write_spec(
        name="b.yaml", merge={"alphas": [1.5]}, eval={"sets": [{"name": "g", "path": str(tiny_beir), "guard": True}]}
    )
    assert "between 0 (the base model) and 1" in " ".join(cli("validate", bad_alpha).output.split())


def test_a_guard_set_without_queries_fails_before_training(write_spec, tiny_beir, tmp_path: Path):
    guard = Path(shutil.copytree(tiny_beir, tmp_path / "general"))
    (guard / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    db = tmp_path / "r.duckdb"
    result = cli("run", _merge_spec(write_spec, guard), "--db", db)
    assert result.exit_code == 2
    assert "general" in result.output and "no judgements" in " ".join(result.output.split())
    assert query(db, "SELECT status FROM runs") == [("failed",)]
    (info,) = (json.loads(i) for (i,) in query(db, "SELECT info FROM runs"))
    assert "train" not in info  # it failed before training
