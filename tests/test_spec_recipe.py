"""`recipe: auto` (runner/spec/recipe.py): a minimal spec's recipe, what a spec sets is kept, the run says why."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from markupsafe import escape as html_escape

from runner import store
from runner.cli import main
from runner.pipeline import run_spec
from runner.spec import Spec, load_spec
from runner.spec.recipe import LEARNING_RATE, MAX_EPOCHS, PATIENCE

MINIMAL = "name: minimal\ndata:\n  path: some-data\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _chosen(spec: Spec) -> dict[str, object]:
    return {choice.field: choice.value for choice in spec.recipe_choices}


def test_a_minimal_spec_gets_the_measured_recipe_with_reasons(tmp_path):
    spec = load_spec(_write(tmp_path / "s.yaml", MINIMAL)).spec
    assert spec.recipe == "auto"
    assert spec.negatives.mode == "hard" and spec.negatives.per_query == 3
    assert spec.train.epochs == MAX_EPOCHS == 3 and spec.train.learning_rate == LEARNING_RATE == 5e-5
    assert spec.train.early_stopping.patience == PATIENCE == 1 and spec.train.early_stopping.metric == "ndcg@10"
    assert spec.train.early_stopping.keep_base is True  # never worse than the base model on dev
    assert spec.train.directions == ["query_to_doc", "doc_to_query"] and spec.train.partition_mode == "per_direction"
    assert _chosen(spec) == {
        "negatives.mode": "hard",
        "train.directions": ["query_to_doc", "doc_to_query"],
        "train.partition_mode": "per_direction",
        "train.early_stopping": "patience 1 on dev ndcg@10, keep_base",
        "train.epochs": 3,
        "train.learning_rate": 5e-5,
    }
    assert all(len(choice.reason) > 20 for choice in spec.recipe_choices)
    assert "ranks 10-100" in spec.recipe_choices[0].reason  # the mining settings it really uses


def test_what_a_spec_sets_is_kept_and_not_listed(tmp_path):
    _write(tmp_path / "base.yaml", MINIMAL + "negatives:\n  mode: in-batch\n")
    child = _write(tmp_path / "child.yaml", "extends: base.yaml\nname: child\ntrain:\n  epochs: 2\n")
    spec = load_spec(child, ["train.learning_rate=1e-5"]).spec
    assert spec.negatives.mode == "in-batch"  # from extends:
    assert spec.train.epochs == 2  # from the file
    assert spec.train.learning_rate == 1e-5  # from --set
    assert set(_chosen(spec)) == {"train.directions", "train.partition_mode", "train.early_stopping"}
    # a section written in part keeps its other fields open to the recipe
    spec = load_spec(_write(tmp_path / "p.yaml", MINIMAL + "train:\n  early_stopping: {patience: 4}\n")).spec
    assert spec.train.early_stopping.patience == 4 and "train.early_stopping" not in _chosen(spec)
    assert spec.train.epochs == 3


def test_manual_keeps_the_plain_defaults(tmp_path):
    spec = load_spec(_write(tmp_path / "s.yaml", MINIMAL + "recipe: manual\n")).spec
    assert spec.recipe_choices == []
    assert spec.negatives.mode == "in-batch" and spec.train.epochs == 1 and spec.train.learning_rate == 2e-5
    assert spec.train.early_stopping.patience == 2


def test_without_a_dev_split_no_early_stopping_and_one_epoch(tmp_path):
    spec = load_spec(_write(tmp_path / "s.yaml", MINIMAL + "  splits: {dev: null}\n")).spec
    assert spec.train.early_stopping is None and spec.train.epochs == 1
    assert _chosen(spec) == {
        "negatives.mode": "hard",
        "train.directions": ["query_to_doc", "doc_to_query"],
        "train.partition_mode": "per_direction",
        "train.early_stopping": None,
        "train.learning_rate": 5e-5,
    }
    assert "no dev split" in spec.recipe_choices[3].reason


def test_gist_keeps_in_batch_negatives(tmp_path):
    """gist takes one explicit negative per pair: the recipe's 3 mined ones would make the spec invalid."""
    spec = load_spec(_write(tmp_path / "s.yaml", MINIMAL + "train:\n  loss: gist\n")).spec
    assert spec.negatives.mode == "in-batch" and "negatives.mode" not in _chosen(spec)
    assert spec.train.directions is None  # MNRL's option: GISTEmbedLoss has none


def test_the_symmetric_loss_only_where_mnrl_trains(tmp_path):
    """directions are an option of sentence-transformers' MNRL losses: the recipe leaves every other trainer alone."""
    for train in ("{loss: gist}", "{backend: flagembedding}", "{query_adapter: {}}"):
        spec = load_spec(_write(tmp_path / "s.yaml", MINIMAL + f"train: {train}\n")).spec
        assert spec.train.directions is None and "train.directions" not in _chosen(spec), train
    spec = load_spec(_write(tmp_path / "s.yaml", MINIMAL + "train: {loss: cached-mnrl}\n")).spec
    assert spec.train.directions == ["query_to_doc", "doc_to_query"]
    # what the spec sets is kept: its directions with their own (joint) partition
    spec = load_spec(_write(tmp_path / "s.yaml", MINIMAL + "train: {directions: [query_to_doc]}\n")).spec
    assert spec.train.directions == ["query_to_doc"] and spec.train.partition_mode is None
    assert not {"train.directions", "train.partition_mode"} & set(_chosen(spec))


def test_a_variant_keeps_the_reasons_its_changes_leave_alone(tmp_path):
    spec = load_spec(_write(tmp_path / "s.yaml", MINIMAL)).spec
    variant = spec.variant({"train.learning_rate": 1e-4, "train.seed": 7})
    assert variant.train.learning_rate == 1e-4 and variant.negatives.mode == "hard" and variant.train.epochs == 3
    assert "train.learning_rate" not in _chosen(variant) and "negatives.mode" in _chosen(variant)
    assert variant.spec_hash() == spec.variant({"train.learning_rate": 1e-4, "train.seed": 7}).spec_hash()


def test_a_variant_gets_the_recipe_of_what_it_is(tmp_path):
    """An ablation or search variant's recipe fills what its changes leave open for the variant, not the base spec."""
    spec = load_spec(_write(tmp_path / "s.yaml", MINIMAL)).spec
    # with the base's 3 mined negatives and directions a gist variant would not validate
    gist = spec.variant({"train.loss": "gist"})
    assert gist.negatives.mode == "in-batch" and gist.train.directions is None
    assert set(_chosen(gist)) == {"train.early_stopping", "train.epochs", "train.learning_rate"}
    manual = spec.variant({"recipe": "manual"})  # the plain defaults, so an ablation of the recipe compares something
    assert manual.recipe_choices == [] and manual.negatives.mode == "in-batch" and manual.train.epochs == 1
    assert (
        manual.train.directions is None
        and manual.spec_hash() == load_spec(_write(tmp_path / "m.yaml", MINIMAL + "recipe: manual\n")).spec.spec_hash()
    )
    gte = spec.variant({"train.directions": ["query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"]})
    assert gte.train.partition_mode is None  # the base's per_direction would not validate with these four


def test_validate_prints_each_choice(tmp_path, tiny_beir):
    path = _write(tmp_path / "s.yaml", MINIMAL.replace("some-data", str(tiny_beir)))
    out = CliRunner().invoke(main, ["validate", str(path)])
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if line.startswith("  recipe auto: ")]
    assert len(lines) == 6
    assert lines[0].startswith("  recipe auto: negatives.mode = hard: ")
    out = CliRunner().invoke(main, ["validate", str(path), "--set", "recipe=manual"])
    assert out.exit_code == 0 and "recipe auto" not in out.output


def test_a_run_mines_as_chosen_and_records_why(tmp_path, write_spec, caplog):
    # the tiny spec sets its own epochs, learning rate and early stopping: the recipe fills the negatives
    path = write_spec(recipe="auto", negatives={"mine_range": [2, 20]})
    db = tmp_path / "runs.duckdb"
    with caplog.at_level("INFO", logger="runner.pipeline"):
        from runner.pipeline import run_experiment

        run_experiment(load_spec(path), db)
    assert any("recipe auto: negatives.mode = hard" in r.getMessage() for r in caplog.records)
    (run,) = store.list_runs(db)
    stored = store.get_run(db, run["run_id"])
    assert stored["info"]["negatives"]["mode"] == "hard" and stored["info"]["negatives"]["per_query"] == 3
    assert list(stored["info"]["recipe"]) == ["negatives.mode", "train.directions", "train.partition_mode"]
    assert stored["info"]["recipe"]["negatives.mode"]["value"] == "hard"
    reason = stored["info"]["recipe"]["negatives.mode"]["reason"]
    assert "in-batch" in reason
    # the report says what the recipe chose, with the reason, under the run's settings
    from runner.report import build_report

    chosen = build_report([db]).split('<ul class="recipe">')[1].split("</ul>")[0]
    assert chosen.count("<li>") == 3 and "<code>negatives.mode</code> = <b>hard</b>" in chosen
    assert html_escape(reason) in chosen


def test_a_manual_run_records_no_recipe(tmp_path, write_spec):
    path = write_spec(recipe="manual", train={"epochs": 1, "early_stopping": None})
    result = run_spec(load_spec(path), tmp_path / "runs.duckdb")
    assert "recipe" not in result.info and result.info["negatives"]["mode"] == "in-batch"
    from runner.report import build_report

    assert 'class="recipe"' not in build_report([tmp_path / "runs.duckdb"])
