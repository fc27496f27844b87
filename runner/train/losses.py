"""The training loss of the sentence-transformers backend, built from `train:` with sentence-transformers' classes.

One place for both loops (embx's and the trainer) and for torchrun's workers: InfoNCE (MNRL) or its GradCache
variant, with the hardness weighting and the extra similarity terms (symmetric, GTE-style: `directions`) MNRL now
has; GISTEmbed, which masks the in-batch and mined negatives a guide model scores above the positive (the false
negatives that in-batch and mined negatives bring); MarginMSE and KL-divergence distillation from a cross-encoder
teacher's logits (``Pair.teacher_scores``); and Matryoshka as a modifier over any of them.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from runner.spec import Spec

log = logging.getLogger(__name__)

CACHED_MINI_BATCH = 32
"""Pairs per forward pass of the cached (GradCache) losses."""


def build_loss(model: SentenceTransformer, spec: Spec, *, gather: bool = False) -> Any:
    """The loss `spec.train` names, over `model`.

    Args:
        model: The model to train.
        spec: The run's spec.
        gather: Gather embeddings across devices (torchrun), so every rank sees the global batch's negatives.

    Raises:
        ValueError: A Matryoshka dimension larger than the model's embedding.

    """
    from sentence_transformers.sentence_transformer import losses

    from runner.models import embedding_dim

    cfg = spec.train
    if cfg.loss in ("margin-mse", "distill-kl"):
        scaled = functools.partial(_scaled_cosine, scale=cfg.scale)
        if cfg.loss == "margin-mse":
            loss = losses.MarginMSELoss(model, similarity_fct=scaled)
        else:
            loss = losses.DistillKLDivLoss(model, similarity_fct=scaled, temperature=1.0)
    elif cfg.loss in ("gist", "cached-gist"):
        guide = guide_model(model, spec)
        common = {
            "temperature": 1.0 / cfg.scale,
            "margin_strategy": "absolute",
            "margin": cfg.gist_margin or 0.0,
            "gather_across_devices": gather,
        }
        if cfg.loss == "cached-gist":
            loss = losses.CachedGISTEmbedLoss(model, guide, mini_batch_size=CACHED_MINI_BATCH, **common)
        else:
            loss = losses.GISTEmbedLoss(model, guide, **common)
    else:
        common = {
            "scale": cfg.scale,
            "gather_across_devices": gather,
            "hardness_mode": cfg.hardness_mode,
            "hardness_strength": cfg.hardness_strength or 0.0,
            "directions": tuple(cfg.directions or ("query_to_doc",)),
            "partition_mode": cfg.partition_mode or "joint",
        }
        if cfg.loss == "cached-mnrl":
            loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=CACHED_MINI_BATCH, **common)
        else:
            loss = losses.MultipleNegativesRankingLoss(model, **common)
    if cfg.matryoshka_dims:
        full = embedding_dim(model)
        too_large = [d for d in cfg.matryoshka_dims if d > full]
        if too_large:
            raise ValueError(f"train.matryoshka_dims: {too_large} exceed the model's {full} dimensions")
        weights = [(cfg.matryoshka_weights or {}).get(d, 1.0) for d in cfg.matryoshka_dims]
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=cfg.matryoshka_dims, matryoshka_weights=weights)
    return loss


def _scaled_cosine(a: torch.Tensor, b: torch.Tensor, *, scale: float) -> torch.Tensor:
    """The student's score of each row pair on the teacher's logit scale: `scale` x their cosine, as MNRL scores."""
    import torch.nn.functional as F

    return scale * F.cosine_similarity(a, b, dim=-1)


def guide_model(model: SentenceTransformer, spec: Spec) -> SentenceTransformer:
    """The GISTEmbed guide, frozen: `train.guide` loaded, or a copy of the base model before any training step."""
    import copy

    if spec.train.guide is None:
        guide = copy.deepcopy(model)
        source = "a frozen copy of the base model"
    else:
        from runner.models import load_model
        from runner.spec import ModelSpec

        guide = load_model(
            ModelSpec(base=spec.train.guide, max_seq_length=spec.model.max_seq_length), model.device.type
        )
        source = spec.train.guide
    guide.eval()
    for parameter in guide.parameters():
        parameter.requires_grad_(False)
    log.info("gist: guide model is %s", source)
    return guide
