"""The `train:` section: hyperparameters, early stopping and distributed training."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from runner.spec.base import _Model, check_metric, check_tracking_uri
from runner.spec.select import ApiModelSpec

TRACKERS: dict[str, tuple[str | None, str | None]] = {
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "trackio": ("trackio", "trackio"),
    "comet_ml": ("comet_ml", "comet-ml"),
    "neptune": ("neptune", "neptune"),
    "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"),
    "codecarbon": ("codecarbon", "codecarbon"),
    "azure_ml": ("azureml", "azureml-core"),
    "dagshub": ("dagshub", "dagshub"),
    "flyte": ("flytekit", "flytekit"),
    "swanlab": ("swanlab", "swanlab"),
    "kubeflow": (None, None),  # transformers 5: reports to the Kubeflow Trainer's server, no package needed
}
"""transformers' reporting integrations (``report_to`` names): name -> (module that must be importable, pip package),
None for nothing to install. mlflow is satisfied by the client alone (mlflow-skinny); tests/test_trackers.py checks
the names against transformers' own list."""

TRACKERS_SINCE: dict[str, int] = {"kubeflow": 5}
"""Integrations that only a later transformers major has: name -> the first major with it (the ``[onnx]`` extra
keeps transformers 4)."""


def transformers_major() -> int:
    """The installed transformers' major version, read from its metadata (no import)."""
    from importlib.metadata import version

    return int(version("transformers").split(".")[0])


DISTILLATION_LOSSES = ("margin-mse", "distill-kl")
"""Losses trained on the teacher's scores (``negatives.rescore``) instead of on in-batch negatives."""

EMBX_TRACKERS = ("mlflow", "wandb", "tensorboard", "trackio")
"""Trackers embx logs to itself through their clients (every loop); the others only through the trainer loop."""


def trainer_report_to(names: list[str] | None) -> list[str] | str:
    """The trainer's `report_to`: the integrations of `names` that embx does not log itself, or ``"none"``."""
    return [name for name in names or [] if name not in EMBX_TRACKERS] or "none"


class EarlyStopping(_Model):
    """Stop when the dev metric has not improved for `patience` epochs; keep the best epoch's weights."""

    metric: str | None = Field(
        None,
        description="Dev metric to select the best epoch on. null: eval.main (filled in when the spec is validated, "
        "so the stored spec names it).",
    )
    patience: int = Field(2, ge=1, description="Epochs without improvement before training stops.")
    keep_base: bool | None = Field(
        None,
        description="true: the base model is epoch 0: when no trained epoch beats its dev score, the run keeps (and "
        "saves) the base model and says so, so no run hands on a model worse on dev than the one it started from. "
        "recipe: auto sets it. null: keep the best trained epoch.",
    )

    _check = field_validator("metric")(classmethod(lambda cls, v: v if v is None else check_metric(v)))


class LoraSpec(_Model):
    """Parameter-efficient training: LoRA adapters (peft) on the transformer, the base weights frozen.

    After training the adapters are folded into the weights, so the saved model is a plain one that every tool,
    `merge:` and `embx export` handle; the adapters alone are also saved, in ``<saved model>/lora-adapter``.
    """

    r: int = Field(8, ge=1, le=256, description="Rank of each adapter.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (the adapter's update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] | None = Field(
        None,
        description="Names of the linear layers that get adapters (e.g. [query, key, value, dense]); null: peft's "
        "default for the architecture (query and value for BERT).",
    )


class QueryAdapterSpec(_Model):
    """A query-side linear adapter over the frozen base model, instead of fine-tuning it.

    Queries pass through a learned d x d linear map (initialised to the identity) after the base model; passages
    keep the base model's embeddings, so a corpus already indexed with the base model needs no re-indexing. It is
    trained with InfoNCE (scale `train.scale`, batches of `train.batch_size` pairs, in-batch and mined negatives;
    a passage that is the query's own positive is never counted as one of its negatives) over embeddings the
    frozen base computes once, so an epoch takes seconds even on a CPU; `train.early_stopping` picks the epoch.
    The saved model is a sentence-transformers model with a Router: `encode_query` applies the adapter,
    `encode_document` is the base model.
    """

    epochs: int = Field(
        30, ge=1, le=1000, description="Maximum epochs over the training pairs (this replaces train.epochs)."
    )
    learning_rate: float = Field(
        3e-4,
        gt=0,
        lt=1,
        description="AdamW learning rate of the adapter (this replaces train.learning_rate). 3e-4: the best of "
        "1e-3, 3e-4 and 1e-4 on the medical demo, close to the best (1e-4) on financial_qa_10k (bench/README).",
    )
    api: ApiModelSpec | None = Field(
        None,
        description="Train over an API model's embeddings instead of model.base's (the same block as its select "
        "candidate's `api:`; a YAML anchor writes it once). The corpus must already be in the API embedding cache "
        "(output.dir/embeddings/api-embeddings.sqlite: `embx select` with this model as a candidate fills it), so "
        "the adapter learns against the vectors the index holds; training queries are embedded through the "
        "endpoint and cached. model.base still chunks documents and runs the data checks. The saved model is the "
        "adapter with the endpoint's settings (never the key): runner.api_adapter.AdaptedApiEmbedder.load reads it.",
    )


class LrProbeSpec(_Model):
    """A short probe on dev that picks `train.learning_rate` before training.

    Each rate trains a copy of the base model for one pass over `pairs` training pairs (drawn with `train.seed`;
    the run's loss, batch size, warm-up, negatives and precision), and the copy is scored on dev (`eval.main`).
    The best rate becomes the run's learning rate (a tie goes to the rate nearest `train.learning_rate`); the
    copies are discarded and training starts from the base model. It costs `len(rates)` short trainings and dev
    evaluations; the run's `lr_probe` info records each rate's dev score.
    """

    rates: list[float] = Field(
        [2e-5, 5e-5, 1e-4],
        min_length=2,
        description="Peak learning rates to try (each in (0, 1)).",
    )
    pairs: int = Field(
        256,
        ge=8,
        description="Training pairs each probe trains on, one pass (all of them when the set is smaller).",
    )

    @field_validator("rates")
    @classmethod
    def _rates(cls, value: list[float]) -> list[float]:
        bad = [r for r in value if not 0 < r < 1]
        if bad:
            raise ValueError(f"rates: {bad} are not learning rates in (0, 1)")
        if len(set(value)) != len(value):
            raise ValueError("rates: a rate is listed twice")
        return value


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
    loss: Literal["mnrl", "cached-mnrl", "gist", "cached-gist", "margin-mse", "distill-kl"] = Field(
        "mnrl",
        description="mnrl: MultipleNegativesRankingLoss (InfoNCE). cached-mnrl: the GradCache variant, for "
        "large batches in little memory. gist: GISTEmbedLoss, InfoNCE whose in-batch and mined negatives are "
        "masked where the `guide` model scores them above the positive (false negatives); cached-gist: its "
        "GradCache variant. margin-mse (MarginMSELoss) and distill-kl (DistillKLDivLoss): distillation from the "
        "cross-encoder teacher of negatives.rescore, whose logits for each pair's positive and mined negatives "
        "are the targets (the student's score is scale x its cosine similarity, on the teacher's logit scale); "
        "FlagEmbedding takes distill-kl as its knowledge distillation (kl_div). All are sentence-transformers' "
        "own classes.",
    )
    scale: float = Field(20.0, gt=0, description="Similarity scale of the loss (1 / temperature).")
    guide: str | None = Field(
        None,
        description="gist losses: the guide model (alias, local folder or hub id). null: a frozen copy of the "
        "base model as it was before training, so it works offline.",
    )
    gist_margin: float | None = Field(
        None,
        ge=0,
        le=1,
        description="gist losses: a negative is masked when the guide scores it above (positive - margin); "
        "absolute cosine margin. null: 0.",
    )
    hardness_mode: Literal["in_batch_negatives", "hard_negatives", "all_negatives"] | None = Field(
        None,
        description="mnrl losses: sentence-transformers' hardness weighting of negatives (harder ones weigh more); "
        "null: off.",
    )
    hardness_strength: float | None = Field(
        None,
        ge=0,
        description="mnrl losses with hardness_mode: how much harder negatives weigh. null: 0, which leaves plain "
        "InfoNCE: hardness_mode needs a strength above 0 to change anything.",
    )
    directions: list[Literal["query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"]] | None = Field(
        None,
        description="mnrl losses: the similarity terms of sentence-transformers' MNRL (its directions). "
        "query_to_doc, each query against every passage in the batch, is the standard InfoNCE and must be listed; "
        "add doc_to_query for the symmetric loss, and query_to_query and doc_to_doc for GTE's improved "
        "contrastive loss (the other queries and passages as extra negatives). null: [query_to_doc].",
    )
    partition_mode: Literal["joint", "per_direction"] | None = Field(
        None,
        description="mnrl losses with directions: one softmax over all the terms (joint) or one per term, "
        "averaged (per_direction; not with query_to_query or doc_to_doc, whose pools lack the positive). "
        "null: joint.",
    )

    @model_validator(mode="after")
    def _mnrl_options(self) -> TrainSpec:
        if self.loss in ("gist", "cached-gist"):
            unused = [n for n in ("hardness_mode", "directions") if getattr(self, n) is not None]
            if unused:
                raise ValueError(f"{', '.join(unused)}: options of the mnrl losses; loss {self.loss} does not use them")
        if self.partition_mode is not None and self.directions is None:
            raise ValueError("partition_mode: only used with directions")
        if self.directions is None:
            return self
        if "query_to_doc" not in self.directions or len(set(self.directions)) != len(self.directions):
            raise ValueError(
                f"directions: {self.directions} must list query_to_doc (the positive pair's term) and each "
                "direction once, e.g. [query_to_doc, doc_to_query]"
            )
        pool_without_positive = sorted({"query_to_query", "doc_to_doc"} & set(self.directions))
        if self.partition_mode == "per_direction" and pool_without_positive:
            raise ValueError(
                f"partition_mode: per_direction needs the positive in every term's softmax; {pool_without_positive} "
                "have none: use joint"
            )
        return self

    matryoshka_dims: list[int] | None = Field(
        None,
        description="Train with MatryoshkaLoss over the loss above, so the first d dimensions of an embedding "
        "work on their own for each d listed (e.g. [384, 256, 128, 64]: a smaller index); the test split is "
        "also scored at each d (source dense@d). null: off.",
    )

    matryoshka_weights: dict[int, float] | None = Field(
        None,
        description="Weight of each trained dimension's loss in MatryoshkaLoss (its matryoshka_weights), e.g. "
        "{96: 3}: dimensions not listed weigh 1. null: all weigh 1.",
    )

    @field_validator("matryoshka_dims")
    @classmethod
    def _dims(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value or any(d < 1 for d in value):
            raise ValueError("matryoshka_dims: a list of positive dimensions, e.g. [384, 256, 128, 64]")
        return sorted(set(value), reverse=True)

    @model_validator(mode="after")
    def _weights_of_trained_dims(self) -> TrainSpec:
        weights = self.matryoshka_weights
        if weights is None:
            return self
        stray = sorted(set(weights) - set(self.matryoshka_dims or []))
        if stray:
            raise ValueError(
                f"matryoshka_weights: {stray} are not in matryoshka_dims ({self.matryoshka_dims}): weigh trained "
                "dimensions only"
            )
        if any(w <= 0 for w in weights.values()):
            raise ValueError("matryoshka_weights: weights must be above 0")
        return self

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
    gradient_checkpointing: bool = Field(
        False,
        description="Keep only each transformer layer's input for the backward pass and recompute the rest "
        "(transformers' gradient checkpointing; every loop and backend): less memory for the activations, more "
        "training time. For large batches, long passages or a large model in little memory; bench/README "
        "measures both sides. Takes the same steps, so it is not part of the spec hash.",
    )
    seed: int = Field(42, description="Seed for initialisation order, shuffling and dropout.")
    report_to: list[str] | None = Field(
        None,
        description="Experiment trackers that receive each run: loss, learning rate, dev metrics per epoch, final "
        "test metrics and the spec as parameters (e.g. [mlflow]). mlflow, wandb, tensorboard and trackio work "
        "with every loop; transformers' other integrations (comet_ml, neptune, ...) with loop trainer only. The "
        "tracker's package must be installed. Not part of the spec hash. null: the embx store only.",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI for report_to: [mlflow]: a local store (sqlite:///mlflow.db) or a "
        "tracking server (http://host:5000). Not part of the spec hash. null: MLFLOW_TRACKING_URI, else "
        "MLflow's default. With MLFLOW_TRACKING_TOKEN (or username/password) set, a server here must be the "
        "host of MLFLOW_TRACKING_URI or listed in EMBX_TRACKING_HOSTS: the spec may not send your credentials "
        "to its author's server.",
    )

    _tracking_uri = field_validator("tracking_uri")(classmethod(lambda cls, v: check_tracking_uri(v)))

    @field_validator("report_to")
    @classmethod
    def _trackers(cls, value: list[str] | None) -> list[str] | None:
        import difflib
        import importlib.util

        if value is None:
            return None
        names = [name.strip().lower() for name in value]
        for name in names:
            if name not in TRACKERS:
                close = difflib.get_close_matches(name, list(TRACKERS), n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"unknown tracker {name!r}: {hint}known: {', '.join(TRACKERS)}")
            since = TRACKERS_SINCE.get(name)
            if since is not None and transformers_major() < since:
                raise ValueError(
                    f"tracker {name!r} needs transformers >= {since} (installed: {transformers_major()}.x); "
                    "the main set installs it: pip install torch==2.13.0 -e ."
                )
            module, package = TRACKERS[name]
            if module is not None and importlib.util.find_spec(module) is None:
                extra = "  (or: pip install 'embx[trackers]')" if name == "mlflow" else ""
                raise ValueError(f"tracker {name!r} is not installed: pip install {package}{extra}")
        return list(dict.fromkeys(names))

    early_stopping: EarlyStopping | None = Field(
        default_factory=EarlyStopping,
        description="Early stopping on the dev split; null trains all epochs and keeps the last.",
    )
    lora: LoraSpec | None = Field(
        None,
        description="Train LoRA adapters instead of every weight (peft, through sentence-transformers); see below.",
    )
    query_adapter: QueryAdapterSpec | None = Field(
        None,
        description="Train a query-side linear adapter over the frozen base model instead of fine-tuning it: no "
        "re-indexing of the corpus; see below. null: fine-tune.",
    )
    lr_probe: LrProbeSpec | None = Field(
        None,
        description="Choose the learning rate by a short probe on dev before training (see below); it replaces "
        "train.learning_rate. null: train.learning_rate as set.",
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
        "query_max_len: 64}: names and values are checked by FlagEmbedding's own "
        "argument parser when the spec is validated. Arguments that a spec field sets are refused here.",
    )
