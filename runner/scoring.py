"""Scoring models for a run: evaluators bound to data and settings, called with a model.

As sentence-transformers' ``InformationRetrievalEvaluator``: an evaluator is built once with its queries,
judgements, corpus and the spec's settings, then called with any model (the base model, a training epoch's,
the tuned model). One :class:`RetrievalEvaluator` per split serves base, per-epoch dev and tuned scoring, in
embx's loop, the trainer and under torchrun (where it travels to the training processes as JSON), so the
settings cannot drift between them. :class:`RunScorer` adds what a run scores besides dense retrieval on its
own test split: BM25, hybrid and two-stage retrieval, extra evaluation sets and mteb.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.memo import (
    Memo,
    baseline_key,
    bm25_key,
    eval_set_index_key,
    eval_set_key,
    index_key,
    model_key,
)
from runner.records import BASE, DENSE, DEV, MTEB_SPLIT_PREFIX, TEST, TUNED, Scores
from runner.spec import EvalSpec, ModelSpec

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from runner.data.types import RetrievalData
    from runner.evaluate import CorpusIndex, EvalResult
    from runner.spec import Spec

log = logging.getLogger(__name__)

Timer = Callable[[str], Any]
"""A context-manager factory timing a named stage (``with timer("retrievers"): ...``)."""


class RetrievalEvaluator:
    """Dense retrieval of one split's judged queries over the corpus (or its filtered part), scored by pytrec_eval.

    Args:
        index: The corpus, with the base model's embeddings cached in it.
        queries: Query texts (only the judged ones are used).
        qrels: Judgements of the split.
        model: The spec's model section (prefixes, normalisation).
        settings: The spec's eval section (metrics, depth, batch size, precision).
        allowed: Passage ids `eval.filter` lets through; None: all.

    """

    def __init__(
        self,
        *,
        index: CorpusIndex,
        queries: dict[str, str],
        qrels: dict[str, dict[str, int]],
        model: ModelSpec,
        settings: EvalSpec,
        allowed: set[str] | None = None,
    ) -> None:
        self.index, self.queries, self.qrels = index, queries, qrels
        self.model, self.settings, self.allowed = model, settings, allowed

    def __call__(self, model: SentenceTransformer, *, label: str | None = None, dim: int | None = None) -> EvalResult:
        """Score `model`; `label` caches its corpus embeddings in the index (None: encode afresh).

        `dim` scores the first `dim` dimensions only (a Matryoshka-trained model's smaller index).
        """
        from runner.evaluate import evaluate

        cfg = self.settings
        return evaluate(
            model,
            label=label,
            index=self.index,
            queries=self.queries,
            qrels=self.qrels,
            spec=self.model,
            metrics=cfg.metrics,
            depth=cfg.depth,
            batch_size=cfg.batch_size,
            allowed=self.allowed,
            precision=cfg.precision,
            dim=dim,
        )

    def metrics(self, model: SentenceTransformer) -> dict[str, float]:
        """Flat metric keys -> values, uncached: the per-epoch dev scorer the training backends call."""
        return self(model).metrics

    def to_json(self) -> dict[str, Any]:
        """Everything needed to rebuild this evaluator in another process (a torchrun training rank)."""
        return {
            "corpus": dict(zip(self.index.ids, self.index.texts)),
            "queries": {q: self.queries[q] for q in self.qrels},
            "qrels": self.qrels,
            "allowed": sorted(self.allowed) if self.allowed is not None else None,
            "model": self.model.model_dump(mode="json"),
            "settings": self.settings.model_dump(mode="json"),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetrievalEvaluator:
        """The evaluator :meth:`to_json` described, with a fresh corpus index."""
        import tempfile

        from runner.evaluate import CorpusIndex

        allowed = data.get("allowed")
        settings = EvalSpec.model_validate(data["settings"])
        spill = Path(tempfile.gettempdir()) / "embx-embeddings"
        return cls(
            index=CorpusIndex(data["corpus"], memory_mb=settings.memory_mb, spill=spill),
            queries=data["queries"],
            qrels=data["qrels"],
            model=ModelSpec.model_validate(data["model"]),
            settings=settings,
            allowed=set(allowed) if allowed is not None else None,
        )


class RunScorer:
    """Everything one run scores, bound to its spec and data; called with the base model, then the tuned one.

    Work that does not depend on the run (the base model's scores, BM25 runs, loaded evaluation sets, corpus
    indexes) is shared through the memo, under the keys of :mod:`runner.memo`.

    Args:
        spec: The run's spec.
        data: The run's data (corpus, queries, splits, metadata).
        memo: Work shared between the runs of this process.
        evaluate_test: Score the test split (search trials score dev only).

    """

    def __init__(self, spec: Spec, *, data: RetrievalData, memo: Memo, evaluate_test: bool = True) -> None:
        from runner.evaluate import CorpusIndex

        splits = spec.data.splits
        self.spec, self.data, self.memo, self.evaluate_test = spec, data, memo, evaluate_test
        self.test_qrels = data.split(splits.test)
        self.dev_qrels = data.split(splits.dev) if splits.dev else None
        self.allowed = filtered_ids(spec, data)
        spill = Path(spec.output.dir) / "embeddings"
        disk = spill if spec.output.embedding_cache else None
        self.index: CorpusIndex = memo.get(
            "index",
            index_key(spec),
            lambda: CorpusIndex(data.corpus, disk, model_key(spec), memory_mb=spec.eval.memory_mb, spill=spill),
        )
        self.test = self._evaluator(self.test_qrels)
        self.dev = self._evaluator(self.dev_qrels) if self.dev_qrels else None

    def _evaluator(self, qrels: dict[str, dict[str, int]]) -> RetrievalEvaluator:
        return RetrievalEvaluator(
            index=self.index,
            queries=self.data.queries,
            qrels=qrels,
            model=self.spec.model,
            settings=self.spec.eval,
            allowed=self.allowed,
        )

    def base(
        self,
        model: SentenceTransformer,
        *,
        run_id: str,
        stored: Callable[[str, str], tuple[EvalResult, str] | None],
        timer: Timer,
    ) -> Scores:
        """Score the base model: dense test (when `eval.baseline`) and dev, other retrievers, sets and mteb.

        Args:
            model: The base model.
            run_id: This run, credited with scores it computes.
            stored: (baseline key, split) -> (result, run id) of an earlier run in the store, or None.
            timer: Times the stages ``eval_base``, ``retrievers`` and ``mteb``.

        """
        spec, scores = self.spec, Scores()
        key = baseline_key(spec)
        with_test = spec.eval.baseline and self.evaluate_test
        with timer("eval_base"):
            for split, evaluator in ((TEST, self.test if with_test else None), (DEV, self.dev)):
                if evaluator is None:
                    continue

                def compute(split=split, evaluator=evaluator):
                    return stored(key, split) or (evaluator(model, label=BASE), run_id)

                result, source = self.memo.get("baseline", f"{key}:{split}", compute)
                scores.dense[split, BASE] = result
                scores.baseline_from[split] = source
        if not with_test:
            return scores
        with timer("retrievers"):

            def base_run():
                return self.test(model, label=BASE).run

            found = self.memo.get("baseline", f"{key}:others", lambda: self._other_retrievers(model, BASE, base_run))
            scores.others.update({(source, BASE): v for source, v in found.items()})
            sets = self.memo.get("baseline", f"{key}:sets", lambda: self._set_metrics(model, BASE))
            scores.sets.update({(name, BASE): v for name, v in sets.items()})
            dims = spec.train.matryoshka_dims
            found = self.memo.get("baseline", f"{key}:dims:{dims}", lambda: self._truncated(model, BASE))
            scores.others.update({(source, BASE): v for source, v in found.items()})
        with timer("mteb"):
            found, _ = self.memo.get("baseline", f"{key}:mteb", lambda: (self._mteb(model), run_id))
            scores.mteb.update({(BASE, split): v for split, v in found.items()})
        return scores

    def tuned(self, model: SentenceTransformer, *, into: Scores, timer: Timer) -> Scores:
        """Score the tuned model on test and dev, other retrievers, sets and mteb, adding to `into`.

        Its corpus embeddings are this run's own: they are dropped from the shared index afterwards.
        """
        with timer("eval_tuned"):
            self.index.embeddings.pop(TUNED, None)
            if self.evaluate_test:
                into.dense[TEST, TUNED] = self.test(model, label=TUNED)
        if self.evaluate_test and self.spec.eval.index is not None:
            with timer("index_eval"):
                into.index_eval = self._index_eval(model)
        with timer("eval_tuned"):
            if self.dev is not None:
                into.dense[DEV, TUNED] = self.dev(model, label=TUNED)
        with timer("retrievers"):
            cfg = self.spec.eval
            if self.evaluate_test and (len(cfg.retrievers) > 1 or cfg.two_stage):
                tuned_run = into.dense[TEST, TUNED].run
                found = self._other_retrievers(model, TUNED, lambda: tuned_run)
                into.others.update({(source, TUNED): v for source, v in found.items() if source != "bm25"})
            if self.evaluate_test:
                into.others.update({(source, TUNED): v for source, v in self._truncated(model, TUNED).items()})
            self.index.embeddings.pop(TUNED, None)
            if self.evaluate_test:
                into.sets.update({(name, TUNED): v for name, v in self._set_metrics(model, None).items()})
        with timer("mteb"):
            if self.evaluate_test:
                into.mteb.update({(TUNED, split): v for split, v in self._mteb(model).items()})
        return into

    def _index_eval(self, model: SentenceTransformer) -> dict[str, Any]:
        """The tuned model's test split through the vector database's approximate search, beside exact search."""
        from runner.evaluate import encode
        from runner.index_eval import evaluate_index

        spec = self.spec
        qids = list(self.test_qrels)
        query_emb = encode(
            model,
            [spec.model.query_prefix + self.data.queries[q] for q in qids],
            task="query",
            batch_size=spec.eval.batch_size,
            normalize=spec.model.normalize,
            description="encode queries (index eval)",
            precision=spec.eval.precision,
        )
        figures = evaluate_index(
            corpus_ids=self.index.ids,
            corpus_emb=self.index.embeddings[TUNED],
            query_ids=qids,
            query_emb=query_emb,
            qrels=self.test_qrels,
            settings=spec.eval.index,
        )
        return {**figures, "model": "tuned model"}

    def _other_retrievers(self, model, label: str, dense_run: Callable[[], dict]) -> dict[str, dict[str, float]]:
        """Test metrics of the retrievers besides dense: bm25, hybrid (RRF of dense and bm25) and two-stage.

        Args:
            model: The model (base or tuned) for hybrid and two-stage.
            label: Its label in the index, whose corpus embeddings two-stage reuses.
            dense_run: Returns the model's dense run of the test queries at full depth (for hybrid).

        Returns:
            Retriever name -> flat metric key -> value.

        """
        from runner.evaluate import encode, score_run

        spec, data, qrels, allowed = self.spec, self.data, self.test_qrels, self.allowed
        cfg, out = spec.eval, {}
        depth = cfg.depth
        queries = {q: data.queries[q] for q in qrels}
        if "bm25" in cfg.retrievers or "hybrid" in cfg.retrievers:
            from runner.retrieval import bm25_run

            key = bm25_key(spec, allowed=allowed, qids=list(qrels))
            bm25 = self.memo.get("bm25", key, lambda: bm25_run(data.corpus, queries, depth, allowed))
            if "bm25" in cfg.retrievers:
                out["bm25"] = score_run(qrels, bm25, cfg.metrics)[0]
            if "hybrid" in cfg.retrievers:
                from runner.retrieval import fuse_rrf

                out["hybrid"] = score_run(qrels, fuse_rrf([dense_run(), bm25], depth), cfg.metrics)[0]
        if cfg.two_stage:
            import torch

            from runner.retrieval import two_stage_run

            m = spec.model
            fine_emb = self.index.embed(label, model, m, cfg.batch_size, cfg.precision)  # already encoded
            if not isinstance(fine_emb, torch.Tensor):
                raise ValueError(
                    f"eval.two_stage needs the corpus embeddings in memory, and {len(self.index.ids)} passages exceed "
                    f"eval.memory_mb={cfg.memory_mb}: raise eval.memory_mb or drop eval.two_stage"
                )
            coarse_ids = list(data.coarse)
            coarse_texts = [m.passage_prefix + data.coarse[c] for c in coarse_ids]
            coarse_emb = encode(
                model,
                coarse_texts,
                task="document",
                batch_size=cfg.batch_size,
                normalize=m.normalize,
                description="encode coarse chunks",
                precision=cfg.precision,
            )
            qids = list(qrels)
            q_texts = [m.query_prefix + queries[q] for q in qids]
            q_emb = encode(
                model,
                q_texts,
                task="query",
                batch_size=cfg.batch_size,
                normalize=m.normalize,
                description="encode queries (two-stage)",
                precision=cfg.precision,
            )
            run = two_stage_run(
                q_emb,
                coarse_ids=coarse_ids,
                coarse_emb=coarse_emb,
                fine_ids=self.index.ids,
                fine_emb=fine_emb,
                parent_of=data.parents,
                qids=qids,
                top_coarse=cfg.two_stage,
                k=depth,
                allowed=allowed,
            )
            out["two-stage"] = score_run(qrels, run, cfg.metrics)[0]
        return out

    def _truncated(self, model, label: str) -> dict[str, dict[str, float]]:
        """Test metrics at each `train.matryoshka_dims` size below the model's own, as sources ``dense@<d>``."""
        from runner.models import embedding_dim

        dims = self.spec.train.matryoshka_dims or []
        full = embedding_dim(model) if dims and hasattr(model, "get_sentence_embedding_dimension") else None
        return {f"{DENSE}@{d}": self.test(model, label=label, dim=d).metrics for d in dims if full is None or d < full}

    def _set_metrics(self, model, label: str | None) -> dict[str, dict[str, float]]:
        """Dense-retrieval metrics of `model` on each `eval.sets` entry, over that set's own corpus."""
        from runner.data import load_source
        from runner.evaluate import CorpusIndex

        spec, out = self.spec, {}
        for entry in spec.eval.sets:
            data = self.memo.get(
                "data", eval_set_key(entry), lambda entry=entry: load_source(entry.source, entry.path, [entry.split])
            )
            index = self.memo.get(
                "index",
                eval_set_index_key(entry, spec),
                lambda data=data: CorpusIndex(
                    data.corpus, memory_mb=spec.eval.memory_mb, spill=Path(spec.output.dir) / "embeddings"
                ),
            )
            evaluator = RetrievalEvaluator(
                index=index,
                queries=data.queries,
                qrels=data.split(entry.split),
                model=spec.model,
                settings=spec.eval,
            )
            out[entry.name] = evaluator(model, label=label).metrics
            main = spec.eval.main
            log.info("eval set %s (%s): %s %.4f", entry.name, label or TUNED, main, out[entry.name][main])
        return out

    def _mteb(self, model) -> dict[str, dict[str, float]]:
        """Scores by mteb's evaluation: the run's test split (``eval.mteb_local``) and hub tasks (``eval.mteb``)."""
        cfg, out = self.spec.eval, {}
        if not (cfg.mteb_local or cfg.mteb):
            return out
        from runner import mteb_eval

        if cfg.mteb_local:
            out[TEST] = mteb_eval.mteb_local_scores(
                model,
                model_spec=self.spec.model,
                corpus=self.data.corpus,
                queries=self.data.queries,
                qrels=self.test_qrels,
                metrics=cfg.metrics,
                batch_size=cfg.batch_size,
                precision=cfg.precision,
            )
        if cfg.mteb:
            for task, scores in mteb_eval.mteb_hub_scores(
                model,
                model_spec=self.spec.model,
                task_names=cfg.mteb,
                metrics=cfg.metrics,
                batch_size=cfg.batch_size,
                precision=cfg.precision,
            ).items():
                out[f"{MTEB_SPLIT_PREFIX}{task}"] = scores
        return out


def filtered_ids(spec: Spec, data: RetrievalData) -> set[str] | None:
    """The passage ids `eval.filter` lets through (None: no filter)."""
    if not spec.eval.filter:
        return None
    from runner.retrieval import filter_ids

    allowed = filter_ids(data.meta, spec.eval.filter)
    if not allowed:
        raise ValueError(f"eval.filter {spec.eval.filter} matches no passage of {data.source}")
    return allowed
