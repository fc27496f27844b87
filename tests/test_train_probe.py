"""train.lr_probe: the learning rate chosen on dev by short trainings on copies of the base model."""

from __future__ import annotations

import json

import pytest
from conftest import dump_yaml, spec_data
from helpers import cli, query

from runner.spec import SpecError, load_spec

PROBE = {"rates": [1e-7, 3e-3], "pairs": 24}


@pytest.fixture(scope="module")
def probed(tmp_path_factory, tiny_model, tiny_beir):
    """One run whose rate the probe chose between an inert 1e-7 and a strong 3e-3: (info, train log, output)."""
    root = tmp_path_factory.mktemp("probe")
    spec = dump_yaml(
        spec_data(tiny_model, tiny_beir, train={"epochs": 1, "lr_probe": PROBE, "early_stopping": None}),
        root / "spec.yaml",
    )
    db = root / "r.duckdb"
    result = cli("run", spec, "--db", db)
    assert result.exit_code == 0, result.output
    run_id, info = query(db, "SELECT run_id, info FROM runs")[0]
    lrs = [v for (v,) in query(db, "SELECT value FROM train_log WHERE run_id = ? AND name = 'learning_rate'", [run_id])]
    return json.loads(info), lrs, result.output


def test_each_rate_is_scored_on_dev_and_the_best_is_trained_with(probed):
    info, lrs, output = probed
    probe = info["lr_probe"]
    assert set(probe["dev"]) == {"1e-07", "0.003"} and probe["pairs"] == 24
    assert probe["dev"]["1e-07"] != probe["dev"]["0.003"], "the strong rate moved the copy"
    best = max(probe["dev"], key=probe["dev"].get)
    assert probe["chosen"] == float(best) == info["train"]["learning_rate"]
    assert max(lrs) == pytest.approx(float(best), rel=0.05), "the schedule peaks at the chosen rate"
    assert "learning-rate probe (24 pairs" in output and f"trained at {float(best):g}" in output


def test_an_inert_rate_scores_the_base_model_and_the_base_is_not_trained_by_the_probe(tiny_model, tiny_beir, tmp_path):
    from runner.data.types import Pair
    from runner.memo import Memo
    from runner.models import load_model, weights_fingerprint
    from runner.scoring import RunScorer
    from runner.train.probe import probe_learning_rate
    from runner.training_set import TrainingSet

    spec = load_spec(dump_yaml(spec_data(tiny_model, tiny_beir, train={"lr_probe": PROBE}), tmp_path / "s.yaml")).spec
    model = load_model(spec.model, "cpu")
    memo = Memo()
    training = TrainingSet.load(spec, model=model, memo=memo)
    scorer = RunScorer(spec, data=training.data, memo=memo)
    before = weights_fingerprint(model)
    base_dev = scorer.dev.metrics(model)[spec.eval.main]
    pairs = [Pair(p.query, p.positive) for p in training.pairs]
    result = probe_learning_rate(model, pairs, spec, dev=scorer.dev.metrics, workdir=tmp_path)
    assert weights_fingerprint(model) == before
    assert result.scores[1e-7] == pytest.approx(base_dev, abs=0.02)
    assert result.rate == max(result.scores, key=result.scores.get)


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        ({"train": {"lr_probe": {}, "query_adapter": {}}}, "train.query_adapter"),
        ({"train": {"lr_probe": {}}, "data": {"splits": {"train": "train", "dev": None, "test": "test"}}}, "dev"),
        (
            {
                "train": {"lr_probe": {}},
                "search": {"trials": 2, "params": {"train.learning_rate": {"low": 1e-5, "high": 1e-4}}},
            },
            "search.params train.learning_rate",
        ),
        ({"train": {"lr_probe": {"rates": [1e-5, 2.0]}}}, "not learning rates"),
    ],
)
def test_what_the_probe_cannot_run_with_is_named(tiny_model, tiny_beir, tmp_path, sections, named):
    data = spec_data(tiny_model, tiny_beir, **sections)
    data["data"] = {**spec_data(tiny_model, tiny_beir)["data"], **sections.get("data", {})}
    with pytest.raises(SpecError, match=named):
        load_spec(dump_yaml(data, tmp_path / "s.yaml"))


def test_a_variant_that_sets_the_rate_is_not_probed(tiny_model, tiny_beir, tmp_path):
    spec = load_spec(dump_yaml(spec_data(tiny_model, tiny_beir, train={"lr_probe": {}}), tmp_path / "s.yaml")).spec
    assert spec.variant({}).train.lr_probe is not None
    assert spec.variant({"train.learning_rate": 3e-5}).train.lr_probe is None
