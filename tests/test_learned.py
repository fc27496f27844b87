"""Runs that learned nothing or cannot be measured say so: planted cases on the tiny model, and the statistics."""

from __future__ import annotations

import random
import re

import pytest

from runner import store
from runner.evaluate import EvalResult
from runner.learned import MIN_STEPS, TrainingError, check_splits, check_training, kept_base
from runner.pipeline import run_spec
from runner.records import Scores
from runner.spec import Spec, load_spec
from runner.stats import paired_test

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _spec(**train) -> Spec:
    return Spec.model_validate({"name": "x", "data": {"path": "d"}, "train": train})


@pytest.fixture(scope="module")
def sixteen_pairs(make_spec, tmp_path_factory):
    """The newcomer's run: 16 training pairs, 1 epoch, default batch 32 and warm-up 0.1 -> one step at lr 0.0."""
    folder = tmp_path_factory.mktemp("sixteen")
    path = make_spec(
        folder / "spec.yaml",
        data={"limit": 16},
        train={"epochs": 1, "batch_size": 32, "warmup_ratio": 0.1, "learning_rate": 1e-3, "early_stopping": None},
    )
    db = folder / "runs.duckdb"
    result = run_spec(load_spec(path), db)
    return result, store.get_run(db, result.run_id), db


def test_sixteen_pairs_one_epoch_warns_of_each_way_it_learned_nothing(sixteen_pairs):
    result, stored, _ = sixteen_pairs
    learned = stored["info"]["learned"]
    assert learned["steps"] == 1 and learned["warmup_steps"] == 1
    assert learned["highest_learning_rate"] == 0.0 and learned["left_warmup"] is False
    assert learned["weights_changed"] is False  # one step at lr 0.0: the weights are byte-identical
    text = "\n".join(result.warnings)
    assert f"training took 1 optimizer step(s) (1 per epoch at batch size 32), fewer than {MIN_STEPS}" in text
    assert "the learning rate never left warm-up: 1 step(s) of a 1-step warm-up" in text
    assert "highest rate used was 0 of 0.001 (the warm-up starts at 0)" in text
    assert "the tuned weights equal the base model's" in text
    # Nothing changed, so no split measured anything: said for both, with how few queries they have.
    assert "test: ndcg@10 did not change on any of its 18 queries (one query moves the mean by up to 0.06)" in text
    assert "dev: ndcg@10 did not change on any of its 15 queries" in text
    measurable = stored["info"]["measurable"]
    assert measurable["test"]["queries"] == 18 and measurable["test"]["measurable"] is False
    assert measurable["test"]["queries_needed"] is None
    assert stored["info"]["warnings"] == result.warnings  # in the store, for ls/show/report


def test_the_summary_shows_them_in_red(sixteen_pairs, monkeypatch):
    from rich.console import Console

    import runner.summary
    from runner.summary import print_result

    console = Console(force_terminal=True, color_system="standard", width=400, record=True)
    monkeypatch.setattr(runner.summary, "out", console)
    result, _, _ = sixteen_pairs
    print_result(result, "runs.duckdb")
    lines = [line for line in console.export_text(styles=True).splitlines() if "WARNING:" in line]
    assert len(lines) == len(result.warnings) >= 5
    assert all(line.startswith("\x1b[1;31mWARNING:\x1b[0m") for line in lines)
    assert any("never left warm-up" in ANSI.sub("", line) for line in lines)


def test_the_report_shows_them_in_red(sixteen_pairs):
    from runner.report import build_report

    result, stored, db = sixteen_pairs
    html = build_report([db], [stored["experiment"]])
    section = html.split('<div class="warnings">')[1].split("</div>")[0]
    assert '<h3 class="neg">Warnings</h3>' in section
    assert section.count('<li class="neg">') == len(result.warnings)
    assert "the tuned weights equal the base model&#39;s" in section


def test_enough_steps_past_the_warm_up_do_not_warn():
    """The bundled demo's shape (13 steps an epoch, 3 epochs, warm-up 0.1) and changed weights: no warning."""
    spec = _spec(epochs=3, batch_size=32, warmup_ratio=0.1, learning_rate=5e-5)
    facts, warnings = check_training(spec, steps=39, steps_per_epoch=13, base_weights=[1.0], tuned_weights=[1.5])
    assert warnings == [] and facts["left_warmup"] and facts["highest_learning_rate"] == 5e-5
    # Each condition alone: too few steps; a warm-up never left (10 steps of 40 planned, warm-up ratio 0.5);
    # unchanged weights.
    assert len(check_training(spec, steps=9, steps_per_epoch=3, base_weights=[1.0], tuned_weights=[2.0])[1]) == 1
    half = _spec(epochs=4, batch_size=32, warmup_ratio=0.5, learning_rate=1e-4)
    facts, warnings = check_training(half, steps=10, steps_per_epoch=10, base_weights=[1.0], tuned_weights=[2.0])
    assert facts["warmup_steps"] == 20 and facts["highest_learning_rate"] == pytest.approx(1e-4 * 9 / 20)
    assert len(warnings) == 1 and "never left warm-up: 10 step(s) of a 20-step warm-up" in warnings[0]
    assert check_training(spec, steps=39, steps_per_epoch=13, base_weights=[1.0], tuned_weights=[1.0])[1] == [
        "the tuned weights equal the base model's: training changed nothing"
    ]


def test_a_run_that_took_no_step_is_an_error_not_a_warning():
    """Seen under torchrun: a no-duplicates sampler formed no batch, and the run finished "ok" with the base model."""
    spec = _spec(epochs=1, batch_size=32, warmup_ratio=0.1, learning_rate=5e-5)
    with pytest.raises(TrainingError, match="no optimizer step .*lower train.batch_size"):
        check_training(spec, steps=0, steps_per_epoch=1, base_weights=[1.0], tuned_weights=[1.0])
    assert check_training(spec, steps=1, steps_per_epoch=1, base_weights=[1.0], tuned_weights=[2.0])[1]  # warns


def test_kept_base_compares_the_kept_epoch_with_the_base_on_the_stopping_metric():
    spec = _spec(epochs=3, batch_size=32, warmup_ratio=0.1, learning_rate=5e-5)
    spec.train.early_stopping.keep_base = True
    log = [(0, 1.0, "dev_ndcg@10", 0.50), (0, 2.0, "dev_ndcg@10", 0.55), (0, 2.0, "dev_recall@10", 0.9)]
    base = {"ndcg@10": 0.60, "recall@10": 0.8}
    assert kept_base(spec, log=log, best_epoch=2, base_dev=base) == {
        "metric": "ndcg@10",
        "base": 0.60,
        "best_epoch": 2,
        "best": 0.55,
    }
    assert kept_base(spec, log=log, best_epoch=2, base_dev={"ndcg@10": 0.55}) is None  # a tie keeps the tuned
    assert kept_base(spec, log=log, best_epoch=2, base_dev=None) is None  # no dev scores
    spec.train.early_stopping.keep_base = None
    assert kept_base(spec, log=log, best_epoch=2, base_dev=base) is None


def _scores(base: list[float], tuned: list[float], split: str = "test") -> Scores:
    queries = [f"q{i}" for i in range(len(base))]
    scores = Scores()
    for stage, values in (("base", base), ("tuned", tuned)):
        per_query = {q: {"ndcg@10": v} for q, v in zip(queries, values)}
        scores.dense[split, stage] = EvalResult(metrics={"ndcg@10": sum(values) / len(values)}, per_query=per_query)
    return scores


def test_a_split_too_small_for_its_effect_says_what_size_would_do():
    """20 queries, mean gain 0.05 with sd ~0.3: the interval includes 0. At the size it names, the same per-query
    differences (repeated) give an interval that excludes 0; at a quarter of it, one that does not."""
    rng = random.Random(0)
    diffs = [0.05 + rng.gauss(0, 0.3) for _ in range(20)]
    shift = 0.05 - sum(diffs) / len(diffs)
    diffs = [d + shift for d in diffs]  # mean exactly 0.05
    base = [0.5] * 20
    facts, warnings = check_splits(_spec(), _scores(base, [b + d for b, d in zip(base, diffs)]))
    needed = facts["test"]["queries_needed"]
    assert facts["test"]["measurable"] is False and needed > 20
    assert len(warnings) == 1
    assert warnings[0].startswith("test: 20 queries (one query moves the mean by up to 0.05) cannot tell the ndcg@10")
    assert f"at this effect about {needed} queries would" in warnings[0]
    enough = (diffs * (needed // 20 + 1))[:needed]
    assert paired_test([0.0] * needed, enough)["ci_low"] > 0
    quarter = (diffs * (needed // 80 + 1))[: needed // 4]
    assert paired_test([0.0] * len(quarter), quarter)["ci_low"] <= 0


def test_a_clear_gain_is_measurable():
    base = [0.4] * 60
    tuned = [0.6 if i % 4 else 0.4 for i in range(60)]
    facts, warnings = check_splits(_spec(), _scores(base, tuned))
    assert warnings == [] and facts["test"]["measurable"] is True


def test_a_run_that_trained_changed_its_weights(make_spec, tmp_path):
    """Six steps past a zero warm-up: the weights moved (the fingerprint sees it); only the step count warns."""
    train = {"epochs": 1, "batch_size": 8, "warmup_ratio": 0.0, "learning_rate": 1e-3, "early_stopping": None}
    path = make_spec(tmp_path / "spec.yaml", train=train, eval={"batch_size": 16})
    result = run_spec(load_spec(path), tmp_path / "runs.duckdb")
    learned = result.info["learned"]
    assert learned["weights_changed"] is True and learned["left_warmup"] is True and learned["steps"] == 6
    assert [w for w in result.warnings if "step" in w or "weights" in w] == [
        f"training took 6 optimizer step(s) (6 per epoch at batch size 8), fewer than {MIN_STEPS}: too little to"
        " learn from; add training pairs or epochs, or lower train.batch_size"
    ]
