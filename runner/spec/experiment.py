"""The whole spec (:class:`Spec`) and its experiment-level sections: `output:`, `ablate:` and `search:`."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from runner.spec import external
from runner.spec.base import _Model, apply_override, check_metric
from runner.spec.data import ChunkingSpec, DataSpec, NegativesSpec, QueriesSpec
from runner.spec.eval import EvalSpec
from runner.spec.model import ModelSpec
from runner.spec.recipe import RecipeChoice, apply_auto_recipe
from runner.spec.select import SelectSpec
from runner.spec.train import DISTILLATION_LOSSES, EMBX_TRACKERS, TrainSpec


class OutputSpec(_Model):
    """What is written besides the store."""

    save_model: Literal["best", "all", "none"] = Field(
        "best",
        description="Keep the tuned model (sentence-transformers format) under `dir`/<run_id>. best: every run saves "
        "its model, and when an ablation or a search ends only its best run's model (by the dev main metric; test "
        "without a dev split) is kept. all: keep every run's model. none: keep none. true/false mean all/none.",
    )

    @field_validator("save_model", mode="before")
    @classmethod
    def _booleans(cls, value: Any) -> Any:
        return {True: "all", False: "none"}.get(value, value) if isinstance(value, bool) else value

    dir: str = Field("runs", description="Folder for saved models and checkpoints (relative: to the cwd).")
    embedding_cache: bool = Field(
        True,
        description="Keep the base model's corpus embeddings under `dir`/embeddings, keyed by the model's files, "
        "the corpus text and the encoding settings, so later runs, variants and search workers on the same "
        "model and data do not encode the corpus again.",
    )


class MergeSpec(_Model):
    """The forgetting guard: weight interpolations between the base and the tuned model (WiSE-FT, LM-Cocktail)."""

    alphas: list[float] = Field(
        [0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        min_length=1,
        description="Weights of the tuned model tried: theta = alpha x tuned + (1 - alpha) x base (0: the base "
        "model, 1: the tuned one). Each is scored on dev and on the guard sets.",
    )
    max_guard_drop: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Largest relative drop of a guard set's main metric, against the base model, that an alpha may "
        "cause (0.02: 2%). The alpha with the best dev main metric among those within it is kept.",
    )
    on_fail: Literal["base", "tuned"] = Field(
        "base", description="What to keep when no alpha keeps every guard set within max_guard_drop."
    )

    @field_validator("alphas")
    @classmethod
    def _unit(cls, value: list[float]) -> list[float]:
        if any(not 0.0 <= a <= 1.0 for a in value):
            raise ValueError("every alpha is between 0 (the base model) and 1 (the tuned model)")
        return sorted(set(value))


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
    recipe: Literal["auto", "manual"] = Field(
        "auto",
        description="auto: embx fills the recipe fields this spec leaves unset (negatives.mode: hard, "
        "train.directions: [query_to_doc, doc_to_query] with partition_mode: per_direction for the mnrl losses, "
        "train.epochs: 3 with early stopping at patience 1 on the main metric and the base model kept when no epoch "
        "beats it on dev, train.learning_rate: 5e-5) with the choices bench/README.md measured, and prints each "
        "with its reason; fields the spec sets are kept. manual: unset fields keep the plain sentence-transformers "
        "defaults shown below (in-batch negatives, 1 epoch at 2e-5).",
    )
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec, description="Chunking (documents source).")
    queries: QueriesSpec = Field(default_factory=QueriesSpec, description="Query generation (documents source).")
    negatives: NegativesSpec = Field(default_factory=NegativesSpec, description="Negative sampling.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Outputs besides the store.")
    merge: MergeSpec | None = Field(
        None, description="Forgetting guard: merge base and tuned weights as far as the guard sets allow; see below."
    )
    ablate: AblateSpec | None = Field(None, description="Ablation: variants run as separate runs; see below.")
    search: SearchSpec | None = Field(None, description="Optuna search space for `embx search`; see below.")
    select: SelectSpec | None = Field(
        None, description="Base-model candidates compared on this data by `embx select`; see below."
    )
    _root: str | None = PrivateAttr(None)
    """Folder of the spec file it was loaded from."""
    _relative: frozenset[str] = PrivateAttr(frozenset())
    """Absolute paths the loader resolved from paths written relative to a spec file: hashed relative to `_root`."""
    _recipe: list[RecipeChoice] = PrivateAttr(default_factory=list)
    """What `recipe: auto` filled in, with why (see :attr:`recipe_choices`)."""

    @model_validator(mode="after")
    def _auto_recipe(self) -> Spec:  # first: the checks below see the recipe's values
        if self.recipe == "auto":
            self._recipe = apply_auto_recipe(
                negatives=self.negatives,
                train=self.train,
                has_dev=self.data.splits.dev is not None,
                main=self.eval.main,
            )
        return self

    @property
    def recipe_choices(self) -> list[RecipeChoice]:
        """The fields `recipe: auto` filled, each with its reason (empty for `recipe: manual` or a spec setting all)."""
        return list(self._recipe)

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
        for name in ("matryoshka_dims", "hardness_mode", "directions", "guide", "lora"):
            if getattr(self.train, name) is not None:
                raise ValueError(f"train.{name}: a sentence-transformers option; FlagEmbedding's runner has none")
        if self.train.loss not in ("mnrl", "distill-kl"):
            raise ValueError(
                f"train.loss: {self.train.loss} is a sentence-transformers loss; FlagEmbedding trains with its "
                "own InfoNCE (mnrl) or distils the teacher's scores (distill-kl, its kl_div); for large batches in "
                "little memory set train.flagembedding.sub_batch_size"
            )
        external.check_arguments(model=self.model, train=self.train)  # FlagEmbedding's own argument parser
        return self

    @model_validator(mode="after")
    def _query_adapter_alone(self) -> Spec:
        train = self.train
        if train.query_adapter is None:
            return self
        clashes = [
            f"train.{name}"
            for name in ("lora", "matryoshka_dims", "guide", "hardness_mode", "directions")
            if getattr(train, name) is not None
        ]
        clashes += ["train.backend: flagembedding"] if train.backend != "sentence-transformers" else []
        clashes += [f"train.loss: {train.loss}"] if train.loss != "mnrl" else []
        clashes += ["train.loop: trainer"] if train.loop == "trainer" else []
        clashes += ["train.distributed"] if train.distributed.world_size > 1 else []
        clashes += ["merge"] if self.merge is not None else []
        clashes += ["train.gradient_checkpointing"] if train.gradient_checkpointing else []
        if train.query_adapter.api is not None:  # scored through the endpoint: nothing that re-embeds a corpus
            clashes += ["eval.mteb (it would send every task's corpus to the endpoint)"] if self.eval.mteb else []
            clashes += ["eval.index"] if self.eval.index is not None else []
        if clashes:
            raise ValueError(
                f"train.query_adapter trains a linear map over the frozen base model with InfoNCE; it does not "
                f"combine with {', '.join(clashes)}"
            )
        return self

    @model_validator(mode="after")
    def _distillation_needs_a_teacher(self) -> Spec:
        loss = self.train.loss
        if loss not in DISTILLATION_LOSSES:
            return self
        if self.negatives.mode != "hard" or self.negatives.rescore is None:
            raise ValueError(
                f"train.loss: {loss} distils a cross-encoder teacher's scores of each pair's positive and mined "
                "negatives: set negatives.mode: hard and negatives.rescore: {model: <cross-encoder>}"
            )
        if self.data.mix:
            raise ValueError(f"train.loss: {loss}: data.mix pairs have no teacher scores; remove data.mix")
        options = ("hardness_mode", "directions", "guide", "gist_margin")
        unused = [f"train.{n}" for n in options if getattr(self.train, n) is not None]
        if unused:
            raise ValueError(f"train.loss: {loss} does not use {', '.join(unused)} (options of the mnrl/gist losses)")
        return self

    @model_validator(mode="after")
    def _gist_negatives(self) -> Spec:
        if self.train.loss == "gist" and self.negatives.mode != "in-batch" and self.negatives.per_query > 1:
            raise ValueError(
                f"train.loss: gist (sentence-transformers' GISTEmbedLoss) takes one explicit negative per pair, "
                f"not negatives.per_query={self.negatives.per_query}: use loss cached-gist, which takes several, "
                "or negatives.per_query: 1"
            )
        return self

    @model_validator(mode="after")
    def _loop(self) -> Spec:
        if self.train.loop == "embx" and self.train.backend != "sentence-transformers":
            raise ValueError("train.loop: embx is the sentence-transformers backend's loop; use auto")
        if self.train.loop == "embx" and self.train.distributed.world_size > 1:
            raise ValueError("train.loop: embx trains in one process; under torchrun use auto or trainer")
        embx_loop = self.train.backend == "sentence-transformers" and (
            self.train.loop == "embx" or (self.train.loop == "auto" and self.train.distributed.world_size == 1)
        )
        others = [name for name in self.train.report_to or [] if name not in EMBX_TRACKERS]
        if embx_loop and others:
            raise ValueError(
                f"train.report_to: {', '.join(others)} is logged by transformers' trainer only: set train.loop: "
                f"trainer, or report to {', '.join(EMBX_TRACKERS)}, which embx's own loop logs to"
            )
        return self

    @model_validator(mode="after")
    def _merge_needs_dev_and_guards(self) -> Spec:
        if self.merge is None:
            return self
        if self.data.splits.dev is None:
            raise ValueError("data.splits.dev: merge chooses its alpha on the dev split: set data.splits.dev")
        if not any(entry.guard for entry in self.eval.sets):
            raise ValueError("merge: needs a guard set: an eval.sets entry with guard: true (a general-domain set)")
        return self

    @model_validator(mode="after")
    def _lr_probe_can_run(self) -> Spec:
        train = self.train
        if train.lr_probe is None:
            return self
        clashes = ["train.query_adapter (it has its own learning_rate)"] if train.query_adapter is not None else []
        clashes += ["train.backend: flagembedding"] if train.backend != "sentence-transformers" else []
        clashes += ["train.distributed"] if train.distributed.world_size > 1 else []
        if self.search is not None and "train.learning_rate" in self.search.params:
            clashes.append("search.params train.learning_rate (the search chooses it)")
        if clashes:
            raise ValueError(
                f"train.lr_probe chooses the learning rate on dev; it does not combine with {', '.join(clashes)}"
            )
        if self.data.splits.dev is None:
            raise ValueError("data.splits.dev: train.lr_probe scores each rate on the dev split: set data.splits.dev")
        return self

    @model_validator(mode="after")
    def _early_stopping_needs_dev(self) -> Spec:
        stopping = self.train.early_stopping
        if stopping is not None and self.data.splits.dev is None:
            raise ValueError(
                "data.splits.dev: train.early_stopping needs a dev split: set data.splits.dev or early_stopping: null"
            )
        if stopping is not None and stopping.metric is None:
            stopping.metric = self.eval.main  # the metric the run is judged on, not a saturated recall@10
        return self

    def resolved_json(self) -> str:
        """Canonical JSON of the resolved spec (sorted keys), the input of :meth:`spec_hash`."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def variant(self, changes: dict[str, Any]) -> Spec:
        """A copy without `ablate`, with dotted-path changes applied and validated.

        The fields `recipe: auto` filled that no change touches are left for the variant's own recipe to fill, so
        they fit what the variant is: `train.loss: gist` keeps in-batch negatives, `recipe: manual` gets the plain
        defaults.

        Raises:
            pydantic.ValidationError: If a change makes the spec invalid.

        """
        data = self.model_dump(mode="json", exclude={"ablate", "search", "select"})
        if "train.learning_rate" in changes:  # a variant that sets the rate (a search trial, an ablation) is not probed
            data["train"]["lr_probe"] = None
        for choice in self._recipe:  # left unset, so the variant's own recipe fills them for what the variant is
            if not any(path == choice.field or path.startswith(choice.field + ".") for path in changes):
                section, _, name = choice.field.partition(".")
                data[section].pop(name, None)
        for path, value in changes.items():
            apply_override(data, path.split("."), value)
        return Spec.model_validate(data).with_root(self._root, relative=self._relative)

    def with_root(self, folder: str | None, *, relative: set[str] | frozenset[str]) -> Spec:
        """Set where the spec file is and which of its paths were written relative (by the loader).

        Those paths take part in :meth:`spec_hash` relative to `folder`, so the same spec and data in another
        folder hash alike; paths written absolute (or given by --set) take part as they are.
        """
        self._root, self._relative = folder, frozenset(relative)
        return self

    def spec_hash(self) -> str:
        """Content hash of the resolved spec without `output:` and unset (null) fields: equal hashes, same experiment.

        `output:` says where results go and what is kept (models, embedding cache), never what they are, as do
        `train.report_to` and `train.tracking_uri` (the trackers a run is also logged to); `select:` names
        candidates compared before training, never what a run trains; `eval.memory_mb` and
        `train.gradient_checkpointing` only bound memory (the results are the same); so a change in any of them
        does not make a finished run look unfinished. A null field takes no part, so a new optional section (such
        as `merge:`) leaves the hashes of existing specs, and their finished runs, alone.
        """
        section = self.model_dump(mode="json", exclude=_UNHASHED, exclude_none=True)
        if self._root and self._relative:
            _relative_paths(section, self._root, self._relative)
        return hashlib.sha256(json.dumps(section, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    def legacy_spec_hash(self) -> str:
        """The hash with every path absolute, as loaded: the spec hash before paths were hashed relative to it.

        Stores written before that change hold it, so their finished runs are still found.
        """
        root, self._root = self._root, None
        try:
            return self.spec_hash()
        finally:
            self._root = root


TRACKING_FIELDS = ("report_to", "tracking_uri")
"""`train:` fields that say where a run is also logged: they take no part in the spec hash."""

_UNHASHED: dict = {
    "output": True,
    "select": True,
    "recipe": True,  # what it chose is hashed: the fields it filled
    "train": {*TRACKING_FIELDS, "gradient_checkpointing"},
    "eval": {"memory_mb"},
}
"""Spec parts outside the spec hash: they never change what a run computes (see :meth:`Spec.spec_hash`)."""

PATH_FIELDS = (
    ("data", "path"),
    ("data", "eval_path"),
    ("data", "mix", "*", "path"),
    ("eval", "sets", "*", "path"),
    ("queries", "llm", "prompt"),
    ("queries", "llm", "cache"),
    ("queries", "qa_pairs", "path"),
    ("model", "base"),
)
"""Spec fields that may hold a local path (the loader makes them absolute, relative to the spec file)."""


def _relative_paths(node: Any, root: str, relative: frozenset[str], keys: tuple[str, ...] | None = None) -> None:
    """Rewrite, in place, the paths of :data:`PATH_FIELDS` in a dumped spec that are in `relative` relative to `root`.

    So the same spec and data in another folder (a moved checkout, another machine, CI) hash alike; hub ids,
    aliases and paths written absolute stay as they are.
    """
    for path in [keys] if keys else PATH_FIELDS:
        *parents, last = path
        target = node
        for i, key in enumerate(parents):
            if key == "*":
                for item in target if isinstance(target, list) else []:
                    _relative_paths(item, root, relative, (*parents[i + 1 :], last))
                target = None
                break
            target = target.get(key) if isinstance(target, dict) else None
        value = target.get(last) if isinstance(target, dict) else None
        if isinstance(value, str) and value in relative:
            target[last] = os.path.relpath(value, root).replace(os.sep, "/")
