"""Negatives: random ones never hit a known positive; hard ones mined from hand-made embeddings."""

from __future__ import annotations

import pytest
import torch

from runner.data.negatives import NegativeStats, attach_negatives, mine_hard_negatives, random_negatives
from runner.data.types import Pair, RetrievalData
from runner.spec import NegativesSpec

POOL = [f"passage {i}" for i in range(30)]


def test_random_never_returns_a_known_positive():
    # Query "a" has two positives among the pairs and one more known only through `known`.
    pairs = [Pair("a", POOL[0]), Pair("a", POOL[1]), Pair("b", POOL[2])]
    known = {"a": {POOL[3]}}
    banned = {"a": {POOL[0], POOL[1], POOL[3]}, "b": {POOL[2]}}
    for seed in range(40):
        out, stats = random_negatives(pairs, POOL[:8], per_query=4, seed=seed, known=known)
        assert [(p.query, p.positive) for p in out] == [(p.query, p.positive) for p in pairs]
        for pair in out:
            assert len(pair.negatives) == 4
            assert len(set(pair.negatives)) == 4
            assert not set(pair.negatives) & banned[pair.query]
            assert set(pair.negatives) <= set(POOL[:8])
        assert stats.mode == "random" and stats.pairs == 3 and stats.per_query == 4
        assert stats.candidates >= 12 and stats.dropped_positive <= stats.candidates - 12


def test_random_is_seeded_and_counts_dropped_positives():
    pairs = [Pair("a", POOL[0])]
    first, _ = random_negatives(pairs, POOL, 5, seed=7)
    again, _ = random_negatives(pairs, POOL, 5, seed=7)
    other, _ = random_negatives(pairs, POOL, 5, seed=8)
    assert first[0].negatives == again[0].negatives
    assert first[0].negatives != other[0].negatives
    # A pool of the positive and three others: with per_query 3 every other passage is drawn; each time the
    # positive comes up it is skipped and counted.
    dropped = []
    for seed in range(20):
        out, stats = random_negatives(pairs, [POOL[0], POOL[1], POOL[2], POOL[3]], 3, seed=seed)
        assert sorted(out[0].negatives) == [POOL[1], POOL[2], POOL[3]]
        assert stats.candidates >= 3 + stats.dropped_positive
        dropped.append(stats.dropped_positive)
    assert max(dropped) > 0


def test_random_with_too_small_a_pool_raises():
    with pytest.raises(ValueError, match="too few passages"):
        random_negatives([Pair("a", POOL[0])], [POOL[0], POOL[1]], per_query=2, seed=0)


# Hand-made embeddings: 1-dimensional, so each score is simply query (1.0) x the passage's value.
SCORES = {
    "pos": 0.80,  # the positive of query "q"
    "other-pos": 0.95,  # a second positive of "q"
    "near-dup": 0.78,  # above (1 - 0.05) x 0.80 = 0.76: likely an unlabelled positive
    "c1": 0.70,
    "c2": 0.60,
    "c3": 0.50,
    "c4": 0.40,
    "c5": 0.30,
    "c6": 0.20,
    "far": 0.10,
}
# Rank order (0-based): other-pos, pos, near-dup, c1, c2, c3, c4, c5, c6, far
HARD_POOL = list(SCORES)


def mine(per_query=2, mine_range=(0, 6), margin=0.05, seed=0, pairs=None, known=None):
    pairs = pairs or [Pair("q", "pos"), Pair("q", "other-pos")]
    known = {"q": {"pos", "other-pos"}} if known is None else known
    pool_emb = torch.tensor([[SCORES[t]] for t in HARD_POOL])
    query_emb = torch.ones(len(pairs), 1)
    positive_emb = torch.tensor([[SCORES[p.positive]] for p in pairs])
    spec = NegativesSpec(mode="hard", per_query=per_query, mine_range=mine_range, relative_margin=margin)
    return mine_hard_negatives(
        pairs,
        pool=HARD_POOL,
        query_emb=query_emb,
        positive_emb=positive_emb,
        pool_emb=pool_emb,
        spec=spec,
        seed=seed,
        known=known,
    )


def test_hard_excludes_positives_and_near_duplicates_and_respects_range():
    for seed in range(20):
        out, stats = mine(per_query=2, mine_range=(0, 6), seed=seed, pairs=[Pair("q", "pos")])
        (pair,) = out
        # Ranks 0..5: other-pos, pos (positives), near-dup (above margin), c1, c2, c3 (kept)
        assert len(pair.negatives) == 2 and len(set(pair.negatives)) == 2
        assert set(pair.negatives) <= {"c1", "c2", "c3"}
        assert stats == NegativeStats("hard", 1, 2, candidates=6, dropped_positive=2, dropped_margin=1)


def test_hard_respects_mine_range_start():
    out, stats = mine(per_query=3, mine_range=(5, 8), pairs=[Pair("q", "pos")])
    # Ranks 5..7 are c3, c4, c5: nothing to drop, all three taken.
    assert sorted(out[0].negatives) == ["c3", "c4", "c5"]
    assert (stats.candidates, stats.dropped_positive, stats.dropped_margin, stats.filled_random) == (3, 0, 0, 0)


def test_hard_margin_is_relative_to_each_pairs_positive():
    # For the pair whose positive is "other-pos" (0.95), the limit is 0.9025: "pos" is still a known positive,
    # "near-dup" (0.78) and c1 (0.70) now pass the margin.
    out, stats = mine(per_query=2, mine_range=(0, 4), pairs=[Pair("q", "other-pos")])
    assert sorted(out[0].negatives) == ["c1", "near-dup"]
    assert (stats.dropped_positive, stats.dropped_margin) == (2, 0)
    # A bigger margin drops more: limit (1 - 0.45) x 0.8 = 0.44 drops near-dup, c1, c2, c3 from ranks 2..8.
    out, stats = mine(per_query=3, mine_range=(2, 9), margin=0.45, pairs=[Pair("q", "pos")])
    assert sorted(out[0].negatives) == ["c4", "c5", "c6"]
    assert (stats.candidates, stats.dropped_positive, stats.dropped_margin, stats.filled_random) == (7, 0, 4, 0)


def test_hard_without_known_positives_relies_on_the_margin():
    # Not told that "other-pos" is a positive, the miner still drops it: it scores above the margin.
    out, stats = mine(per_query=2, mine_range=(0, 6), pairs=[Pair("q", "pos")], known={})
    assert set(out[0].negatives) <= {"c1", "c2", "c3"}
    assert (stats.dropped_positive, stats.dropped_margin) == (1, 2)


def test_hard_fills_with_random_when_too_few_survive():
    # Ranks 0..3 hold two positives, the near-duplicate and c1: only c1 survives for per_query 3.
    for seed in range(10):
        out, stats = mine(per_query=3, mine_range=(0, 4), seed=seed, pairs=[Pair("q", "pos")])
        negatives = out[0].negatives
        assert len(negatives) == 3 and len(set(negatives)) == 3
        assert "c1" in negatives
        assert not {"pos", "other-pos"} & set(negatives)
        assert stats.filled_random == 2
        assert (stats.candidates, stats.dropped_positive, stats.dropped_margin) == (4, 2, 1)


def test_hard_random_fill_never_reuses_margin_dropped_candidates():
    for seed in range(20):
        out, _ = mine(per_query=3, mine_range=(0, 4), seed=seed, pairs=[Pair("q", "pos")])
        assert "near-dup" not in out[0].negatives, f"seed {seed}"


def test_hard_stats_accumulate_over_pairs():
    out, stats = mine(per_query=2, mine_range=(0, 6))
    assert stats.pairs == 2 and stats.candidates == 12
    # Both pairs share the query, so both positives are dropped for both pairs.
    assert stats.dropped_positive == 4
    for pair in out:
        assert not {"pos", "other-pos"} & set(pair.negatives)
    assert stats.as_dict()["mode"] == "hard"


# --------------------------------------------------------------------------------------------- attach_negatives


def beir_like() -> RetrievalData:
    corpus = {f"d{i}": f"doc {i}" for i in range(12)}
    queries = {"q1": "query one", "q2": "query two"}
    qrels = {"train": {"q1": {"d0": 1, "d1": 1, "d2": 0}, "q2": {"d3": 1}}, "test": {"q2": {"d4": 1}}}
    return RetrievalData(corpus, queries, qrels)


def spec_for(mode: str, **neg):
    from runner.spec import Spec

    return Spec.model_validate({"name": "t", "data": {"path": "x"}, "negatives": {"mode": mode, **neg}})


def test_in_batch_leaves_negatives_empty():
    pairs = [Pair("a", "p", "qa", "da", negatives=["from file"]), Pair("b", "p2")]
    out, stats = attach_negatives(spec_for("in-batch"), pairs, data=None, model=None, index=None)
    assert [p.negatives for p in out] == [[], []]
    assert [(p.query, p.positive, p.query_id, p.positive_id) for p in out] == [
        ("a", "p", "qa", "da"),
        ("b", "p2", None, None),
    ]
    assert stats.as_dict() == {
        "mode": "in-batch",
        "pairs": 2,
        "per_query": 0,
        "candidates": 0,
        "dropped_positive": 0,
        "dropped_margin": 0,
        "filled_random": 0,
        "rescored": 0,
        "dropped_teacher": 0,
        "teacher_scored": 0,
    }


def test_attach_random_excludes_positives_left_out_of_the_pairs():
    from runner.evaluate import CorpusIndex

    data = beir_like()
    # Only one of q1's two positives is a pair (e.g. after data.limit): the other must still never be a negative.
    pairs = [Pair("query one", "doc 0", "q1", "d0")]
    for seed in range(30):
        spec = spec_for("random", per_query=8)
        spec.data.seed = seed
        out, stats = attach_negatives(spec, pairs, data=data, model=None, index=CorpusIndex(data.corpus))
        assert len(out[0].negatives) == 8
        assert not {"doc 0", "doc 1"} & set(out[0].negatives)
        assert stats.mode == "random" and stats.per_query == 8


def test_attach_random_for_jsonl_draws_from_file_texts():
    data = beir_like()
    data.train_pairs = [Pair("x", "px", negatives=["n1", "n2"]), Pair("y", "py", negatives=["n3"])]
    out, _ = attach_negatives(
        spec_for("random", per_query=3), list(data.train_pairs), data=data, model=None, index=None
    )
    assert set(out[0].negatives) <= {"py", "n1", "n2", "n3"}
    assert set(out[1].negatives) <= {"px", "n1", "n2", "n3"}
    assert all(len(p.negatives) == 3 for p in out)


# The teacher's view: c1 reads like the positive (an unlabelled positive the embeddings did not catch).
TEACHER = {"pos": 0.90, "c1": 0.93, "c2": 0.20, "c3": 0.10, "c4": 0.30, "c5": 0.15, "c6": 0.05}


def mine_with_teacher(seed=0, shortlist=4, per_query=2):
    asked: list[tuple[str, str]] = []

    def teacher(batch):
        asked.extend(batch)
        return [TEACHER[text] for _, text in batch]

    pool_emb = torch.tensor([[SCORES[t]] for t in HARD_POOL])
    spec = NegativesSpec(
        mode="hard",
        per_query=per_query,
        mine_range=(0, 9),
        rescore={"model": "unused-here", "relative_margin": 0.05, "shortlist": shortlist},
    )
    out, stats = mine_hard_negatives(
        [Pair("q", "pos")],
        pool=HARD_POOL,
        query_emb=torch.ones(1, 1),
        positive_emb=torch.tensor([[SCORES["pos"]]]),
        pool_emb=pool_emb,
        spec=spec,
        seed=seed,
        known={"q": {"pos", "other-pos"}},
        teacher=teacher,
    )
    return out, stats, asked


def test_the_teacher_drops_candidates_it_scores_like_the_positive():
    for seed in range(20):
        (pair,), stats, asked = mine_with_teacher(seed=seed, shortlist=4)
        # all 6 candidates c1..c6 fit in the shortlist (4 x 2 = 8): one teacher call, the positive first
        assert asked[0] == ("q", "pos") and sorted(t for _, t in asked[1:]) == ["c1", "c2", "c3", "c4", "c5", "c6"]
        assert "c1" not in pair.negatives and len(pair.negatives) == 2
        assert stats.rescored == 6 and stats.dropped_teacher == 1 and stats.filled_random == 0


def test_the_teacher_shortlist_bounds_its_cost_and_mining_without_it_is_unchanged():
    (_, stats, asked) = mine_with_teacher(shortlist=1, per_query=2)
    assert len(asked) == 1 + 2 and stats.rescored == 2
    # Without a teacher the draw is the one embx made before rescoring existed (golden values recorded with
    # the code of 7324de5: same generator, same order, random fills included).
    for seed, expected in (
        (3, [["c1", "c2", "far", "c6"], ["near-dup", "c1", "c2", "c3"]]),
        (11, [["c1", "c2", "c5", "c6"], ["near-dup", "c1", "c2", "c5"]]),
    ):
        out, _ = mine(per_query=4, mine_range=(0, 5), seed=seed)
        assert [p.negatives for p in out] == expected


def test_rescore_needs_hard_mining():
    with pytest.raises(ValueError, match="it needs mode: hard"):
        NegativesSpec(mode="random", rescore={"model": "x"})


def test_a_run_rescores_mined_negatives_with_a_cross_encoder(write_spec, tmp_path):
    import json

    from conftest import build_tiny_cross_encoder
    from helpers import cli, query

    teacher = build_tiny_cross_encoder(tmp_path / "cross-encoder")
    spec = write_spec(
        negatives={"mode": "hard", "per_query": 2, "rescore": {"model": str(teacher), "relative_margin": 0.0}},
        train={"epochs": 1},
    )
    result = cli("run", spec, "--db", tmp_path / "r.duckdb")
    assert result.exit_code == 0, result.output
    (info,) = query(tmp_path / "r.duckdb", "SELECT info FROM runs")[0]
    negatives = json.loads(info)["negatives"]
    assert negatives["rescored"] > 0 and negatives["rescored"] <= 4 * 2 * negatives["pairs"]
    # a random teacher scores about half the candidates above the positive: margin 0 drops those
    assert 0 < negatives["dropped_teacher"] < negatives["rescored"]
