"""The sentence-transformers backend in both loops (embx's own, runner.train.fast, and SentenceTransformerTrainer):
early stopping hands back the best epoch's weights, and the trained-sample count is what the loss saw."""

from __future__ import annotations

import pytest
from helpers import FallingDev, force_amx, same_weights

from runner.data.types import Pair
from runner.spec import Spec
from runner.train import get_backend

WORDS = ["salt", "iron", "bone", "sleep", "heart", "liver", "skin", "lung", "eye", "gut", "vein", "nerve"]
PAIRS = [Pair(f"what about {w}", f"The {w} needs care: facts about {w} and health.") for w in WORDS * 2]
PAIRS = [Pair(f"{p.query} ({i})", p.positive + f" Part {i}.") for i, p in enumerate(PAIRS)]  # 24 distinct pairs


def spec_for(model_dir, beir, loop: str, **train) -> Spec:
    """A spec training `loop` on the tiny model, fp32, with a real learning rate (epochs differ)."""
    return Spec.model_validate(
        {
            "name": "st-backend",
            "model": {"base": str(model_dir), "max_seq_length": 24},
            "data": {"path": str(beir)},
            "negatives": {"mode": "in-batch"},
            "train": {
                "loop": loop,
                "epochs": 6,
                "batch_size": 8,
                "learning_rate": 1e-3,
                "precision": "fp32",
                "early_stopping": {"patience": 2, "metric": "recall@10"},
                **train,
            },
        }
    )


@pytest.mark.parametrize("loop", ["embx", "trainer"])
def test_early_stopping_restores_the_best_epochs_weights(loop, tiny_model, tiny_beir, tmp_path):
    """Dev peaks after epoch 2 and falls: training stops after epoch 4 and the model handed back carries the
    weights scored after epoch 2 (embx loop: the in-memory copy, runner/train/fast.py; trainer:
    load_best_model_at_end), not those of the last epoch."""
    from sentence_transformers import SentenceTransformer

    dev = FallingDev()
    model = SentenceTransformer(str(tiny_model), device="cpu")
    outcome = get_backend("sentence-transformers").train(
        model, PAIRS, spec_for(tiny_model, tiny_beir, loop), dev, tmp_path
    )
    assert outcome.details["loop"] == loop
    assert len(dev.snapshots) == 4 and outcome.epochs_run == 4 and outcome.best_epoch == dev.peak == 2
    assert not same_weights(dev.snapshots[1], dev.snapshots[3])  # a real learning rate: the epochs differ
    tuned = outcome.model.state_dict()
    assert same_weights(tuned, dev.snapshots[1])
    assert not same_weights(tuned, dev.snapshots[3])


def test_trainer_counts_the_samples_its_loss_saw(tiny_model, tiny_beir, tmp_path, monkeypatch):
    """train.loop trainer: samples are the rows of the batches the loss received (every pair once per epoch
    under the no-duplicates sampler), counted through the loss, not computed from the epoch counter."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    seen = []
    forward = MultipleNegativesRankingLoss.forward

    def spy(self, features, labels):
        seen.append(len(features[0]["input_ids"]))
        return forward(self, features, labels)

    monkeypatch.setattr(MultipleNegativesRankingLoss, "forward", spy)
    model = SentenceTransformer(str(tiny_model), device="cpu")
    spec = spec_for(tiny_model, tiny_beir, "trainer", epochs=2, early_stopping=None)
    outcome = get_backend("sentence-transformers").train(model, PAIRS, spec, None, tmp_path)
    assert outcome.samples == sum(seen) == 2 * len(PAIRS)
    assert outcome.steps == len(seen) == 2 * 3


@pytest.mark.parametrize("loop", ["embx", "trainer"])
def test_bf16_training_on_any_cpu(loop, tiny_model, tiny_beir, tmp_path, monkeypatch):
    """train.precision bf16 trains under bf16 autocast on any CPU (the AMX detector is forced off, as on an
    AVX2-only machine): the transformer's matrix products run in bf16, the fp32 master weights change."""
    import torch
    from sentence_transformers import SentenceTransformer

    force_amx(monkeypatch, False)  # an AVX2-only CPU
    model = SentenceTransformer(str(tiny_model), device="cpu")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seen = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    spec = spec_for(tiny_model, tiny_beir, loop, epochs=1, precision="bf16", early_stopping=None)
    outcome = get_backend("sentence-transformers").train(model, PAIRS, spec, None, tmp_path)
    assert outcome.precision == "bf16" and outcome.steps == 3
    assert seen == {torch.bfloat16}
    after = outcome.model.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())
    assert not same_weights(after, before)
    losses = [r[3] for r in outcome.log if r[2] == "loss"]
    assert losses and all(0 < v < 10 for v in losses)


def test_the_trainer_takes_the_warmup_in_the_argument_its_transformers_has(tiny_model, tiny_beir, tmp_path, caplog):
    """transformers 5 folded warmup_ratio into warmup_steps (a float below 1 is the ratio): the trainer gets the
    ratio there, without sentence-transformers' deprecation warning in the user's output."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model), device="cpu")
    spec = spec_for(tiny_model, tiny_beir, "trainer", epochs=2, early_stopping=None)
    assert spec.train.warmup_ratio > 0
    with caplog.at_level("WARNING"):
        outcome = get_backend("sentence-transformers").train(model, PAIRS, spec, None, tmp_path)
    assert outcome.steps == 2 * 3
    assert "`warmup_ratio` argument is deprecated" not in caplog.text
