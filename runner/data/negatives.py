"""Negatives for training pairs: in-batch only, random corpus passages, or hard negatives mined."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from runner.data.types import Pair
from runner.spec.train import DISTILLATION_LOSSES

if TYPE_CHECKING:
    import torch

    from runner.matrix import DiskMatrix
    from runner.spec import NegativesSpec

log = logging.getLogger(__name__)


@dataclass
class NegativeStats:
    """What negative sampling did, stored with the run.

    Attributes:
        mode: in-batch, random or hard.
        pairs: Training pairs.
        per_query: Negatives attached to each pair (0 for in-batch).
        candidates: Candidates considered (hard: results in mine_range).
        dropped_positive: Candidates dropped because they are known positives of the query.
        dropped_margin: Candidates dropped as likely false negatives (score above (1 - margin) x positive).
        filled_random: Slots filled with random passages because too few mined candidates survived.
        rescored: Candidates the cross-encoder teacher scored (``negatives.rescore``).
        dropped_teacher: Candidates dropped because the teacher scored them close to the positive.
        teacher_scored: (query, passage) pairs the teacher scored as distillation targets (distillation losses).

    """

    mode: str
    pairs: int
    per_query: int = 0
    candidates: int = 0
    dropped_positive: int = 0
    dropped_margin: int = 0
    filled_random: int = 0
    rescored: int = 0
    dropped_teacher: int = 0
    teacher_scored: int = 0

    def as_dict(self) -> dict[str, int | str]:
        """Plain dict for the store."""
        return asdict(self)


def _positives(pairs: list[Pair], known: dict[str, set[str]]) -> list[set[str]]:
    """Texts that must never be a negative for each pair: every known positive of its query."""
    by_query: dict[str, set[str]] = {}
    for pair in pairs:
        by_query.setdefault(pair.query, set()).add(pair.positive)
    return [by_query[p.query] | known.get(p.query, set()) for p in pairs]


def random_negatives(
    pairs: list[Pair], pool: list[str], per_query: int, seed: int, known: dict[str, set[str]] | None = None
) -> tuple[list[Pair], NegativeStats]:
    """Attach `per_query` random passages from `pool` to each pair, never a known positive of its query.

    Args:
        pairs: Training pairs.
        pool: Candidate passage texts (the corpus).
        per_query: Negatives per pair.
        seed: Sampling seed.
        known: Query text -> texts of all its positives (beyond those present in `pairs`).

    """
    rng = random.Random(seed)
    excluded = _positives(pairs, known or {})
    stats = NegativeStats("random", len(pairs), per_query)
    out = []
    for pair, banned in zip(pairs, excluded):
        picked: list[str] = []
        while len(picked) < per_query:
            cand = pool[rng.randrange(len(pool))]
            stats.candidates += 1
            if cand in banned:
                stats.dropped_positive += 1
            elif cand not in picked:
                picked.append(cand)
            if stats.candidates > 100 * len(pairs) * per_query:
                raise ValueError("the corpus holds too few passages that are not positives to sample negatives from")
        out.append(Pair(pair.query, pair.positive, pair.query_id, pair.positive_id, picked))
    return out, stats


def mine_hard_negatives(
    pairs: list[Pair],
    *,
    pool: list[str],
    query_emb: torch.Tensor,
    positive_emb: torch.Tensor,
    pool_emb: torch.Tensor | DiskMatrix,
    spec: NegativesSpec,
    seed: int,
    known: dict[str, set[str]] | None = None,
    teacher: Teacher | None = None,
) -> tuple[list[Pair], NegativeStats]:
    """Attach hard negatives mined with the base model's embeddings.

    For each pair: rank the pool by similarity to the query, take ranks ``mine_range`` (0-based, [from,
    to)), drop known positives, drop candidates scoring above ``(1 - relative_margin) x`` the positive's
    score (likely unlabelled positives), and draw ``per_query`` of the rest at random (seeded). If fewer
    survive, random pool passages fill the gap (counted in ``filled_random``). With ``spec.rescore`` and a
    `teacher`, the surviving candidates are rescored first (:func:`rescore_candidates`).

    Args:
        pairs: Training pairs.
        pool: Candidate passage texts (the corpus).
        query_emb: (len(pairs), d) query embeddings, aligned with `pairs`.
        positive_emb: (len(pairs), d) embeddings of each pair's positive.
        pool_emb: (len(pool), d) pool embeddings, in memory or on disk (``eval.memory_mb``: searched a block at a
            time, exactly).
        spec: Negatives settings.
        seed: Sampling seed.
        known: Query text -> texts of all its positives.
        teacher: Scores (query, passage) pairs, higher = more relevant (a cross-encoder); used with spec.rescore.

    """
    from runner.evaluate import exact_top_k

    low, high = spec.mine_range
    rng = random.Random(seed)
    excluded = _positives(pairs, known or {})
    stats = NegativeStats("hard", len(pairs), spec.per_query)
    pos_scores = (query_emb * positive_emb).sum(dim=1).cpu().tolist()
    scores, indices = exact_top_k(query_emb, pool_emb, high)
    candidates: list[tuple[list[str], set[str]]] = []
    for row, banned in enumerate(excluded):
        limit = (1.0 - spec.relative_margin) * pos_scores[row]
        kept: list[str] = []
        too_close: set[str] = set()
        for score, j in zip(scores[row, low:].tolist(), indices[row, low:].tolist()):
            stats.candidates += 1
            text = pool[j]
            if text in banned:
                stats.dropped_positive += 1
            elif score > limit:
                stats.dropped_margin += 1
                too_close.add(text)
            elif text not in kept:
                kept.append(text)
        candidates.append((kept, too_close))
    if teacher is not None and spec.rescore is not None:
        candidates = rescore_candidates(pairs, candidates, teacher=teacher, spec=spec, seed=seed, stats=stats)
    out = []
    for pair, banned, (kept, too_close) in zip(pairs, excluded, candidates):
        picked = rng.sample(kept, spec.per_query) if len(kept) >= spec.per_query else kept
        tries = 0
        while len(picked) < spec.per_query:
            tries += 1
            if tries > 1000 * spec.per_query:
                raise ValueError("the pool holds too few passages that are not positives to fill the negatives")
            cand = pool[rng.randrange(len(pool))]
            if cand not in banned and cand not in too_close and cand not in picked:
                picked.append(cand)
                stats.filled_random += 1
        out.append(Pair(pair.query, pair.positive, pair.query_id, pair.positive_id, picked))
    log.info(
        "hard negatives: %d candidates, %d known positives dropped, %d within margin dropped, %d random fills",
        stats.candidates,
        stats.dropped_positive,
        stats.dropped_margin,
        stats.filled_random,
    )
    return out, stats


Teacher = Callable[[list[tuple[str, str]]], list[float]]
"""Scores (query, passage) pairs, higher = more relevant: the cross-encoder of ``negatives.rescore``."""


def rescore_candidates(
    pairs: list[Pair],
    candidates: list[tuple[list[str], set[str]]],
    *,
    teacher: Teacher,
    spec: NegativesSpec,
    seed: int,
    stats: NegativeStats,
) -> list[tuple[list[str], set[str]]]:
    """Keep only the mined candidates the teacher does not score close to the pair's positive.

    For each pair, ``rescore.shortlist x per_query`` of its candidates (drawn with their own seeded generator,
    so mining without a teacher draws exactly as before) are scored with the positive in one teacher call; a
    candidate scoring above ``(1 - rescore.relative_margin) x`` the positive's score is dropped (and never
    drawn as a random fill either).

    Returns:
        (kept, too close) per pair, as `candidates`.

    """
    assert spec.rescore is not None
    rng = random.Random(seed + 7919)
    size = spec.rescore.shortlist * spec.per_query
    shortlists = [rng.sample(kept, min(size, len(kept))) for kept, _ in candidates]
    asked = [(p.query, p.positive) for p in pairs]
    asked += [(p.query, text) for p, shortlist in zip(pairs, shortlists) for text in shortlist]
    scores = teacher(asked)
    positive, rest = scores[: len(pairs)], iter(scores[len(pairs) :])
    out = []
    for row, (shortlist, (_, too_close)) in enumerate(zip(shortlists, candidates)):
        limit = (1.0 - spec.rescore.relative_margin) * positive[row]
        kept = []
        for text in shortlist:
            stats.rescored += 1
            if next(rest) > limit:
                stats.dropped_teacher += 1
                too_close = too_close | {text}
            else:
                kept.append(text)
        out.append((kept, too_close))
    log.info("negatives rescored: %d candidates, %d dropped by the teacher", stats.rescored, stats.dropped_teacher)
    return out


def cross_encoder_teacher(spec: NegativesSpec, device: str) -> Callable[..., list[float]]:
    """The ``negatives.rescore`` teacher: sentence-transformers' CrossEncoder, loaded once.

    The scorer returns its scores after its activation (rescoring, whose relative margin needs scores of one
    sign), or with ``logits=True`` its raw logits (the distillation targets).
    """
    import torch
    from sentence_transformers import CrossEncoder

    from runner.models import resolve_model

    assert spec.rescore is not None
    cfg = spec.rescore
    model = CrossEncoder(resolve_model(cfg.model).location, device=device)

    def score(asked: list[tuple[str, str]], *, logits: bool = False) -> list[float]:
        if not asked:
            return []
        activation = {"activation_fn": torch.nn.Identity()} if logits else {}
        values = model.predict(
            asked, batch_size=cfg.batch_size, show_progress_bar=False, convert_to_numpy=True, **activation
        )
        return [float(v) for v in values.reshape(len(asked), -1)[:, -1]]

    return score


def with_teacher_scores(pairs: list[Pair], teacher: Teacher) -> list[Pair]:
    """The pairs with the teacher's scores of their positive, then of each negative (``Pair.teacher_scores``)."""
    asked = [(p.query, text) for p in pairs for text in (p.positive, *p.negatives)]
    scores = iter(teacher(asked))
    out = [
        Pair(
            p.query,
            p.positive,
            p.query_id,
            p.positive_id,
            p.negatives,
            [next(scores) for _ in range(1 + len(p.negatives))],
        )
        for p in pairs
    ]
    log.info("teacher scores: %d (query, passage) pairs scored for distillation", len(asked))
    return out


def attach_negatives(spec, pairs: list[Pair], *, data, model, index) -> tuple[list[Pair], NegativeStats]:
    """Give every pair the negatives the spec's `negatives.mode` asks for.

    The pool is the corpus for BEIR/hf sources, and every pos/neg text of the file for JSONL sources.
    Known positives (all train judgements of a query) are never used as negatives.

    Args:
        spec: The run's spec.
        pairs: Training pairs, prefixes not yet applied.
        data: The loaded :class:`RetrievalData`.
        model: The base model (hard mining).
        index: The corpus index, whose base embeddings are reused when the pool is the corpus.

    """
    cfg = spec.negatives
    if cfg.mode == "in-batch":
        return [Pair(p.query, p.positive, p.query_id, p.positive_id) for p in pairs], NegativeStats(
            "in-batch", len(pairs)
        )
    known: dict[str, set[str]] = {}
    if data.train_pairs is None:
        for qid, docs in data.split(spec.data.splits.train).items():
            known[data.queries[qid]] = {data.corpus[d] for d, grade in docs.items() if grade > 0}
        pool, pool_label = index.texts, "base"
    else:
        for p in data.train_pairs:
            known.setdefault(p.query, set()).add(p.positive)
        pool = list(dict.fromkeys(t for p in data.train_pairs for t in (p.positive, *p.negatives)))
        pool_label = None
    if cfg.mode == "random":
        return random_negatives(pairs, pool, cfg.per_query, spec.data.seed, known)

    from runner.evaluate import encode
    from runner.matrix import gather

    m = spec.model
    if pool_label is not None:
        pool_emb = index.embed(pool_label, model, m, spec.eval.batch_size, spec.eval.precision)
    else:
        pool_texts = [m.passage_prefix + t for t in pool]
        pool_emb = encode(
            model,
            pool_texts,
            task="document",
            batch_size=spec.eval.batch_size,
            normalize=m.normalize,
            description="encode pool",
            precision=spec.eval.precision,
        )
    row = {text: i for i, text in enumerate(pool)}
    queries = list(dict.fromkeys(p.query for p in pairs))
    q_texts = [m.query_prefix + q for q in queries]
    q_emb = encode(
        model,
        q_texts,
        task="query",
        batch_size=spec.eval.batch_size,
        normalize=m.normalize,
        description="mine negatives",
        precision=spec.eval.precision,
    )
    q_row = {q: i for i, q in enumerate(queries)}
    query_emb = q_emb[[q_row[p.query] for p in pairs]]
    if pool_label is not None:  # the corpus: find positives by id (a training positive may differ, e.g. ICT)
        id_row = {doc_id: i for i, doc_id in enumerate(index.ids)}
        positive_emb = gather(pool_emb, [id_row[p.positive_id] for p in pairs])
    else:
        positive_emb = gather(pool_emb, [row[p.positive] for p in pairs])
    positive_emb = positive_emb.to(query_emb.device)
    teacher = cross_encoder_teacher(cfg, model.device.type) if cfg.rescore is not None else None
    mined, stats = mine_hard_negatives(
        pairs,
        pool=pool,
        query_emb=query_emb,
        positive_emb=positive_emb,
        pool_emb=pool_emb,
        spec=cfg,
        seed=spec.data.seed,
        known=known,
        teacher=teacher,
    )
    if spec.train.loss in DISTILLATION_LOSSES:
        assert teacher is not None  # the spec asks distillation for a rescore teacher
        mined = with_teacher_scores(mined, functools.partial(teacher, logits=True))
        stats.teacher_scored = sum(len(p.teacher_scores or []) for p in mined)
    return mined, stats
