"""Evaluation through mteb: a local split wrapped as an in-memory mteb retrieval task, or named mteb hub tasks.

Both paths embed exactly what embx's native evaluation (:mod:`runner.evaluate`) embeds: queries as
``query_prefix + text``, passages as ``passage_prefix + text``, L2-normalised when ``normalize`` is set, with
the model's own ``max_seq_length``, scored by dot product (cosine on normalised embeddings). That is done by
:class:`EmbxEncoder`, a thin implementation of mteb's ``EncoderProtocol`` around the SentenceTransformer; the
retrieval, the top-k and the metrics are mteb's own (``mteb.evaluate``). Nothing is cached or saved: results
are returned, never written to mteb's result cache (``cache=None``) and no prediction files are kept.

Note: ``import mteb`` itself creates mteb's (empty) default cache folder, ``~/.cache/mteb`` or ``$MTEB_CACHE``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from runner.spec.external import check_task_names

if TYPE_CHECKING:
    import numpy as np
    import torch
    from mteb import AbsTask, TaskMetadata, TaskResult
    from mteb.models.model_meta import ModelMeta
    from mteb.types import Array, PromptType
    from sentence_transformers import SentenceTransformer
    from torch.utils.data import DataLoader

    from runner.spec import ModelSpec

log = logging.getLogger(__name__)

TEST_SPLIT = "test"
"""Split of the in-memory task of :func:`mteb_local_scores`; also the split hub tasks are scored on, if they have it."""

MIN_DEPTH = 100
"""Documents retrieved per query (at least; more when a metric's k is larger), as embx's native evaluation."""


def mteb_key(metric: str) -> str:
    """The mteb score key of an embx flat metric key (``ndcg@10`` -> ``ndcg_at_10``, ``mrr@10`` -> ``mrr_at_10``).

    Raises:
        ValueError: For a key not of the form ``name@k`` with a positive integer k.

    """
    name, _, k = metric.partition("@")
    if not name or not k.isdigit() or int(k) < 1:
        raise ValueError(f"metric {metric!r} is not of the form name@k (e.g. ndcg@10)")
    return f"{name}_at_{int(k)}"


def _cutoffs(metrics: list[str]) -> list[int]:
    """The k of every metric key, validating the keys."""
    for metric in metrics:
        mteb_key(metric)
    return sorted({int(m.partition("@")[2]) for m in metrics})


class EmbxEncoder:
    """mteb's ``EncoderProtocol`` around a SentenceTransformer, embedding as embx's native evaluation does.

    Texts mteb hands over for queries get ``spec.query_prefix``, documents ``spec.passage_prefix``; texts of
    tasks without a query/document distinction (``prompt_type`` None: STS, classification, ...) get no prefix.
    The model's own prompts (``model.prompts``) are not used, and the model is not modified.

    Args:
        model: A loaded SentenceTransformer (its ``max_seq_length`` truncates, as in embx's evaluation).
        spec: embx's model section: prefixes and normalisation.
        precision: Inference precision, as ``eval.precision``.

    """

    def __init__(self, model: SentenceTransformer, spec: ModelSpec, precision: str = "auto"):
        self.model = model
        self.spec = spec
        self.precision = precision

    @property
    def mteb_model_meta(self) -> ModelMeta:
        """Metadata mteb records with the results (no cache is written, so it only labels them)."""
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        return ModelMeta.create_empty(
            overwrites={
                "name": f"embx/{self.spec.base.rstrip('/').rsplit('/', 1)[-1]}",
                "revision": self.spec.revision or "local",
                "framework": ["Sentence Transformers"],
                "max_tokens": self.model.max_seq_length,
                "similarity_fn_name": ScoringFunction.COSINE if self.spec.normalize else ScoringFunction.DOT_PRODUCT,
            }
        )

    def prefix(self, prompt_type: PromptType | None) -> str:
        """The prefix for mteb's prompt type (``"query"``, ``"document"`` or None)."""
        if prompt_type == "query":
            return self.spec.query_prefix
        if prompt_type == "document":
            return self.spec.passage_prefix
        return ""

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed the texts of an mteb dataloader with embx's :func:`runner.evaluate.encode`.

        Args:
            inputs: mteb's dataloader; each batch has a ``text`` list (documents: title and text already joined).
            task_metadata: The task's metadata (unused: one prefix per prompt type, whatever the task).
            hf_split: Split being evaluated (unused).
            hf_subset: Subset being evaluated (unused).
            prompt_type: mteb's PromptType: query, document, or None.
            **kwargs: mteb's encode kwargs; ``batch_size`` is used (None: by device), the rest ignored.

        Returns:
            A (n, dim) float32 array in input order.

        """
        from runner.evaluate import encode

        prefix = self.prefix(prompt_type)
        texts = [prefix + text for batch in inputs for text in batch["text"]]
        if not texts:
            raise ValueError("mteb asked to encode no texts")
        label = f"mteb {task_metadata.name}: encode {prompt_type.value if prompt_type is not None else 'texts'}"
        emb = encode(
            self.model,
            texts,
            task="query" if prompt_type is not None and prompt_type.value == "query" else "document",
            batch_size=kwargs.get("batch_size"),
            normalize=self.spec.normalize,
            description=label,
            precision=self.precision,
        )
        return emb.cpu().numpy()

    def similarity(self, embeddings1: Array, embeddings2: Array) -> torch.Tensor:
        """Dot product of every row of `embeddings1` with every row of `embeddings2` (cosine when normalised)."""
        import torch

        return torch.as_tensor(embeddings1).float() @ torch.as_tensor(embeddings2).float().T

    def similarity_pairwise(self, embeddings1: Array, embeddings2: Array) -> torch.Tensor:
        """Dot product of corresponding rows."""
        import torch

        return (torch.as_tensor(embeddings1).float() * torch.as_tensor(embeddings2).float()).sum(dim=-1)


def _local_task(
    name: str,
    corpus: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    k_values: list[int],
) -> AbsTask:
    """An mteb retrieval task over in-memory data, with one split named :data:`TEST_SPLIT`."""
    from datasets import Dataset
    from mteb import TaskMetadata
    from mteb.abstasks import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    task_metadata = TaskMetadata(
        name=name,
        description="An embx data split evaluated in memory (not an mteb benchmark task).",
        dataset={"path": f"embx/{name}", "revision": "local"},
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=[TEST_SPLIT],
        eval_langs=["und-Zyyy"],
        main_score="ndcg_at_10",
    )

    cutoffs = tuple(k_values)

    class EmbxRetrievalTask(AbsTaskRetrieval):
        """The split as an mteb retrieval task; its data never leave memory."""

        metadata = task_metadata
        # Metrics are reported at these cutoffs; the largest is also mteb's retrieval depth.
        k_values = cutoffs
        # embx ranks every document, including one whose id equals the query's id.
        ignore_identical_ids = False
        skip_first_result = False

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            """Build the split from the in-memory data (no download)."""
            if self.data_loaded:
                return
            split = RetrievalSplitData(
                corpus=Dataset.from_dict({"id": list(corpus), "text": list(corpus.values())}),
                queries=Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
                relevant_docs={q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items()},
                top_ranked=None,
            )
            self.dataset = {"default": {TEST_SPLIT: split}}
            self.data_loaded = True

    return EmbxRetrievalTask()


def _run(
    model: SentenceTransformer, spec: ModelSpec, tasks: list[AbsTask], batch_size: int | None, precision: str
) -> list[TaskResult]:
    """``mteb.evaluate`` without result cache, prediction files or CO2 tracking; errors are raised.

    The progress bars of mteb's ``datasets.map`` calls are silenced for the call (embx shows its own).
    """
    import mteb
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    from runner.evaluate import inference_settings

    batch_size = inference_settings(model, batch_size, precision)[0]  # mteb's dataloader needs a number
    bars_were_on = not are_progress_bars_disabled()
    disable_progress_bars()
    try:
        result = mteb.evaluate(
            EmbxEncoder(model, spec, precision),
            tasks,
            cache=None,
            co2_tracker=False,
            overwrite_strategy="always",
            prediction_folder=None,
            encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
            show_progress_bar=False,
            raise_error=True,
        )
    finally:
        if bars_were_on:
            enable_progress_bars()
    return list(result.task_results)


def _flat_scores(result: TaskResult, split: str, metrics: list[str]) -> dict[str, float]:
    """The requested metrics of one split (mean over the task's subsets), by embx flat key."""
    subsets = result.scores.get(split) or []
    if not subsets:
        raise ValueError(f"mteb returned no scores for split {split!r} of task {result.task_name}")
    out: dict[str, float] = {}
    for metric in metrics:
        key = mteb_key(metric)
        if not all(key in scores for scores in subsets):
            log.warning("mteb does not report %s (%s) for task %s; left out", metric, key, result.task_name)
            continue
        out[metric] = float(result.get_score(splits=[split], getter=lambda scores, key=key: scores[key]))
    return out


def mteb_local_scores(
    model: SentenceTransformer,
    *,
    model_spec: ModelSpec,
    corpus: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    metrics: list[str],
    batch_size: int | None,
    name: str = "EmbxLocal",
    precision: str = "auto",
) -> dict[str, float]:
    """Evaluate a model on an embx split with mteb's own retrieval evaluation.

    The split becomes an in-memory mteb retrieval task (no download, nothing written): the whole corpus, the
    queries judged in `qrels`, and `qrels`. Every document is ranked, including one whose id equals a query's
    id (``ignore_identical_ids=False``), down to depth max(100, largest k). mteb strips whitespace around
    document texts, which embx's loaders have already done. Scores agree with
    :func:`runner.evaluate.evaluate` up to mteb's rounding of ndcg/map/recall/precision to 5 decimals.

    Args:
        model: The loaded model.
        model_spec: embx's model section (prefixes, normalisation).
        corpus: Document id -> text (title and body already joined, as embx stores it).
        queries: Query id -> text; only the queries in `qrels` are evaluated.
        qrels: Query id -> {document id: grade} of the split.
        metrics: embx flat keys (``ndcg@10``, ``recall@10``, ``mrr@10``, ``map@100``, ``precision@5``).
        batch_size: Encoding batch size (None: by device).
        precision: Inference precision, as ``eval.precision``.
        name: Name of the in-memory mteb task (shown in mteb's logs).

    Returns:
        Flat key -> value for each requested metric mteb reports; others are left out with a warning.

    Raises:
        ValueError: For a malformed metric key, no judged query, or a judged query or document not in the data.

    """
    ks = _cutoffs(metrics)
    if not qrels:
        raise ValueError("no judged queries to evaluate")
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise ValueError(f"{len(missing)} judged queries have no text, e.g. {missing[0]!r}")
    unknown = sorted({d for docs in qrels.values() for d in docs if d not in corpus})
    if unknown:
        raise ValueError(f"{len(unknown)} judged documents are not in the corpus, e.g. {unknown[0]!r}")
    depth = max([MIN_DEPTH, *ks])
    task = _local_task(name, corpus, {q: queries[q] for q in qrels}, qrels, sorted({1, 10, depth, *ks}))
    (result,) = _run(model, model_spec, [task], batch_size, precision)
    return _flat_scores(result, TEST_SPLIT, metrics)


def mteb_hub_scores(
    model: SentenceTransformer,
    *,
    model_spec: ModelSpec,
    task_names: list[str],
    metrics: list[str],
    batch_size: int | None,
    precision: str = "auto",
) -> dict[str, dict[str, float]]:
    """Evaluate a model on named mteb tasks, downloading their data from the Hugging Face hub (and its cache).

    Each task runs on its main evaluation split only: ``test`` where the task has one, else its first
    evaluation split. The task keeps its own mteb settings (e.g. ``ignore_identical_ids`` where mteb sets it),
    so scores are those of the mteb benchmark; the requested cutoffs are added to the task's ``k_values``.
    Metrics are averaged over the task's subsets (languages) with mteb's ``TaskResult.get_score``.

    Args:
        model: The loaded model.
        model_spec: embx's model section (prefixes, normalisation).
        task_names: mteb task names (``SciFact``, ``NFCorpus``, ...).
        metrics: embx flat keys.
        batch_size: Encoding batch size (None: by device).
        precision: Inference precision, as ``eval.precision``.

    Returns:
        Task name -> {flat key: value}; a metric the task does not report is left out with a warning.

    Raises:
        ValueError: For an unknown task name (with close matches) or a malformed metric key.

    """
    import mteb

    ks = _cutoffs(metrics)
    if not task_names:
        return {}  # mteb.get_tasks(tasks=[]) would return every task
    task_names = list(dict.fromkeys(task_names))
    check_task_names(task_names)
    tasks = list(mteb.get_tasks(tasks=task_names))
    splits: dict[str, str] = {}
    for task in tasks:
        split = TEST_SPLIT if TEST_SPLIT in task.eval_splits else task.eval_splits[0]
        task.filter_eval_splits([split])
        splits[task.metadata.name] = split
        if hasattr(task, "k_values"):
            task.k_values = tuple(sorted({*task.k_values, *ks}))
    results = _run(model, model_spec, tasks, batch_size, precision)
    return {r.task_name: _flat_scores(r, splits[r.task_name], metrics) for r in results}
