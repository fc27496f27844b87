"""The FlagEmbedding backend: argument validation against its own parser, and real runs on the tiny model (CPU)."""

from __future__ import annotations

import pytest
from helpers import FallingDev, same_weights

from runner import store
from runner.data.types import Pair
from runner.pipeline import run_spec
from runner.spec import Spec, SpecError, load_spec
from runner.train import get_backend
from runner.train.flagembedding import _argv, parse_arguments

FE = {"backend": "flagembedding", "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}


def problems(path) -> list[str]:
    with pytest.raises(SpecError) as err:
        load_spec(path)
    return [str(p) for p in err.value.problems]


def test_unknown_argument_is_a_spec_error_with_line_and_suggestion(write_spec):
    path = write_spec(train={**FE, "flagembedding": {"temperatur": 0.5}})
    (problem,) = problems(path)
    assert "train.flagembedding.temperatur: not a FlagEmbedding argument; did you mean 'temperature'?" in problem
    assert f"{path}:" in problem and problem.split(":")[1].isdigit()  # file:line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"sub_batch_size": "abc"}, "train.flagembedding.sub_batch_size: invalid int value: 'abc'"),
        ({"lr_scheduler_type": "wobbly"}, "train.flagembedding.lr_scheduler_type: invalid choice: 'wobbly'"),
        ({"kd_loss_type": "m3_kd_loss"}, "train.flagembedding.kd_loss_type: set by the spec, not here: use train.loss"),
        ({"temperature": 0.5}, "train.flagembedding.temperature: set by the spec, not here: use train.scale"),
        ({"sentence_pooling_method": "cls"}, "train.flagembedding.sentence_pooling_method: set by the spec"),
        ({"temp": 0.5}, "train.flagembedding.temp: not a FlagEmbedding argument"),  # no argparse abbreviations
    ],
)
def test_rejected_values_are_spec_errors(write_spec, args, expected):
    (problem,) = problems(write_spec(train={**FE, "flagembedding": args}))
    assert expected in problem


def test_flagembedding_arguments_need_the_flagembedding_backend(write_spec):
    path = write_spec(train={"epochs": 1, "flagembedding": {"sub_batch_size": 4}})
    (problem,) = problems(path)
    assert "train.flagembedding: only used with train.backend: flagembedding" in problem


def test_cached_mnrl_is_not_a_flagembedding_loss(write_spec):
    (problem,) = problems(write_spec(train={**FE, "loss": "cached-mnrl"}))
    assert "train.loss: cached-mnrl is a sentence-transformers loss" in problem


def test_arguments_are_parsed_by_flagembeddings_own_classes(write_spec):
    spec = load_spec(
        write_spec(
            model={"query_prefix": "query: ", "max_seq_length": 32},
            train={**FE, "scale": 50.0, "flagembedding": {"query_max_len": 16, "mrl_dims": [8, 16], "use_mrl": True}},
        )
    ).spec
    from runner.train.flagembedding import spec_values

    values = {
        "model_name_or_path": "m",
        "train_data": [__file__],
        "output_dir": "out",
        **spec_values(model=spec.model, train=spec.train),
        **spec.train.flagembedding,
    }
    model_args, data_args, training_args = parse_arguments(values)
    assert data_args.query_instruction_for_retrieval == "query: " and data_args.query_instruction_format == "{}{}"
    assert data_args.passage_instruction_for_retrieval is None
    assert data_args.query_max_len == 16 and data_args.passage_max_len == 32
    assert training_args.temperature == pytest.approx(0.02)
    assert training_args.mrl_dims == [8, 16] and training_args.use_mrl is True
    assert training_args.learning_rate == pytest.approx(1e-3) and training_args.num_train_epochs == 2
    assert training_args.save_strategy == "no"
    assert model_args.model_name_or_path == "m"


def test_argv_is_what_its_command_line_would_get():
    assert _argv({"a": True, "b": [1, 2], "c": None, "d": 0.5, "e": {"x": 1}}) == [
        "--a",
        "true",
        "--b",
        "1",
        "2",
        "--d",
        "0.5",
        "--e",
        '{"x": 1}',
    ]


@pytest.fixture(scope="module")
def fe_runs(make_spec, tmp_path_factory):
    """FlagEmbedding runs in one store: hard negatives (group size 3), in-batch, and cls pooling."""
    folder = tmp_path_factory.mktemp("fe")
    db = folder / "runs.duckdb"
    hard = make_spec(folder / "hard.yaml", negatives={"mode": "hard", "per_query": 2, "mine_range": [2, 20]}, train=FE)
    inbatch = make_spec(folder / "inbatch.yaml", negatives={"mode": "in-batch"}, train={**FE, "epochs": 1})
    cls = make_spec(
        folder / "cls.yaml",
        model={"pooling": "cls", "max_seq_length": 32},
        negatives={"mode": "in-batch"},
        train={**FE, "epochs": 1},
    )
    return db, {name: run_spec(load_spec(path), db) for name, path in (("hard", hard), ("in", inbatch), ("cls", cls))}


def test_flagembedding_trains_and_embx_evaluates(fe_runs):
    db, runs = fe_runs
    result = runs["hard"]
    stored = store.get_run(db, result.run_id)
    assert stored["status"] == "ok"
    train = stored["info"]["train"]
    assert train["backend"] == "flagembedding"
    assert train["train_group_size"] == 3  # 1 positive + negatives.per_query
    assert train["temperature"] == pytest.approx(1 / 20.0)
    assert train["pooling"] == "mean" and train["epochs_run"] == 2 and train["samples"] == 2 * 47
    # The tuned model really is a different model, scored by embx's own evaluation.
    assert set(result.metrics) == {"base", "tuned"}
    assert result.metrics["tuned"] != result.metrics["base"]
    losses = [r["value"] for r in stored["train_log"] if r["name"] == "loss"]
    assert losses and all(v > 0 for v in losses)
    dev = [r for r in stored["train_log"] if r["name"] == "dev_ndcg@10"]
    assert [r["epoch"] for r in dev] == pytest.approx([0.0, 1.0, 2.0])
    assert dev[-1]["value"] == pytest.approx(result.dev["tuned"]["ndcg@10"])  # the last epoch is kept
    # The tiny model uses mean pooling, FlagEmbedding's default is cls: reported, not changed.
    assert any("FlagEmbedding trains with mean pooling (the model's own pooling)" in w for w in result.warnings)


def test_in_batch_and_explicit_pooling(fe_runs):
    _, runs = fe_runs
    assert runs["in"].info["train"]["train_group_size"] == 1
    assert runs["in"].metrics["tuned"] != runs["in"].metrics["base"]
    cls = runs["cls"]
    assert cls.info["train"]["pooling"] == "cls"
    assert not any("pooling" in w for w in cls.warnings)
    # cls pooling changes the base model's embeddings too, so its base scores differ from the mean-pooled base.
    assert cls.metrics["base"] != runs["in"].metrics["base"]


def test_early_stopping_keeps_the_best_epoch(tmp_path, write_spec):
    # Bookkeeping through the pipeline; the restored weights are tested in
    # test_early_stopping_restores_the_best_epochs_weights. A learning rate so small that dev cannot move: epoch 2
    # does not beat epoch 1, patience 1 stops after it.
    path = write_spec(
        data={"limit": 16},
        train={**FE, "epochs": 4, "learning_rate": 1e-12, "early_stopping": {"patience": 1}},
    )
    result = run_spec(load_spec(path), tmp_path / "runs.duckdb")
    assert result.info["train"]["epochs_run"] == 2
    assert result.info["train"]["best_epoch"] == 1
    assert result.info["train"]["samples"] == 32


def fe_spec(model_dir, beir, **train) -> Spec:
    """A FlagEmbedding spec on the tiny model, fp32, with a real learning rate (epochs differ)."""
    return Spec.model_validate(
        {
            "name": "fe-backend",
            "model": {"base": str(model_dir), "max_seq_length": 24},
            "data": {"path": str(beir)},
            "negatives": {"mode": "in-batch"},
            "train": {**FE, "epochs": 6, "precision": "fp32", **train},
        }
    )


PAIRS = [Pair(f"what about topic {i}", f"Topic {i} needs care: facts about topic {i} and health.") for i in range(20)]


def test_early_stopping_restores_the_best_epochs_weights(tiny_model, tiny_beir, tmp_path):
    """Dev peaks after epoch 2 and falls: FlagEmbedding's training stops after epoch 4 and the model handed
    back carries the weights scored after epoch 2 (_EpochDev.restore_best), not those of the last epoch."""
    from sentence_transformers import SentenceTransformer

    dev = FallingDev()
    spec = fe_spec(tiny_model, tiny_beir, early_stopping={"patience": 2, "metric": "recall@10"})
    model = SentenceTransformer(str(tiny_model), device="cpu")
    outcome = get_backend("flagembedding").train(model, PAIRS, spec, dev, tmp_path)
    assert len(dev.snapshots) == 4 and outcome.epochs_run == 4 and outcome.best_epoch == dev.peak == 2
    assert not same_weights(dev.snapshots[1], dev.snapshots[3])  # a real learning rate: the epochs differ
    tuned = outcome.model.state_dict()
    assert same_weights(tuned, dev.snapshots[1])
    assert not same_weights(tuned, dev.snapshots[3])


def test_samples_are_the_queries_trained(tiny_model, tiny_beir, tmp_path):
    """With dataloader_drop_last the trainer leaves 4 of 20 pairs out of every epoch (batches of 8): samples
    count the 16 trained per epoch, not len(pairs) x epochs."""
    from sentence_transformers import SentenceTransformer

    spec = fe_spec(tiny_model, tiny_beir, epochs=2, flagembedding={"dataloader_drop_last": True})
    model = SentenceTransformer(str(tiny_model), device="cpu")
    outcome = get_backend("flagembedding").train(model, PAIRS, spec, None, tmp_path)
    assert outcome.epochs_run == 2 and outcome.steps == 2 * 2
    assert outcome.samples == 2 * 16


def test_fp32_after_a_bf16_run_trains_in_fp32(tiny_model, tiny_beir, tmp_path, monkeypatch):
    """transformers leaves ACCELERATE_MIXED_PRECISION=bf16 in the environment after a bf16 run; a later fp32
    FlagEmbedding run in the same process (an ablation, a search) must still train in fp32: same weights as
    a run in a clean environment."""
    from sentence_transformers import SentenceTransformer

    spec = fe_spec(tiny_model, tiny_beir, epochs=1)
    weights = []
    for leftover in ("no", "bf16"):
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", leftover)
        model = SentenceTransformer(str(tiny_model), device="cpu")
        outcome = get_backend("flagembedding").train(model, PAIRS, spec, None, tmp_path / leftover)
        assert outcome.precision == "fp32"
        weights.append(outcome.model.state_dict())
    assert same_weights(*weights)
