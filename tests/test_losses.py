"""The losses `train:` builds: GISTEmbed masks false negatives, Matryoshka wraps any loss, both train end to end."""

from __future__ import annotations

import json
import math

import pytest
from conftest import spec_data
from helpers import cli, query

from runner.spec import Spec
from runner.train.losses import build_loss


def _spec(tiny_model, tiny_beir, **train) -> Spec:
    return Spec.model_validate(spec_data(tiny_model, tiny_beir, train=train))


def _loss_of(loss, model, texts: list[str]) -> float:
    import torch

    features = [model.tokenize([t]) for t in texts]
    with torch.no_grad():
        return float(loss(features, None))


def test_gist_masks_a_negative_the_guide_scores_like_the_positive(tiny_model, tiny_beir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model), device="cpu")
    # One pair whose mined "negative" is the positive itself: a false negative.
    texts = ["what do you feel with chest pain", "cardiac signs involve artery", "cardiac signs involve artery"]
    mnrl = _loss_of(build_loss(model, _spec(tiny_model, tiny_beir)), model, texts)
    assert mnrl == pytest.approx(math.log(2), abs=1e-4)  # the false negative scores exactly like the positive
    gist = build_loss(model, _spec(tiny_model, tiny_beir, loss="gist", gist_margin=0.1))
    assert gist.guide is not model and not any(p.requires_grad for p in gist.guide.parameters())
    assert _loss_of(gist, model, texts) == pytest.approx(0.0, abs=1e-4)  # masked: only the positive is left
    # with margin 0 a tie is not above the positive: kept, as in sentence-transformers
    tie = build_loss(model, _spec(tiny_model, tiny_beir, loss="gist", gist_margin=0.0))
    assert _loss_of(tie, model, texts) == pytest.approx(math.log(2), abs=1e-4)


def test_matryoshka_wraps_the_loss_and_refuses_too_many_dimensions(tiny_model, tiny_beir):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    model = SentenceTransformer(str(tiny_model), device="cpu")
    loss = build_loss(model, _spec(tiny_model, tiny_beir, loss="cached-mnrl", matryoshka_dims=[8, 32, 16]))
    assert isinstance(loss, losses.MatryoshkaLoss) and tuple(loss.matryoshka_dims) == (32, 16, 8)
    assert isinstance(loss.loss, losses.CachedMultipleNegativesRankingLoss)
    assert tuple(loss.matryoshka_weights) == (1, 1, 1)
    weighted = build_loss(model, _spec(tiny_model, tiny_beir, matryoshka_dims=[8, 32, 16], matryoshka_weights={8: 3}))
    assert tuple(weighted.matryoshka_dims) == (32, 16, 8) and tuple(weighted.matryoshka_weights) == (1, 1, 3)
    with pytest.raises(ValueError, match=r"\[64\] exceed the model's 32 dimensions"):
        build_loss(model, _spec(tiny_model, tiny_beir, matryoshka_dims=[64, 16]))
    with pytest.raises(ValueError, match=r"matryoshka_weights: \[12\] are not in matryoshka_dims"):
        _spec(tiny_model, tiny_beir, matryoshka_dims=[32, 16], matryoshka_weights={12: 2})


def test_options_a_backend_or_loss_cannot_honour_are_spec_errors(tiny_model, tiny_beir):
    with pytest.raises(ValueError, match="train.matryoshka_dims: a sentence-transformers option"):
        _spec(tiny_model, tiny_beir, backend="flagembedding", matryoshka_dims=[16])
    with pytest.raises(ValueError, match="takes one explicit negative per pair"):
        Spec.model_validate(
            spec_data(tiny_model, tiny_beir, train={"loss": "gist"}, negatives={"mode": "hard", "per_query": 3})
        )


def test_directions_add_the_symmetric_and_query_terms(tiny_model, tiny_beir):
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model), device="cpu")
    # Two pairs asking the same question of different passages.
    features = [model.tokenize(["chest pain signs"] * 2), model.tokenize(["cardiac artery", "renal failure"])]

    def value(**train) -> float:
        with torch.no_grad():
            return float(build_loss(model, _spec(tiny_model, tiny_beir, **train))(features, None))

    forward = value()
    # doc_to_query on its own softmax: each passage against two identical queries scores exactly log 2.
    symmetric = value(directions=["query_to_doc", "doc_to_query"], partition_mode="per_direction")
    assert symmetric == pytest.approx((forward + math.log(2)) / 2, abs=1e-4)
    # query_to_query: the other (identical) query joins each query's softmax as a negative, so the loss grows.
    assert value(directions=["query_to_doc", "query_to_query"]) > forward + 0.1


def test_directions_a_loss_cannot_honour_are_spec_errors(tiny_model, tiny_beir):
    with pytest.raises(ValueError, match="directions: .* must list query_to_doc"):
        _spec(tiny_model, tiny_beir, directions=["doc_to_query"])
    with pytest.raises(ValueError, match=r"per_direction needs the positive .*\['query_to_query'\]"):
        _spec(tiny_model, tiny_beir, directions=["query_to_doc", "query_to_query"], partition_mode="per_direction")
    with pytest.raises(ValueError, match="partition_mode: only used with directions"):
        _spec(tiny_model, tiny_beir, partition_mode="joint")
    with pytest.raises(ValueError, match="directions: options of the mnrl losses; loss gist does not use them"):
        _spec(tiny_model, tiny_beir, loss="gist", directions=["query_to_doc", "doc_to_query"])
    with pytest.raises(ValueError, match="hardness_mode: options of the mnrl losses; loss cached-gist does not"):
        _spec(tiny_model, tiny_beir, loss="cached-gist", hardness_mode="hard_negatives", hardness_strength=5)
    with pytest.raises(ValueError, match="train.directions: a sentence-transformers option"):
        _spec(tiny_model, tiny_beir, backend="flagembedding", directions=["query_to_doc", "doc_to_query"])


@pytest.mark.parametrize(("loop", "matryoshka_dims"), [("embx", [32, 16]), ("trainer", None)])
def test_a_symmetric_run_trains_in_both_loops(write_spec, tmp_path, loop, matryoshka_dims):
    """recipe: auto trains every mnrl run symmetric, so also under Matryoshka (MatryoshkaLoss over CachedMNRL)."""
    directions = ["query_to_doc", "doc_to_query"]
    spec = write_spec(
        negatives={"mode": "hard", "per_query": 2},
        train={
            "epochs": 1,
            "loss": "cached-mnrl",
            "directions": directions,
            "loop": loop,
            "matryoshka_dims": matryoshka_dims,
        },
    )
    db = tmp_path / "r.duckdb"
    result = cli("run", spec, "--db", db)
    assert result.exit_code == 0, result.output
    (spec_json,) = query(db, "SELECT spec_json FROM runs")[0]
    assert json.loads(spec_json)["train"]["directions"] == ["query_to_doc", "doc_to_query"]
    tuned = query(db, "SELECT value FROM metrics WHERE split = 'test' AND name = 'ndcg@10' AND stage = 'tuned'")
    assert tuned and 0 < tuned[0][0] <= 1


@pytest.mark.parametrize(("loop", "loss", "per_query"), [("embx", "cached-gist", 2), ("trainer", "gist", 1)])
def test_a_gist_matryoshka_run_scores_every_trained_dimension(write_spec, tmp_path, loop, loss, per_query):
    spec = write_spec(
        negatives={"mode": "hard", "per_query": per_query},
        train={"epochs": 1, "loss": loss, "matryoshka_dims": [32, 16, 8], "loop": loop},
    )
    db = tmp_path / "r.duckdb"
    result = cli("run", spec, "--db", db)
    assert result.exit_code == 0, result.output
    rows = query(db, "SELECT source, stage, value FROM metrics WHERE split = 'test' AND name = 'ndcg@10'")
    sources = {(source, stage) for source, stage, _ in rows}
    assert {("dense@16", "base"), ("dense@16", "tuned"), ("dense@8", "base"), ("dense@8", "tuned")} <= sources
    assert ("dense@32", "tuned") not in sources  # the full size is the native score
    values = {(s, st): v for s, st, v in rows}
    assert values["dense@8", "tuned"] != values["native", "tuned"]
    (spec_json,) = query(db, "SELECT spec_json FROM runs")[0]
    assert json.loads(spec_json)["train"]["loss"] == loss
    # The report's quality-vs-dimensions table: the full size first, then each trained smaller size.
    from runner.report import build_report

    html = build_report([db])
    table = html.split('<table class="matryoshka">')[1].split("</table>")[0]
    cells = [row.split("</td>")[0].split("<td>")[-1] for row in table.split("<tr>")[2:]]
    assert cells == ["32", "16", "8"]
    assert f"<td>{values['dense@8', 'tuned']:.4f}</td>" in table and "<td>32</td><td>8</td><td>1</td>" in table


def test_index_bytes_are_what_quantize_embeddings_stores():
    import numpy as np
    from sentence_transformers.quantization import quantize_embeddings

    from runner.report import index_bytes

    x = np.random.default_rng(0).standard_normal((4, 100)).astype(np.float32)
    for dim in (100, 64, 9):
        part = x[:, :dim]
        assert index_bytes(dim) == {
            "fp32": part.nbytes // 4,
            "int8": quantize_embeddings(part, precision="int8").nbytes // 4,
            "binary": quantize_embeddings(part, precision="ubinary").nbytes // 4,
        }


def _distill_spec(tiny_model, tiny_beir, loss: str, **train) -> Spec:
    negatives = {"mode": "hard", "per_query": 2, "rescore": {"model": "unused-here"}}
    return Spec.model_validate(spec_data(tiny_model, tiny_beir, train={"loss": loss, **train}, negatives=negatives))


@pytest.mark.parametrize("loss_name", ["margin-mse", "distill-kl"])
def test_distillation_matches_the_teachers_logits_with_the_students_scaled_similarity(tiny_model, tiny_beir, loss_name):
    import torch
    from sentence_transformers import SentenceTransformer

    normalised = SentenceTransformer(str(tiny_model), device="cpu")
    model = SentenceTransformer(modules=list(normalised.children())[:2], device="cpu")  # no Normalize: raw vectors
    texts = ["what do you feel with chest pain", "cardiac signs involve artery", "a runner drinks water", "salt"]
    teacher = torch.tensor([[4.0, -1.0, 0.5]])  # logits of the positive and the two negatives
    loss = build_loss(model, _distill_spec(tiny_model, tiny_beir, loss_name, scale=20.0))
    features = [model.tokenize([t]) for t in texts[:4]]
    with torch.no_grad():
        got = float(loss(features, teacher))
        emb = model.encode(texts, convert_to_tensor=True)
    student = 20.0 * torch.nn.functional.cosine_similarity(emb[0:1], emb[1:], dim=-1)  # scale x cosine, as MNRL
    if loss_name == "margin-mse":
        margins = teacher[0, 0] - teacher[0, 1:]
        expected = float(((student[0] - student[1:] - margins) ** 2).mean())
    else:
        p = torch.softmax(teacher[0], dim=0)
        expected = float((p * (p.log() - torch.log_softmax(student, dim=0))).sum())
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-4)


def test_teacher_scores_follow_the_positive_then_each_negative():
    from runner.data.negatives import with_teacher_scores
    from runner.data.types import Pair

    pairs = [Pair("q1", "pos one", negatives=["n1", "neg two"]), Pair("q2", "p", negatives=["neg", "x"])]
    scored = with_teacher_scores(pairs, lambda asked: [float(len(q) * 100 + len(text)) for q, text in asked])
    assert [p.teacher_scores for p in scored] == [[207.0, 202.0, 207.0], [201.0, 203.0, 201.0]]
    assert [p.negatives for p in scored] == [p.negatives for p in pairs]


def test_distillation_without_a_teacher_is_a_spec_error(tiny_model, tiny_beir):
    with pytest.raises(ValueError, match="set negatives.mode: hard and negatives.rescore"):
        Spec.model_validate(spec_data(tiny_model, tiny_beir, train={"loss": "margin-mse"}))
    with pytest.raises(ValueError, match=r"FlagEmbedding trains with its own InfoNCE \(mnrl\) or distils"):
        _distill_spec(tiny_model, tiny_beir, "margin-mse", backend="flagembedding")


@pytest.mark.parametrize(
    ("loss", "loop", "backend"),
    [
        ("margin-mse", "embx", "sentence-transformers"),
        ("distill-kl", "trainer", "sentence-transformers"),
        ("distill-kl", "auto", "flagembedding"),
    ],
)
def test_a_distillation_run_trains_on_the_cross_encoders_scores(write_spec, tmp_path, loss, loop, backend):
    from conftest import build_tiny_cross_encoder

    teacher = build_tiny_cross_encoder(tmp_path / "cross-encoder")
    spec = write_spec(
        negatives={"mode": "hard", "per_query": 2, "rescore": {"model": str(teacher), "relative_margin": 0.5}},
        train={"epochs": 1, "loss": loss, "loop": loop, "backend": backend},
    )
    db = tmp_path / "r.duckdb"
    result = cli("run", spec, "--db", db)
    assert result.exit_code == 0, result.output
    (info,) = query(db, "SELECT info FROM runs")[0]
    info = json.loads(info)
    negatives = info["negatives"]
    assert negatives["teacher_scored"] == negatives["pairs"] * 3  # the positive and both negatives of each pair
    assert info["train"]["samples"] > 0
    if backend == "flagembedding":  # its own knowledge distillation (kl_div) on the scores embx wrote
        assert info["train"]["knowledge_distillation"] is True
    losses = [v for (v,) in query(db, "SELECT value FROM train_log WHERE name = 'loss'")]
    assert losses and all(math.isfinite(v) for v in losses)


def test_options_distillation_would_ignore_are_refused(tiny_model, tiny_beir):
    with pytest.raises(ValueError, match=r"distill-kl does not use train.hardness_mode"):
        _distill_spec(tiny_model, tiny_beir, "distill-kl", hardness_mode="hard_negatives")
