"""embx's training loop (runner.train.fast): batching, padding, and equivalence with SentenceTransformerTrainer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model

from runner.data.types import Pair
from runner.spec import Spec
from runner.train.fast import Columns, collate, plan_batches, tokenize_pairs


def columns_of(lengths: list[tuple[int, int]], shared: int = 0) -> Columns:
    """Fake token columns: pair i has a query and a positive of the given lengths; the first `shared` pairs
    share one positive (so they must never meet in a batch)."""
    ids, rows = [], []
    common = None
    for i, (q, p) in enumerate(lengths):
        ids.append([1] * q)
        query = len(ids) - 1
        if i < shared:
            if common is None:
                common = len(ids)
                ids.append([2] * p)
            rows.append((query, common))
        else:
            ids.append([3] * p)
            rows.append((len(ids) - 2, len(ids) - 1))
    return Columns.build({"input_ids": ids}, rows)


@pytest.mark.parametrize("buckets", [True, False])
def test_batches_never_repeat_a_text_and_cover_every_pair(buckets):
    rng = random.Random(0)
    cols = columns_of([(rng.randint(3, 20), rng.randint(5, 200)) for _ in range(1000)], shared=40)
    batches = plan_batches(cols, 16, random.Random(1), buckets)
    for batch in batches:
        texts = [t for i in batch for t in cols.rows[i]]
        assert len(texts) == len(set(texts))
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))
    # The 40 pairs sharing one positive never meet; those left over at the end join earlier batches (one more
    # pair there) rather than train alone on nothing: every pair is trained once.
    assert sorted(seen) == list(range(1000)) and all(1 < len(b) <= 17 for b in batches)
    assert sum(len(b) >= 16 for b in batches) >= 1000 // 16 - 2


def test_length_buckets_pad_less_and_shuffle_with_the_seed():
    rng = random.Random(0)
    cols = columns_of([(rng.randint(3, 30), rng.randint(5, 250)) for _ in range(2000)])

    def efficiency(batches):
        real = padded = 0
        for b in batches:
            for col in range(2):
                lengths = [cols.lengths(i)[col] for i in b]
                real += sum(lengths)
                padded += max(lengths) * len(lengths)
        return real / padded

    bucketed = plan_batches(cols, 32, random.Random(1), True)
    plain = plan_batches(cols, 32, random.Random(1), False)
    assert efficiency(bucketed) > 0.75 and efficiency(plain) < 0.65
    # The length jitter is drawn anew each epoch: batches differ between epochs, so a query does not meet the
    # same in-batch negatives every time.
    rng = random.Random(1)
    first, second = plan_batches(cols, 32, rng, True), plan_batches(cols, 32, rng, True)

    def neighbours(batches):
        return {(a, b) for batch in batches for a in batch for b in batch if a < b}

    assert len(neighbours(first) & neighbours(second)) < 0.4 * len(neighbours(first))
    assert plan_batches(cols, 32, random.Random(1), True) == bucketed
    assert plan_batches(cols, 32, random.Random(2), True) != bucketed
    # Batches are not in length order: long and short ones alternate.
    firsts = [cols.lengths(b[0])[1] for b in bucketed[:20]]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("fast"), seed=3, dropout=0.0, max_seq_length=24)


def test_collate_gives_what_sentence_transformers_tokenises(model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    pairs = [
        Pair("what lowers blood pressure", "Less salt and regular exercise lower blood pressure " * 3),
        Pair("iron", "Red meat, lentils and spinach hold iron."),
        Pair("a much longer question about the side effects of statins in older adults", "Muscle pain."),
    ]
    cols = tokenize_pairs(model, pairs, "query: ", "passage: ")
    features, tokens = collate(cols, [0, 1, 2], model.tokenizer.pad_token_id, multiple=1)
    for col, texts in enumerate([["query: " + p.query for p in pairs], ["passage: " + p.positive for p in pairs]]):
        expected = model.preprocess(texts)
        assert torch.equal(features[col]["input_ids"], expected["input_ids"])
        assert torch.equal(features[col]["attention_mask"], expected["attention_mask"])
        assert torch.equal(features[col]["token_type_ids"], expected["token_type_ids"])
    assert tokens == sum(int(f["attention_mask"].sum()) for f in features)
    assert features[1]["input_ids"].shape[1] == 24  # truncated to max_seq_length, as sentence-transformers does
    rounded, _ = collate(cols, [0, 1, 2], model.tokenizer.pad_token_id, multiple=8)
    assert rounded[0]["input_ids"].shape[1] % 8 == 0


def test_embx_loop_takes_the_trainers_steps(model_dir, tiny_beir, monkeypatch):
    """One batch per epoch, no dropout, fp32: both loops see the same batch and take the same AdamW steps.

    Also after a bf16 trainer run in the same process: transformers leaves ACCELERATE_MIXED_PRECISION=bf16 in
    the environment, which the next fp32 trainer must not inherit.
    """
    from sentence_transformers import SentenceTransformer

    from runner.train import get_backend

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what TrainingArguments(bf16=True) leaves behind

    words = ["salt", "iron", "bone", "sleep", "heart", "liver", "skin", "lung", "eye", "gut", "vein", "nerve"]
    pairs = [Pair(f"what about {w}", f"The {w} needs care: facts about {w} and health.") for w in words]
    outcomes = {}
    for loop in ("embx", "trainer"):
        spec = Spec.model_validate(
            {
                "name": "equivalence",
                "model": {"base": str(model_dir), "max_seq_length": 24},
                "data": {"path": str(tiny_beir), "splits": {"dev": None}},
                "negatives": {"mode": "in-batch"},
                "train": {
                    "loop": loop,
                    "epochs": 3,
                    "batch_size": 16,
                    "learning_rate": 1e-3,
                    "warmup_ratio": 0.0,
                    "weight_decay": 0.01,
                    "precision": "fp32",
                    "early_stopping": None,
                },
            }
        )
        model = SentenceTransformer(str(model_dir), device="cpu")
        outcomes[loop] = get_backend("sentence-transformers").train(model, pairs, spec, None, model_dir.parent / loop)
    fast, trainer = outcomes["embx"], outcomes["trainer"]
    assert fast.details["loop"] == "embx" and trainer.details["loop"] == "trainer"
    assert fast.steps == trainer.steps == 3 and fast.samples == trainer.samples == 36
    losses = {k: [r[3] for r in o.log if r[2] == "loss"] for k, o in outcomes.items()}
    assert losses["embx"] == pytest.approx(losses["trainer"], abs=1e-4)  # the trainer logs 4 decimals
    assert losses["embx"][-1] < losses["embx"][0]
    weights = trainer.model.state_dict()
    for name, value in fast.model.state_dict().items():
        assert torch.allclose(value, weights[name], atol=1e-5), name


def compile_runs(model_dir, beir) -> dict:
    """Train the tiny model with and without train.compile (fp32, no dropout); outcomes by the flag."""
    from sentence_transformers import SentenceTransformer

    from runner.train import get_backend

    pairs = [Pair(f"question {i} about item {i}", f"passage {i}: item {i} is described here.") for i in range(16)]
    outcomes = {}
    for compile_ in (False, True):
        spec = Spec.model_validate(
            {
                "name": "compile",
                "model": {"base": str(model_dir), "max_seq_length": 24},
                "data": {"path": str(beir), "splits": {"dev": None}},
                "negatives": {"mode": "in-batch"},
                "train": {"compile": compile_, "batch_size": 8, "precision": "fp32", "early_stopping": None},
            }
        )
        model = SentenceTransformer(str(model_dir), device="cpu")
        outcomes[compile_] = get_backend("sentence-transformers").train(model, pairs, spec, None, model_dir.parent)
    return outcomes


def assert_same_training(outcomes: dict) -> None:
    """The compiled run took the same steps as the plain one and its weights keep their names."""
    plain, compiled = outcomes[False], outcomes[True]
    assert [r[3] for r in compiled.log if r[2] == "loss"] == pytest.approx([r[3] for r in plain.log if r[2] == "loss"])
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())


@pytest.fixture
def fresh_dynamo():
    """Dynamo with no compiled code and zeroed counters, before and after the test."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()
    counters.clear()


def test_compile_hands_the_transformer_to_the_compiler(model_dir, tiny_beir, monkeypatch, fresh_dynamo):
    """train.compile: dynamo captures the transformer's forward and the compiled code is what trains. A
    counting backend stands in for inductor (which takes tens of seconds on CPU; the slow test below uses it):
    it sees the graph once per shape class, runs it as captured, and the steps equal the plain run's."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compile_(fn, **{**kwargs, "backend": counter}))
    outcomes = compile_runs(model_dir, tiny_beir)
    assert outcomes[True].details["compile"] is True
    assert counter.frame_count >= 1 and counter.op_count >= 20  # a transformer's worth of operations
    assert fresh_dynamo["stats"]["unique_graphs"] >= 1
    assert_same_training(outcomes)


@pytest.mark.slow
def test_compile_with_inductor_keeps_the_steps(model_dir, tiny_beir, fresh_dynamo):
    """train.compile with torch's default backend (inductor): a graph is compiled to code and trains to the same
    losses as the plain run."""
    outcomes = compile_runs(model_dir, tiny_beir)
    assert fresh_dynamo["stats"]["unique_graphs"] >= 1
    inductor = fresh_dynamo["inductor"]
    assert inductor["fxgraph_cache_miss"] + inductor["fxgraph_cache_hit"] >= 1  # code generated (or reused)
    assert_same_training(outcomes)


def test_samples_count_the_pairs_trained_not_the_pairs_given(model_dir, tiny_beir):
    """Three pairs share one positive, so no batch may hold two of them: with 8 pairs in batches of 4 one of
    them finds no batch and sits out each epoch. `samples` counts the pairs the loss trained on (7 per epoch),
    not len(pairs) x epochs."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from runner.train.fast import train_loop

    shared = "One shared passage about joints."
    pairs = [Pair(f"joint question {i}", shared) for i in range(3)]
    pairs += [Pair(f"question {w}", f"A passage about {w}.") for w in ("salt", "iron", "bone", "sleep", "eye")]
    spec = Spec.model_validate(
        {
            "name": "samples",
            "model": {"base": str(model_dir), "max_seq_length": 24},
            "data": {"path": str(tiny_beir), "splits": {"dev": None}},
            "negatives": {"mode": "in-batch"},
            "train": {"epochs": 3, "batch_size": 4, "precision": "fp32", "early_stopping": None},
        }
    )
    model = SentenceTransformer(str(model_dir), device="cpu")
    seen: list[int] = []
    mnrl = MultipleNegativesRankingLoss(model)

    def loss(features, labels):
        seen.append(len(features[0]["input_ids"]))
        return mnrl(features, labels)

    outcome = train_loop(model, loss_fn=loss, pairs=pairs, spec=spec, dev=None, precision="fp32")
    assert outcome.epochs_run == 3
    assert outcome.samples == sum(seen) == 3 * 7


def test_each_column_is_embedded_in_its_own_forward_at_its_own_width(model_dir, tiny_beir):
    """sentence-transformers 6 would merge a batch's columns into one forward padded to the widest column: the
    short queries padded to the passages' width (20% slower training on the medical demo on CPU). embx's loop
    keeps one forward per column, each as wide as its own length bucket."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from runner.train.fast import train_loop

    long = " ".join(["a long clinical passage about kidney function and sodium intake"] * 3)
    pairs = [Pair(f"q{i}", f"{long} number {i}.", negatives=[f"{long} other {i}."]) for i in range(8)]
    spec = Spec.model_validate(
        {
            "name": "columns",
            "model": {"base": str(model_dir), "max_seq_length": 64},
            "data": {"path": str(tiny_beir), "splits": {"dev": None}},
            "train": {"epochs": 1, "batch_size": 4, "precision": "fp32", "early_stopping": None},
        }
    )
    model = SentenceTransformer(str(model_dir), device="cpu")
    widths: list[tuple[int, int]] = []
    hook = model[0].register_forward_pre_hook(lambda module, args: widths.append(tuple(args[0]["input_ids"].shape)))
    try:
        outcome = train_loop(
            model, loss_fn=MultipleNegativesRankingLoss(model), pairs=pairs, spec=spec, dev=None, precision="fp32"
        )
    finally:
        hook.remove()
    assert len(widths) == 2 * 3  # 2 steps x 3 columns (query, positive, negative), one forward each
    steps = [widths[i : i + 3] for i in (0, 3)]
    assert outcome.details["largest_batch_tokens"] == max(sum(r * w for r, w in step) for step in steps)
    assert {rows for rows, _ in widths} == {4}
    query_widths = [width for _, width in widths[0::3]]
    passage_widths = [width for i, (_, width) in enumerate(widths) if i % 3]
    assert max(query_widths) < 8 < min(passage_widths)


@pytest.mark.parametrize("loop", ["embx", "trainer"])
def test_gradient_checkpointing_recomputes_each_layer_and_takes_the_same_steps(model_dir, tiny_beir, tmp_path, loop):
    """Checkpointing runs each transformer layer again during the backward pass (that is where the memory goes
    back) and must not change what training computes: the same weights after the same steps, to float noise."""
    from sentence_transformers import SentenceTransformer

    from runner.train import get_backend

    pairs = [Pair(f"question about {w}", f"A passage about {w} and its care.") for w in WORDS_8]
    trained = {}
    for checkpointing in (False, True):
        spec = Spec.model_validate(
            {
                "name": "checkpointing",
                "model": {"base": str(model_dir), "max_seq_length": 24},
                "data": {"path": str(tiny_beir), "splits": {"dev": None}},
                "negatives": {"mode": "in-batch"},
                "train": {
                    "epochs": 1,
                    "batch_size": 4,
                    "learning_rate": 1e-3,
                    "warmup_ratio": 0.0,
                    "precision": "fp32",
                    "early_stopping": None,
                    "loop": loop,
                    "gradient_checkpointing": checkpointing,
                },
            }
        )
        model = SentenceTransformer(str(model_dir), device="cpu")
        calls: list[int] = []
        layer = model[0].auto_model.encoder.layer[0].intermediate  # inside the checkpointed layer
        hook = layer.register_forward_hook(lambda *_, seen=calls: seen.append(1))
        backend = get_backend("sentence-transformers")
        try:
            outcome = backend.train(model, pairs, spec, None, tmp_path / str(checkpointing))
        finally:
            hook.remove()
        trained[checkpointing] = (len(calls), outcome.model.state_dict())
        assert not outcome.model[0].auto_model.is_gradient_checkpointing  # the model ships without it
    (plain_calls, plain), (checkpointed_calls, checkpointed) = trained[False], trained[True]
    assert checkpointed_calls == 2 * plain_calls  # every layer forward is recomputed once in the backward
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)


WORDS_8 = ["salt", "iron", "bone", "sleep", "eye", "heart", "skin", "lung"]
