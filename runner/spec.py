"""The experiment spec: pydantic models, YAML loading with positions, overrides and inheritance.

A spec is validated once here and then passed around typed. Every field carries a description, which
`embx schema` exports as JSON Schema for editor completion.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

METRIC_PATTERN = re.compile(r"^(recall|ndcg|mrr|map|precision)@([1-9][0-9]*)$")


class _Model(BaseModel):
    """Base for every spec section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_metric(name: str) -> str:
    """Validate a flat metric key such as ``ndcg@10``.

    Args:
        name: The metric key.

    Returns:
        The key, lower-cased.

    Raises:
        ValueError: If the key is not ``recall|ndcg|mrr|map|precision`` followed by ``@k``.

    """
    key = name.strip().lower()
    if not METRIC_PATTERN.match(key):
        raise ValueError(
            f"unknown metric {name!r}: expected recall@k, ndcg@k, mrr@k, map@k or precision@k (e.g. ndcg@10)"
        )
    return key


class ModelSpec(_Model):
    """The base model to fine-tune and how it turns text into one vector."""

    base: str = Field(
        "all-MiniLM-L6-v2",
        description="Built-in offline alias (all-MiniLM-L6-v2), a local model folder, or a Hugging Face hub id.",
    )
    pooling: Literal["mean", "cls", "last_token"] | None = Field(
        None,
        description="Pooling of token embeddings. null keeps the model's own pooling; a value that differs "
        "from the model's is applied and reported.",
    )
    max_seq_length: int = Field(256, ge=8, le=8192, description="Tokens per text; longer texts are truncated.")
    query_prefix: str = Field("", description="Text put before every query, e.g. a bge retrieval instruction.")
    passage_prefix: str = Field("", description="Text put before every passage.")
    normalize: bool = Field(True, description="L2-normalise embeddings, so dot product is cosine similarity.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")


class Splits(_Model):
    """Names of the qrels splits used for training, model selection and the final test."""

    train: str = Field("train", description="Split whose qrels become training pairs.")
    dev: str | None = Field("dev", description="Split for per-epoch evaluation and early stopping; null: none.")
    test: str = Field("test", description="Held-out split on which base and tuned models are compared.")


class MixSource(_Model):
    """Another source whose training pairs are mixed into the training set.

    For example general English pairs kept while tuning on Chinese data, so English retrieval does not degrade.
    """

    source: Literal["beir", "jsonl", "hf"] = Field("beir", description="Format, as data.source.")
    path: str = Field(..., description="Location, as data.path (relative to the spec).")
    split: str = Field("train", description="Split whose pairs are drawn (beir, hf).")
    weight: float = Field(
        ...,
        gt=0,
        le=100,
        description="Pairs drawn from this source per pair of the main source (0.25: one per four main pairs); "
        "a seeded sample, all of them when there are fewer.",
    )


class DataSpec(_Model):
    """Where the training and evaluation data come from."""

    source: Literal["beir", "jsonl", "hf", "documents"] = Field(
        "beir",
        description="beir: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv). jsonl: FlagEmbedding "
        "training JSONL ({query, pos, neg}) at `path`, evaluated on the BEIR folder `eval_path`. hf: a Hugging "
        "Face dataset (hub id or local folder) in the BEIR/mteb layout with configs corpus, queries and "
        "default (qrels, one split per name). documents: a folder of .md, .txt, .html and .pdf files, chunked "
        "as `chunking:` says, with queries made as `queries:` says, split train/dev/test by document.",
    )
    path: str = Field(..., description="Dataset location; relative paths are resolved against the spec file.")
    eval_path: str | None = Field(None, description="BEIR folder to evaluate on (required for source jsonl).")
    revision: str | None = Field(None, description="Hub revision for source hf.")
    splits: Splits = Field(default_factory=Splits, description="Split names.")
    limit: int | None = Field(
        None, ge=1, description="Cap on training pairs, drawn deterministically with `seed`; null: all."
    )
    seed: int = Field(42, description="Seed for the training-pair sample and random negatives.")
    split_shares: tuple[float, float, float] = Field(
        (0.7, 0.1, 0.2),
        description="documents source: shares of documents in train, dev and test (whole documents go to one "
        "split, so no document feeds both sides).",
    )
    on_leak: Literal["error", "warn", "drop"] = Field(
        "warn",
        description="What a train/test leak (the same or a near-identical query or positive in training and "
        "in dev/test) does: error stops the run before training, warn reports it, drop removes the training "
        "pairs that leak.",
    )
    leak_similarity: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Cosine similarity (base model) at or above which two texts count as near-identical.",
    )
    min_chars: int = Field(10, ge=0, description="Texts shorter than this are reported as very short.")
    mix: list[MixSource] = Field(
        default_factory=list,
        description="Other sources mixed into the training pairs with weights; evaluation stays on this source "
        "(see eval.sets to score others). Their pairs get negatives from their own corpus.",
    )

    @model_validator(mode="after")
    def _shares(self) -> DataSpec:
        if abs(sum(self.split_shares) - 1.0) > 1e-6 or min(self.split_shares) < 0:
            raise ValueError(f"split_shares must be three non-negative shares summing to 1, got {self.split_shares}")
        return self

    @model_validator(mode="after")
    def _eval_path_for_jsonl(self) -> DataSpec:
        if self.source == "jsonl" and not self.eval_path:
            raise ValueError("source jsonl needs eval_path: a BEIR folder holding the dev and test splits")
        return self


class SemanticSpec(_Model):
    """Where semantic chunking cuts: between consecutive sentences whose embedding similarity drops."""

    threshold: float | None = Field(
        None, ge=-1, le=1, description="Cut where the cosine similarity of neighbouring sentences is below this."
    )
    percentile: float = Field(
        20.0,
        gt=0,
        lt=100,
        description="Without threshold: cut at the neighbouring-sentence similarities below this percentile "
        "of the document's similarities.",
    )


class ChunkingSpec(_Model):
    """How documents (source documents) are cut into passages, sized in tokens of the base model's tokenizer."""

    strategy: Literal["none", "fixed", "recursive", "paragraph", "semantic"] = Field(
        "recursive",
        description="none: one passage per document section. fixed: windows of chunk_size tokens. recursive: "
        "split at paragraphs, then lines, sentences, words until chunks fit. paragraph: whole paragraphs packed "
        "under headings. semantic: cut where neighbouring sentences' embedding similarity drops.",
    )
    chunk_size: int = Field(200, ge=16, le=8192, description="Largest chunk, in tokens of the base model.")
    overlap: int = Field(20, ge=0, description="Tokens shared by consecutive chunks (fixed and recursive).")
    semantic: SemanticSpec = Field(default_factory=SemanticSpec, description="Semantic chunking cut points.")
    levels: list[Literal["coarse", "fine"]] = Field(
        default_factory=lambda: ["fine"],
        min_length=1,
        description="[fine]: one level. [coarse, fine]: also coarse chunks of coarse_size tokens, each fine chunk "
        "linked to its parent, for two-stage retrieval (eval.two_stage).",
    )
    coarse_size: int = Field(800, ge=16, le=32768, description="Largest coarse chunk, in tokens.")

    @model_validator(mode="after")
    def _sizes(self) -> ChunkingSpec:
        if self.overlap >= self.chunk_size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than chunk_size ({self.chunk_size})")
        if "coarse" in self.levels and self.coarse_size <= self.chunk_size:
            raise ValueError(f"coarse_size ({self.coarse_size}) must be larger than chunk_size ({self.chunk_size})")
        return self


class LLMSpec(_Model):
    """An OpenAI-compatible chat endpoint that writes questions for chunks."""

    base_url: str = Field(
        ..., description="Endpoint base URL, e.g. https://api.openai.com/v1 or http://localhost:8000/v1."
    )
    model: str = Field(..., description="Model name the endpoint serves.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable holding the API key (the key is never stored); null: none.",
    )
    prompt: str | None = Field(
        None,
        description="Jinja template file for the prompt (relative to the spec); null: the built-in one. It gets "
        "`chunk` (text), `title`, `heading_path`, `n` (questions wanted) and must ask for JSON "
        '{"questions": [...]}.',
    )
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature.")
    concurrency: int = Field(4, ge=1, le=256, description="Requests in flight at once.")
    max_retries: int = Field(4, ge=0, le=20, description="Retries per chunk (timeouts, 429, 5xx), with backoff.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds before a request times out.")
    cache: str | None = Field(
        None,
        description="JSONL file of answers, appended as they arrive, so a rerun after a crash only asks for "
        "what is missing; null: <output.dir>/llm-cache/<spec name>.jsonl.",
    )


class QAPairsSpec(_Model):
    """Existing question-answer pairs: each question becomes a query whose positive is the chunk holding its answer."""

    path: str = Field(..., description="CSV or JSONL file (relative to the spec).")
    columns: dict[str, str] = Field(
        default_factory=lambda: {"query": "question", "answer": "answer"},
        description="Column mapping: query (required), answer (text found in the chunk) and/or document "
        "(the source file's doc_id).",
    )


class QueriesSpec(_Model):
    """How queries are made for the chunks of a documents source."""

    generator: Literal["llm", "ict", "heading", "qa_pairs"] = Field(
        "ict",
        description="llm: questions written by an LLM. ict: inverse cloze task (a sentence of the chunk is the "
        "query and is removed from the positive). heading: the chunk's heading or document title is the query. "
        "qa_pairs: existing pairs from `qa_pairs`.",
    )
    per_chunk: int = Field(1, ge=1, le=20, description="Queries per chunk (llm, ict).")
    min_words: int = Field(4, ge=1, description="Queries (and ICT sentences) with fewer words are dropped.")
    seed: int = Field(42, description="Seed for ICT sentence choice and the document split.")
    llm: LLMSpec | None = Field(None, description="The endpoint for generator llm.")
    qa_pairs: QAPairsSpec | None = Field(None, description="The pairs for generator qa_pairs.")

    @model_validator(mode="after")
    def _settings(self) -> QueriesSpec:
        if self.generator == "llm" and self.llm is None:
            raise ValueError("generator llm needs an llm: section (base_url, model)")
        if self.generator == "qa_pairs" and self.qa_pairs is None:
            raise ValueError("generator qa_pairs needs a qa_pairs: section (path, columns)")
        return self


class NegativesSpec(_Model):
    """How negatives are chosen for each (query, positive) pair."""

    mode: Literal["in-batch", "random", "hard"] = Field(
        "in-batch",
        description="in-batch: the other positives of the batch only. random: per_query random corpus "
        "passages (never a known positive). hard: mined with the base model from ranks mine_range.",
    )
    per_query: int = Field(3, ge=1, le=32, description="Explicit negatives per pair (1:3 to 1:5 is typical).")
    mine_range: tuple[int, int] = Field(
        (10, 100),
        description="Ranks [from, to) of the base model's results that hard negatives are drawn from.",
    )
    relative_margin: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Drop mined candidates scoring above (1 - relative_margin) x the positive's score: "
        "they are likely unlabelled positives.",
    )

    @model_validator(mode="after")
    def _range_fits(self) -> NegativesSpec:
        low, high = self.mine_range
        if low < 0 or high <= low:
            raise ValueError(f"mine_range must be [from, to) with 0 <= from < to, got {list(self.mine_range)}")
        if self.mode == "hard" and high - low < self.per_query:
            raise ValueError(f"mine_range {list(self.mine_range)} holds fewer ranks than per_query={self.per_query}")
        return self


class EarlyStopping(_Model):
    """Stop when the dev metric has not improved for `patience` epochs; keep the best epoch's weights."""

    metric: str = Field("recall@10", description="Dev metric to select the best epoch on.")
    patience: int = Field(2, ge=1, description="Epochs without improvement before training stops.")

    _check = field_validator("metric")(classmethod(lambda cls, v: check_metric(v)))


class DistributedSpec(_Model):
    """Training on several processes (GPUs) and machines through torchrun (torch.distributed.run).

    Data, negative mining and evaluation happen once, in the `embx run` process of node_rank 0, which alone
    writes the store; the training processes receive the prepared pairs. `train.batch_size` is per process.
    """

    nproc_per_node: int = Field(
        1, ge=1, le=256, description="Training processes on this machine (one per GPU). 1 on 1 node: no launcher."
    )
    nnodes: int = Field(1, ge=1, le=4096, description="Machines taking part.")
    node_rank: int = Field(
        0, ge=0, description="This machine's rank. 0 prepares data, evaluates and records; others only train."
    )
    master_addr: str = Field("127.0.0.1", description="Address of the node_rank 0 machine, reachable from all.")
    master_port: int = Field(29500, ge=1, le=65535, description="Free TCP port on the node_rank 0 machine.")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend. auto: nccl on CUDA GPUs, gloo on CPU."
    )
    workdir: str | None = Field(
        None,
        description="Folder through which node 0 hands the prepared data to the training processes; with "
        "nnodes > 1 a folder every machine reads and writes (shared filesystem). null: a temporary folder.",
    )

    @property
    def world_size(self) -> int:
        """Training processes in all."""
        return self.nproc_per_node * self.nnodes

    @model_validator(mode="after")
    def _ranks(self) -> DistributedSpec:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        if self.nnodes > 1 and not self.workdir:
            raise ValueError("nnodes > 1 needs workdir: a folder on a filesystem every machine shares")
        return self


class TrainSpec(_Model):
    """Fine-tuning hyperparameters."""

    backend: Literal["sentence-transformers", "flagembedding"] = Field(
        "sentence-transformers",
        description="Training backend. sentence-transformers: SentenceTransformerTrainer with `loss`. "
        "flagembedding: FlagEmbedding's encoder-only embedder fine-tuning (its runner, model and trainer; "
        "train_group_size = 1 + negatives.per_query, temperature = 1 / scale, pooling = model.pooling or the "
        "model's own).",
    )
    loss: Literal["mnrl", "cached-mnrl"] = Field(
        "mnrl",
        description="mnrl: MultipleNegativesRankingLoss (InfoNCE). cached-mnrl: the GradCache variant, for "
        "large batches in little memory.",
    )
    scale: float = Field(20.0, gt=0, description="Similarity scale of the loss (1 / temperature).")
    epochs: int = Field(1, ge=1, le=100, description="Maximum number of epochs.")
    learning_rate: float = Field(2e-5, gt=0, lt=1, description="Peak learning rate (AdamW).")
    batch_size: int = Field(32, ge=2, description="Pairs per batch; every other pair's positive is a negative.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps with linear learning-rate warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Autocast precision over fp32 master weights. auto: bf16 on GPUs that support it, else "
        "fp16 on CUDA; on CPU bf16 where the processor has AMX bf16 matrix units, else fp32. fp16 needs CUDA.",
    )
    loop: Literal["auto", "embx", "trainer"] = Field(
        "auto",
        description="Training loop of the sentence-transformers backend. embx: embx's own loop over the same "
        "modules and loss (texts tokenised once, length-bucketed no-duplicates batches, per-column dynamic "
        "padding, fused AdamW, no per-step host sync). trainer: SentenceTransformerTrainer. auto: embx in one "
        "process, trainer under torchrun.",
    )
    length_buckets: bool = Field(
        True,
        description="embx loop: sort pairs by length inside windows of 32 batches before batching, so batches "
        "pad less; false batches in random order as the trainer does.",
    )
    compile: bool = Field(
        False,
        description="embx loop: torch.compile the transformer (dynamic shapes). Compiling takes tens of "
        "seconds, so it pays off on long GPU runs only.",
    )
    seed: int = Field(42, description="Seed for initialisation order, shuffling and dropout.")
    early_stopping: EarlyStopping | None = Field(
        default_factory=EarlyStopping,
        description="Early stopping on the dev split; null trains all epochs and keeps the last.",
    )
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec, description="Multi-process / multi-node training through torchrun."
    )
    cross_device_negatives: bool = Field(
        False,
        description="With several training processes, gather embeddings across all of them so every query is "
        "scored against the positives and negatives of the whole global batch (sentence-transformers: MNRL "
        "gather_across_devices; FlagEmbedding: negatives_cross_device). No effect in a single process.",
    )
    flagembedding: dict[str, Any] = Field(
        default_factory=dict,
        description="More FlagEmbedding arguments (backend flagembedding only), e.g. {sub_batch_size: 32, "
        "query_max_len: 64, gradient_checkpointing: true}: names and values are checked by FlagEmbedding's own "
        "argument parser when the spec is validated. Arguments that a spec field sets are refused here.",
    )


class EvalSet(_Model):
    """Another evaluation set, scored for the base and the tuned model and reported separately."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Label in reports and the store.")
    source: Literal["beir", "hf"] = Field("beir", description="Format, as data.source.")
    path: str = Field(..., description="Location (relative to the spec).")
    split: str = Field("test", description="Split to score.")


class EvalSpec(_Model):
    """Evaluation of base and tuned models on the held-out split."""

    metrics: list[str] = Field(
        default_factory=lambda: ["recall@1", "recall@10", "ndcg@10", "mrr@10", "map@100"],
        min_length=1,
        description="Flat metric keys: recall@k, ndcg@k, mrr@k, map@k, precision@k.",
    )
    main: str = Field("ndcg@10", description="The metric that summaries, reports and searches rank on.")
    baseline: bool = Field(True, description="Also evaluate the untuned base model on the test split.")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Texts per encoding batch (texts are sorted by length first). null: 64 on CPU, 512 on GPU.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Precision of inference (encoding) under autocast; top-k and metrics are computed in fp32. "
        "auto: fp16 on CUDA; on CPU bf16 where the processor has AMX bf16 matrix units, else fp32.",
    )
    retrievers: list[Literal["dense", "bm25", "hybrid"]] = Field(
        default_factory=lambda: ["dense"],
        min_length=1,
        description="Retrievers scored on the test split: dense (the model), bm25 (bm25s, no model) and hybrid "
        "(reciprocal rank fusion of dense and bm25). Stored with source dense|bm25|hybrid.",
    )
    two_stage: int | None = Field(
        None,
        ge=1,
        description="With chunking.levels [coarse, fine]: also retrieve this many coarse chunks first and rank "
        "only their fine chunks (stored with source two-stage).",
    )
    filter: dict[str, Any] = Field(
        default_factory=dict,
        description="Metadata filter applied before ranking, e.g. {specialty: cardiology}: only passages whose "
        "metadata has these values are retrieved (documents source).",
    )
    sets: list[EvalSet] = Field(
        default_factory=list,
        description="Further evaluation sets (e.g. the general-domain set the base model was good at), each "
        "scored with dense retrieval over its own corpus and stored as split set:<name>, so a gain on one and a "
        "loss on another are both visible.",
    )
    mteb_local: bool = Field(
        False,
        description="Also score the test split with mteb's own retrieval evaluation (the split wrapped as a "
        "custom mteb task, offline); stored beside the native metrics with source mteb.",
    )
    mteb: list[str] = Field(
        default_factory=list,
        description="mteb retrieval task names (e.g. NFCorpus, FiQA2018) on which base and tuned models are also "
        "scored; mteb downloads their data from the Hugging Face hub (needs internet). Stored as split "
        "mteb:<task>, source mteb.",
    )

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        keys = [check_metric(v) for v in value]
        return list(dict.fromkeys(keys))

    @field_validator("main")
    @classmethod
    def _main(cls, value: str) -> str:
        return check_metric(value)

    @field_validator("mteb")
    @classmethod
    def _mteb_tasks(cls, value: list[str]) -> list[str]:
        if value:
            from runner.mteb_eval import check_task_names

            check_task_names(value)
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _main_listed(self) -> EvalSpec:
        if self.main not in self.metrics:
            self.metrics = [*self.metrics, self.main]
        return self

    @property
    def depth(self) -> int:
        """Number of results to retrieve per query so that every metric can be computed."""
        return max(100, *(int(m.split("@")[1]) for m in self.metrics))


class OutputSpec(_Model):
    """What is written besides the store."""

    save_model: bool = Field(False, description="Keep the tuned model under `dir`/<run_id>.")
    dir: str = Field("runs", description="Folder for saved models and checkpoints (relative: to the cwd).")
    embedding_cache: bool = Field(
        True,
        description="Keep the base model's corpus embeddings under `dir`/embeddings, keyed by the model's files, "
        "the corpus text and the encoding settings, so later runs, variants and search workers on the same "
        "model and data do not encode the corpus again.",
    )


class AblateSpec(_Model):
    """Variants of the spec, each run as its own run under the same experiment."""

    mode: Literal["one-at-a-time", "grid"] = Field(
        "one-at-a-time",
        description="one-at-a-time: the base spec plus one variant per factor value, changing only that factor. "
        "grid: every combination of the factor values.",
    )
    factors: dict[str, list[Any]] = Field(
        ...,
        min_length=1,
        description="Dotted spec path -> values, e.g. {train.learning_rate: [1.0e-5, 5.0e-6]}.",
    )
    repeats: int = Field(1, ge=1, le=20, description="Runs per variant, with train.seed + 0, 1, ... .")

    @field_validator("factors")
    @classmethod
    def _non_empty(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if key.split(".")[0] in ("ablate", "name"):
                raise ValueError(f"factor {key!r}: {key.split('.')[0]} cannot be ablated")
            if not values:
                raise ValueError(f"factor {key!r} has no values")
        return value


class SearchParam(_Model):
    """The range of one searched spec field: {low, high[, log][, step]} or {choices}."""

    low: float | None = Field(None, description="Lower bound (inclusive).")
    high: float | None = Field(None, description="Upper bound (inclusive).")
    log: bool = Field(False, description="Sample on a log scale.")
    step: float | None = Field(None, gt=0, description="Step between values (not with log).")
    choices: list[Any] | None = Field(None, min_length=1, description="Explicit values to choose from.")

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchParam:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or give choices)")
        if self.high < self.low:
            raise ValueError(f"high {self.high} is below low {self.low}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log ranges need low > 0 and no step")
        return self


class SearchSpec(_Model):
    """An Optuna search over spec fields; every trial is an ordinary run, scored on the dev split."""

    trials: int = Field(20, ge=1, description="Number of trials (finished or pruned) in the study.")
    objective: str = Field("ndcg@10", description="Dev-split metric to optimise (never the test split).")
    direction: Literal["maximize", "minimize"] = Field("maximize", description="Optimisation direction.")
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="tpe (seeded), random (seeded) or grid (every combination of choices/steps)."
    )
    pruner: Literal["median", "none"] = Field(
        "median", description="median: stop a trial whose per-epoch dev objective falls below the median of others."
    )
    seed: int = Field(42, description="Sampler seed.")
    params: dict[str, SearchParam] = Field(
        ..., min_length=1, description="Dotted spec path -> range, e.g. train.learning_rate: {low: 1e-6, high: 1e-4}."
    )

    _check = field_validator("objective")(classmethod(lambda cls, v: check_metric(v)))


class Spec(_Model):
    """One experiment: a base model, data, negatives, training and evaluation."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Experiment name.")
    description: str = Field("", description="Free text shown in listings and reports.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Base model.")
    data: DataSpec = Field(..., description="Data source.")
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec, description="Chunking (documents source).")
    queries: QueriesSpec = Field(default_factory=QueriesSpec, description="Query generation (documents source).")
    negatives: NegativesSpec = Field(default_factory=NegativesSpec, description="Negative sampling.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Outputs besides the store.")
    ablate: AblateSpec | None = Field(None, description="Ablation: variants run as separate runs; see below.")
    search: SearchSpec | None = Field(None, description="Optuna search space for `embx search`; see below.")

    @model_validator(mode="after")
    def _search_needs_dev(self) -> Spec:
        if self.search is not None and self.data.splits.dev is None:
            raise ValueError("data.splits.dev: search scores trials on the dev split: set data.splits.dev")
        return self

    @model_validator(mode="after")
    def _two_stage_needs_levels(self) -> Spec:
        if self.eval.two_stage is not None and "coarse" not in self.chunking.levels:
            raise ValueError("eval.two_stage: two-stage retrieval needs chunking.levels: [coarse, fine]")
        if self.eval.two_stage is not None and self.data.source != "documents":
            raise ValueError("eval.two_stage: two-stage retrieval needs data.source: documents")
        return self

    @model_validator(mode="after")
    def _backend_arguments(self) -> Spec:
        if self.train.backend != "flagembedding":
            if self.train.flagembedding:
                raise ValueError("train.flagembedding: only used with train.backend: flagembedding")
            return self
        if self.train.loss != "mnrl":
            raise ValueError(
                f"train.loss: {self.train.loss} is a sentence-transformers loss; FlagEmbedding trains with its "
                "own InfoNCE (mnrl); for large batches in little memory set train.flagembedding.sub_batch_size"
            )
        from runner.train.flagembedding import check_arguments

        check_arguments(self)
        return self

    @model_validator(mode="after")
    def _loop(self) -> Spec:
        if self.train.loop == "embx" and self.train.backend != "sentence-transformers":
            raise ValueError("train.loop: embx is the sentence-transformers backend's loop; use auto")
        if self.train.loop == "embx" and self.train.distributed.world_size > 1:
            raise ValueError("train.loop: embx trains in one process; under torchrun use auto or trainer")
        return self

    @model_validator(mode="after")
    def _early_stopping_needs_dev(self) -> Spec:
        if self.train.early_stopping is not None and self.data.splits.dev is None:
            raise ValueError(
                "data.splits.dev: train.early_stopping needs a dev split: set data.splits.dev or early_stopping: null"
            )
        return self

    def resolved_json(self) -> str:
        """Canonical JSON of the resolved spec (sorted keys), the input of :meth:`spec_hash`."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def variant(self, changes: dict[str, Any]) -> Spec:
        """A copy without `ablate`, with dotted-path changes applied and validated.

        Raises:
            pydantic.ValidationError: If a change makes the spec invalid.

        """
        data = self.model_dump(mode="json", exclude={"ablate", "search"})
        for path, value in changes.items():
            apply_override(data, path.split("."), value)
        return Spec.model_validate(data)

    def spec_hash(self) -> str:
        """Content hash of the resolved spec: equal hashes mean the same experiment."""
        return hashlib.sha256(self.resolved_json().encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- loading


@dataclass
class Problem:
    """One validation problem, located in a file."""

    file: str
    line: int | None
    col: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.path or '<spec>'}: {self.message}"


@dataclass
class SpecError(Exception):
    """A spec that failed to load or validate; holds every problem found, not only the first."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in spec:"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


@dataclass
class LoadedSpec:
    """A validated spec with the text and location it came from."""

    spec: Spec
    path: Path
    text: str
    overrides: list[str]


Position = tuple[str, int | None, int | None]


def _yaml():
    from ruamel.yaml import YAML

    # The round-trip loader keeps line/column positions; it constructs plain mappings, sequences and
    # scalars only and never executes code from the document.
    return YAML(typ="rt", pure=True)


def _read_yaml(path: Path) -> tuple[Any, str]:
    from ruamel.yaml.error import MarkedYAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem(str(path), None, None, "", "file not found")]) from None
    try:
        doc = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise SpecError([Problem(str(path), line, col, "", f"invalid YAML: {exc.problem or exc}")]) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SpecError([Problem(str(path), 1, 1, "", "a spec must be a YAML mapping")])
    return doc, text


def _positions(node: Any, file: str, prefix: tuple = (), out: dict | None = None) -> dict[tuple, Position]:
    """Map every key path of a ruamel document to (file, line, col), 1-based."""
    out = {} if out is None else out
    if isinstance(node, dict):
        for key in node:
            try:
                line, col = node.lc.key(key)
                out[(*prefix, str(key))] = (file, line + 1, col + 1)
            except (AttributeError, KeyError, TypeError):
                out[(*prefix, str(key))] = (file, None, None)
            _positions(node[key], file, (*prefix, str(key)), out)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            try:
                line, col = node.lc.item(i)
                out[(*prefix, str(i))] = (file, line + 1, col + 1)
            except (AttributeError, KeyError, TypeError, IndexError):
                pass
            _positions(item, file, (*prefix, str(i)), out)
    return out


def _plain(node: Any) -> Any:
    """Convert ruamel containers and scalars to plain Python values."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _merge(base: dict, top: dict) -> dict:
    """Deep-merge two spec mappings; `top` wins, nested mappings merge, lists are replaced."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load_tree(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, dict[tuple, Position], str]:
    """Load a spec file and everything it `extends`, returning the merged mapping and key positions."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise SpecError([Problem(str(path), None, None, "extends", f"circular extends: {chain}")])
    doc, text = _read_yaml(path)
    positions = _positions(doc, str(path))
    data = _plain(doc)
    parent = data.pop("extends", None)
    if parent is None:
        return _relativise(data, path.parent, _source(data, {})), positions, text
    if not isinstance(parent, str):
        file, line, col = positions[("extends",)]
        raise SpecError([Problem(file, line, col, "extends", "extends must be a path to another spec file")])
    parent_path = (path.parent / parent).resolve()
    if not parent_path.exists():
        file, line, col = positions[("extends",)]
        raise SpecError([Problem(file, line, col, "extends", f"file not found: {parent_path}")])
    base_data, base_positions, _ = _load_tree(parent_path, (*seen, path))
    relative = _relativise(data, path.parent, _source(data, base_data))
    return _merge(base_data, relative), {**base_positions, **positions}, text


def _source(data: dict, inherited: dict) -> str:
    """The data source in effect for a spec file: its own, else the one it inherits, else beir."""
    for mapping in (data, inherited):
        section = mapping.get("data")
        if isinstance(section, dict) and isinstance(section.get("source"), str):
            return section["source"]
    return "beir"


def _relativise(data: dict, folder: Path, source: str) -> dict:
    """Resolve data paths relative to the spec file that names them (hub ids of hf sources are left alone)."""
    section = data.get("data")
    if isinstance(section, dict):
        for key in ("path", "eval_path"):
            value = section.get(key)
            if not isinstance(value, str):
                continue
            expanded = Path(value).expanduser()
            if expanded.is_absolute():
                section[key] = str(expanded)
                continue
            candidate = folder / expanded
            if candidate.exists() or source != "hf" or key == "eval_path":
                section[key] = str(candidate.resolve())
    for section, key in (("data", "mix"), ("eval", "sets")):
        node = data.get(section)
        items = node.get(key) if isinstance(node, dict) else None
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("path"), str):
                candidate = folder / Path(item["path"]).expanduser()
                if candidate.exists() or item.get("source") != "hf":
                    item["path"] = str(candidate.resolve())
    queries = data.get("queries")
    if isinstance(queries, dict):
        for section, key in (("llm", "prompt"), ("llm", "cache"), ("qa_pairs", "path")):
            node = queries.get(section)
            if isinstance(node, dict) and isinstance(node.get(key), str):
                node[key] = str((folder / Path(node[key]).expanduser()).resolve())
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("base"), str):
        candidate = folder / model["base"]
        if model["base"].startswith((".", "/")) or candidate.exists():
            model["base"] = str(candidate.resolve())
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``dotted.key=value``; the value is read as a YAML scalar or flow collection.

    Args:
        text: The override as given on the command line.

    Returns:
        The key path and the value; the schema then types the value.

    Raises:
        SpecError: If there is no ``=`` or the key is empty.

    """
    from ruamel.yaml.error import YAMLError

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecError([Problem("--set", None, None, text, "expected dotted.key=value")])
    try:
        value = _plain(_yaml().load(io.StringIO(raw))) if raw.strip() else ""
    except YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(
            [Problem(f"--set {text}", None, None, key.strip(), f"invalid value {raw!r}: {problem}")]
        ) from None
    return key.strip().split("."), value


def apply_override(data: dict, keys: list[str], value: Any) -> None:
    """Set ``data[k1][k2]... = value``, creating mappings on the way."""
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def _section_fields(loc: tuple) -> list[str]:
    """Field names that are valid at the mapping addressed by `loc` (for "did you mean")."""
    model: type[BaseModel] | None = Spec
    for part in loc:
        if model is None or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        model = next(
            (
                a
                for a in (annotation, *getattr(annotation, "__args__", ()))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
    return list(model.model_fields) if model is not None else []


def _problems(exc: ValidationError, positions: dict[tuple, Position], main_file: str) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        # A cross-field rule names the field it blames as "dotted.path: message"; point at that field.
        blamed = re.match(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$", message, flags=re.S)
        if blamed:
            loc = (*loc, *blamed.group(1).split("."))
            message = blamed.group(2)
        if err["type"] == "extra_forbidden":
            valid = _section_fields(loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
            message = f"unknown key {loc[-1]!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            if not close and valid:
                message += f" (valid keys: {', '.join(valid)})"
        elif err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict):
            message += f" (got {err['input']!r})"
        where = next((positions[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in positions), None)
        file, line, col = where if where else (main_file, None, None)
        problems.append(Problem(file, line, col, ".".join(loc), message))
    return problems


def load_spec(path: str | Path, overrides: list[str] | None = None) -> LoadedSpec:
    """Load, merge (`extends`), override (`--set`) and validate a spec file.

    Args:
        path: The YAML spec.
        overrides: ``dotted.key=value`` strings applied after loading.

    Returns:
        The validated spec with its source text.

    Raises:
        SpecError: With every problem found, each located at file:line:col where possible.

    """
    path = Path(path)
    overrides = list(overrides or [])
    data, positions, text = _load_tree(path)
    for item in overrides:
        keys, value = parse_override(item)
        if keys[0] == "data" and len(keys) == 2 and keys[1] in ("path", "eval_path") and isinstance(value, str):
            value = str(Path(value).resolve()) if Path(value).exists() else value
        apply_override(data, keys, value)
        positions[tuple(keys)] = (f"--set {item}", None, None)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_problems(exc, positions, str(path.resolve()))) from None
    if spec.ablate is not None:
        _check_paths("ablate.factors", spec.ablate.factors, spec, positions, str(path.resolve()))
    if spec.search is not None:
        ranges = {name: search_values(param) for name, param in spec.search.params.items()}
        _check_paths("search.params", ranges, spec, positions, str(path.resolve()))
    return LoadedSpec(spec=spec, path=path.resolve(), text=text, overrides=overrides)


def _check_paths(
    section: str, values_by_path: dict[str, list[Any]], spec: Spec, positions: dict[tuple, Position], main_file: str
) -> None:
    """Check that every dotted path of `ablate.factors` or `search.params` exists and each value validates.

    Runs before any variant or trial does, so a bad value fails at once, naming its factor and line.
    """
    problems = []
    for path, values in values_by_path.items():
        file, line, col = positions.get((*section.split("."), path), (main_file, None, None))
        problem = _path_problem(path.split("."))
        if problem:
            problems.append(Problem(file, line, col, f"{section}.{path}", problem))
            continue
        for value in values:
            if isinstance(value, float) and value.is_integer() and isinstance(_value_at(spec, path), int):
                value = int(value)
            try:
                spec.variant({path: value})
            except ValidationError as exc:
                reasons = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
                problems.append(Problem(file, line, col, f"{section}.{path}", f"value {value!r} is invalid: {reasons}"))
    if problems:
        raise SpecError(problems)


def _path_problem(keys: list[str]) -> str | None:
    """Why a dotted path is not a spec field (None if it is one)."""
    fields = _section_fields(tuple(keys[:-1]))
    if fields and keys[-1] in fields:
        return None
    valid = fields or list(Spec.model_fields)
    close = difflib.get_close_matches(keys[-1], valid, n=1, cutoff=0.6)
    return "unknown spec path" + (f"; did you mean {'.'.join([*keys[:-1], close[0]])!r}?" if close else "")


def search_values(param: SearchParam) -> list[Any]:
    """The values whose validity bounds a search range: its choices, or its two ends."""
    return list(param.choices) if param.choices is not None else [param.low, param.high]


def _value_at(spec: Spec, path: str) -> Any:
    node: Any = spec
    for key in path.split("."):
        node = getattr(node, key, None)
    return node


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file (what `embx schema` prints)."""
    schema = Spec.model_json_schema()
    schema["properties"]["extends"] = {"type": "string", "description": "Path of a spec this one extends."}
    return schema


def reference_markdown() -> str:
    """The spec reference as a Markdown table per section, generated from the models' field descriptions.

    README.md embeds this text between ``<!-- spec-reference -->`` markers; a test keeps the two equal.
    """
    import typing

    def type_name(annotation: Any) -> str:
        origin = typing.get_origin(annotation)
        if origin is Literal:
            return " \\| ".join(str(a) for a in typing.get_args(annotation))
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            return " \\| ".join(type_name(a) for a in typing.get_args(annotation) if a is not type(None)) + " \\| null"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return "mapping"
        return getattr(annotation, "__name__", str(annotation)).replace("|", "\\|")

    def default(info) -> str:
        if info.is_required():
            return "required"
        value = info.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            return "see below"
        return f"`{json.dumps(value)}`"

    lines: list[str] = []
    sections: list[tuple[str, type[BaseModel]]] = [("", Spec)]
    for prefix, model in sections:
        lines += [f"#### `{prefix or 'top level'}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            annotation = info.annotation
            nested = next(
                (
                    a
                    for a in (annotation, *typing.get_args(annotation))
                    if isinstance(a, type) and issubclass(a, BaseModel)
                ),
                None,
            )
            key = f"{prefix}.{name}" if prefix else name
            if nested is not None:
                sections.append((key, nested))
            description = (info.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {type_name(annotation)} | {default(info)} | {description} |")
        lines.append("")
    lines.append(
        "`extends: other.yaml` (top level) merges this spec over another; paths stay relative to the file "
        "that names them."
    )
    return "\n".join(lines) + "\n"
