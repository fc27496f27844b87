"""Saved models: kept by default, only the winner of an ablation, recorded with a content hash, removable by gc."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import cli, query

from runner.keep import weights_sha256

FAST = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}
SMALL = {"limit": 16}


def _runs(db: Path) -> dict[str, dict]:
    return {r["variant"]: r for r in json.loads(cli("ls", "--db", db, "--json").stdout)}


def test_a_single_run_keeps_its_model_with_prompts_and_hash(write_spec, tmp_path: Path):
    db = tmp_path / "r.duckdb"
    spec = write_spec(
        model={"query_prefix": "query: ", "passage_prefix": "passage: "}, train=FAST, output={"dir": str(tmp_path)}
    )
    assert cli("run", spec, "--db", db).exit_code == 0
    (run,) = _runs(db).values()
    folder = Path(run["model"]["path"])
    assert folder == tmp_path / run["run_id"] and (folder / "modules.json").is_file()
    assert run["model"]["sha256"] == weights_sha256(folder) and len(run["model"]["sha256"]) == 64
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert config["prompts"]["query"] == "query: " and config["prompts"]["document"] == "passage: "
    shown = cli("show", run["run_id"], "--db", db)
    expected = f"model: {folder} (sha256 {run['model']['sha256']})"
    assert "".join(expected.split()) in "".join(shown.output.split())  # the console wraps long paths


def test_an_ablation_keeps_only_its_best_model(write_spec, tmp_path: Path):
    db = tmp_path / "r.duckdb"
    spec = write_spec(
        data=SMALL,
        train={**FAST, "early_stopping": {"patience": 1}},
        output={"dir": str(tmp_path / "models")},
        ablate={"factors": {"train.learning_rate": [1e-4, 0.5]}},
    )
    assert cli("run", spec, "--db", db).exit_code == 0
    runs = _runs(db)
    kept = [r for r in runs.values() if r["model"] and not r["model"].get("removed")]
    assert len(runs) == 3 and len(kept) == 1
    dev = {
        run_id: value
        for run_id, value in query(
            db, "SELECT run_id, value FROM metrics WHERE split='dev' AND stage='tuned' AND name='ndcg@10'"
        )
    }
    assert dev[kept[0]["run_id"]] == max(dev.values())  # the winner by the dev main metric
    assert [p.name for p in (tmp_path / "models").iterdir() if p.name != "embeddings"] == [kept[0]["run_id"]]
    for run in runs.values():
        if run is not kept[0]:
            assert run["model"]["removed"].startswith("removed: not the best run of tiny")
            assert not Path(run["model"]["path"]).exists()


def test_save_model_all_none_and_gc(write_spec, tmp_path: Path):
    db = tmp_path / "r.duckdb"
    factors = {"train.learning_rate": [1e-4]}
    none = write_spec(
        name="none.yaml", data=SMALL, train=FAST, output={"save_model": "none"}, ablate={"factors": factors}
    )
    assert cli("run", none, "--db", db).exit_code == 0
    assert all(r["model"] is None for r in _runs(db).values())

    db = tmp_path / "all.duckdb"
    every = write_spec(
        name="all.yaml",
        train=FAST,
        output={"save_model": True, "dir": str(tmp_path / "m")},
        ablate={"factors": factors},
    )
    assert cli("run", every, "--db", db).exit_code == 0
    assert len([p for p in (tmp_path / "m").iterdir() if p.name != "embeddings"]) == 2  # true means all

    from click.testing import CliRunner

    from runner.cli import main

    asked = CliRunner().invoke(main, ["gc", "--db", str(db)], input="n\n")
    assert (
        asked.exit_code == 0 and "remove these 1 model folder(s)?" in asked.output and "nothing removed" in asked.output
    )
    assert len([p for p in (tmp_path / "m").iterdir() if p.name != "embeddings"]) == 2
    done = cli("gc", "--db", db, "--yes")
    assert done.exit_code == 0 and "removed 1 model folder(s)" in done.output
    assert len([p for p in (tmp_path / "m").iterdir() if p.name != "embeddings"]) == 1
    assert "nothing to remove" in cli("gc", "--db", db, "--yes").output
