"""A query-side linear adapter over the frozen base model (``train.query_adapter``).

Queries pass through a learned d x d linear map after the base model; passages keep the base model's embeddings,
so a corpus indexed with the base model needs no re-indexing. The model handed back is a sentence-transformers
model with a :class:`~sentence_transformers.base.modules.Router` (its own module for asymmetric models): the
query route is the base modules, then a Dense layer (the adapter) and, when the spec normalises, a Normalize; the
document route is the same base modules, shared. ``encode(task="query")`` / ``encode_query`` apply the adapter,
``encode(task="document")`` / ``encode_document`` do not, and saving writes the base modules once
(sentence-transformers 6; 5.x writes them twice).

Training runs over embeddings the frozen base computes once (each distinct query and passage of the pairs), so an
epoch is a few matrix products: InfoNCE over the batch's positives and mined negatives, with a passage that is the
query's own positive never counted as one of its negatives (the same passage can be two pairs' positive).
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

from runner.models import FROZEN_DOCUMENTS
from runner.train.base import DEV_NAME, BestEpoch, DevEval, LogHook, TrainOutcome

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from sentence_transformers import SentenceTransformer

    from runner.data.types import Pair
    from runner.spec import Spec

log = logging.getLogger(__name__)


def adapted_model(base: SentenceTransformer, adapter: torch.nn.Linear, *, normalize: bool) -> SentenceTransformer:
    """The base model with `adapter` on its query route only (see the module docstring).

    Args:
        base: The frozen base model.
        adapter: A d x d linear map without bias; its weight is shared, not copied (training updates the model).
        normalize: Add a Normalize after the adapter, so ``encode_query`` returns unit vectors as the spec's
            normalisation does.

    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Router

    dim = adapter.weight.shape[0]
    dense = Dense(dim, dim, bias=False, activation_function=torch.nn.Identity())
    dense.linear = adapter
    base_modules = list(base.children())
    query_modules = [*base_modules, dense, *([Normalize()] if normalize else [])]
    router = Router.for_query_document(query_modules=query_modules, document_modules=base_modules)
    model = SentenceTransformer(modules=[router], device=str(base.device))
    setattr(model, FROZEN_DOCUMENTS, True)
    return model


class QueryAdapterBackend:
    """Trains ``train.query_adapter`` (see :class:`runner.spec.QueryAdapterSpec`)."""

    name = "query-adapter"

    def train(
        self,
        model: SentenceTransformer,
        pairs: list[Pair],
        spec: Spec,
        dev: DevEval | None,
        workdir: Path,
        *,
        on_log: LogHook | None = None,
    ) -> TrainOutcome:
        """Train the adapter over `model` (frozen) on `pairs`; see :class:`runner.train.TrainBackend`."""
        import torch

        from runner.embed_api import ApiEmbedder
        from runner.evaluate import encode

        cfg, settings = spec.train, spec.train.query_adapter
        assert settings is not None
        m = spec.model
        started = time.perf_counter()
        over_api = isinstance(model, ApiEmbedder)  # settings.api: the endpoint's cached vectors, no weights
        if not over_api:
            model.eval().requires_grad_(False)
        queries = list(dict.fromkeys(p.query for p in pairs))
        passages = list(dict.fromkeys(t for p in pairs for t in (p.positive, *p.negatives)))
        common = {"batch_size": spec.eval.batch_size, "normalize": m.normalize, "precision": spec.eval.precision}
        with torch.no_grad():
            q_emb = encode(model, [m.query_prefix + q for q in queries], task="query", description="queries", **common)
            p_emb = encode(
                model, [m.passage_prefix + t for t in passages], task="document", description="passages", **common
            )
        embed_seconds = time.perf_counter() - started
        q_row = {q: i for i, q in enumerate(queries)}
        p_row = {t: i for i, t in enumerate(passages)}
        query_of = torch.tensor([q_row[p.query] for p in pairs], device=q_emb.device)
        positive_of = torch.tensor([p_row[p.positive] for p in pairs], device=q_emb.device)
        negatives_of = [[p_row[t] for t in p.negatives] for p in pairs]

        torch.manual_seed(cfg.seed)
        dim = q_emb.shape[1]
        adapter = torch.nn.Linear(dim, dim, bias=False, device=q_emb.device)
        with torch.no_grad():
            adapter.weight.copy_(torch.eye(dim, device=q_emb.device))
        if over_api:  # passages stay the endpoint's cached vectors
            from runner.api_adapter import AdaptedApiEmbedder

            tuned = AdaptedApiEmbedder(model, adapter, normalize=m.normalize)
        else:
            tuned = adapted_model(model, adapter, normalize=m.normalize)
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=settings.learning_rate, weight_decay=0.0)
        rng = random.Random(cfg.seed)
        stopping = cfg.early_stopping
        dev_metric = stopping.metric if stopping else spec.eval.main
        log_rows: list[tuple[int, float, str, float]] = []
        best = BestEpoch(stopping.patience) if stopping is not None else None
        step, epochs_run, eval_seconds = 0, 0, 0.0
        order = list(range(len(pairs)))
        for epoch in range(1, settings.epochs + 1):
            rng.shuffle(order)
            total, batches = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                rows = order[start : start + cfg.batch_size]
                loss = _info_nce(
                    adapter,
                    q_emb[query_of[rows]],
                    p_emb,
                    positives=positive_of[rows],
                    negatives=[negatives_of[r] for r in rows],
                    scale=cfg.scale,
                    normalize=m.normalize,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, batches, step = total + float(loss.detach()), batches + 1, step + 1
            epochs_run = epoch
            rows_now = [(step, float(epoch), "loss", total / max(batches, 1))]
            if dev is not None:
                dev_started = time.perf_counter()
                tuned.eval()
                metrics = dev(tuned)
                eval_seconds += time.perf_counter() - dev_started
                rows_now += [(step, float(epoch), f"{DEV_NAME}_{k}", float(v)) for k, v in metrics.items()]
            log_rows += rows_now
            if on_log is not None:
                on_log(rows_now)
            if dev is None or best is None:
                continue
            log.info("adapter epoch %d: dev %s = %.4f", epoch, dev_metric, metrics[dev_metric])
            if best.stop_after(epoch, metrics[dev_metric], lambda: adapter.weight.detach().clone()):
                break
        best_epoch = epochs_run
        if best is not None and best.epoch is not None:
            with torch.no_grad():
                adapter.weight.copy_(best.weights)
            best_epoch = best.epoch
        adapter.requires_grad_(False)
        tuned.eval()
        return TrainOutcome(
            model=tuned,
            log=log_rows,
            epochs_run=epochs_run,
            best_epoch=best_epoch,
            seconds=time.perf_counter() - started,
            eval_seconds=eval_seconds,
            samples=len(pairs) * epochs_run,
            steps=step,
            precision="fp32",
            details={
                "loop": "query-adapter",
                "embed_seconds": round(embed_seconds, 3),
                "queries": len(queries),
                "passages": len(passages),
                "adapter_shift": round(float((adapter.weight - torch.eye(dim, device=q_emb.device)).norm()), 4),
            },
        )


def _info_nce(
    adapter: torch.nn.Linear,
    queries: torch.Tensor,
    passages: torch.Tensor,
    *,
    positives: torch.Tensor,
    negatives: list[list[int]],
    scale: float,
    normalize: bool,
) -> torch.Tensor:
    """InfoNCE of the adapted `queries` over the batch's positives and negatives (rows of `passages`).

    A candidate that is the query's own positive passage anywhere but at its target column (the same passage
    as another pair's positive, or mined as a negative) is masked, not scored as a negative.
    """
    import torch
    import torch.nn.functional as F

    candidates = torch.cat(
        [positives, torch.tensor([n for row in negatives for n in row], dtype=torch.long, device=positives.device)]
    )
    adapted = adapter(queries)
    if normalize:
        adapted = F.normalize(adapted, dim=-1)
    logits = scale * adapted @ passages[candidates].T
    targets = torch.arange(len(positives), device=positives.device)
    same = candidates[None, :] == positives[:, None]
    same[targets, targets] = False
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, targets)
