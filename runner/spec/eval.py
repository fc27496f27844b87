"""The `eval:` section: metrics, retrievers and further evaluation sets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from runner.spec import external
from runner.spec.base import MetricKey, _Model, check_metric


class EvalSet(_Model):
    """Another evaluation set, scored for the base and the tuned model and reported separately."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Label in reports and the store.")
    source: Literal["beir", "hf"] = Field("beir", description="Format, as data.source.")
    path: str = Field(..., description="Location (relative to the spec).")
    split: str = Field("test", description="Split to score.")
    guard: bool = Field(
        False,
        description="A guard set for `merge:`: the general-domain set the base model was good at, whose relative "
        "drop after tuning must stay within merge.max_guard_drop.",
    )


class IndexEvalSpec(_Model):
    """Approximate search through a vector database's own index, scored beside exact search (`eval.index`)."""

    uri: str | None = Field(
        None,
        description="Vector database to measure: a folder (embedded Chroma) or a server URL http://host:port. "
        "null: a temporary embedded folder. The collection is built for the measurement and dropped after it.",
    )
    k: int = Field(10, ge=1, le=1000, description="Top k compared: NDCG@k and Recall@k of both, ANN recall vs exact.")
    ef_construction: int = Field(100, ge=1, description="HNSW candidate list size while building (Chroma default).")
    ef_search: int = Field(100, ge=1, description="HNSW candidate list size while searching (Chroma default).")
    max_neighbors: int = Field(16, ge=2, description="HNSW links per node, M (Chroma default).")


class EvalSpec(_Model):
    """Evaluation of base and tuned models on the held-out split."""

    metrics: list[MetricKey] = Field(
        default_factory=lambda: ["recall@1", "recall@10", "ndcg@10", "mrr@10", "map@100"],
        min_length=1,
        description="Flat metric keys: recall@k, ndcg@k, mrr@k, map@k, precision@k.",
    )
    main: str = Field("ndcg@10", description="The metric that summaries, reports and searches rank on.")
    baseline: bool = Field(True, description="Also evaluate the untuned base model on the test split.")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Texts per encoding batch (texts are sorted by length first). null: 512 on GPU; on CPU 16 in fp32 "
        "and 32 in bf16 (smaller batches encoded faster there).",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Precision of inference (encoding) under autocast; top-k and metrics are computed in fp32. "
        "auto: fp16 on CUDA; on CPU bf16 where the processor has AMX bf16 matrix units, else fp32.",
    )
    memory_mb: float | None = Field(
        None,
        gt=0,
        description="Most MiB of corpus embeddings held in memory at once, for evaluation and hard-negative mining. "
        "A corpus whose embedding matrix (passages x dim x 4 bytes) is larger is encoded a block at a time into a "
        "float32 .npy file under output.dir/embeddings and searched block by block: exact top-k, the same results, "
        "one block (and its scores against 1,024 queries) in memory. Not part of the spec hash. null: the whole "
        "matrix in memory. eval.two_stage needs it in memory.",
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
    index: IndexEvalSpec | None = Field(
        None,
        description="Also score the tuned model's test split through a vector database's approximate (HNSW) search "
        "beside exact search: NDCG@k and Recall@k of both, ANN recall vs exact, build time, size on disk, query "
        "latency p50/p95 (stored in the run's info as index_eval, shown in the report). null: not measured.",
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
        return list(dict.fromkeys(value))

    @field_validator("main")
    @classmethod
    def _main(cls, value: str) -> str:
        return check_metric(value)

    @field_validator("mteb")
    @classmethod
    def _mteb_tasks(cls, value: list[str]) -> list[str]:
        if value:
            external.check_task_names(value)
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
