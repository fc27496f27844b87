"""The experiment spec: pydantic models, YAML loading with positions, overrides and inheritance.

A spec is validated once here and then passed around typed. Every field carries a description, which
`embx schema` exports as JSON Schema for editor completion.

The package is split by topic: :mod:`~runner.spec.base` (the strict base model, metric keys, overrides), one
module per group of sections (:mod:`~runner.spec.model`, :mod:`~runner.spec.data`, :mod:`~runner.spec.train`,
:mod:`~runner.spec.eval`, :mod:`~runner.spec.experiment` with :class:`Spec` itself), :mod:`~runner.spec.load`
(reading files, ``extends``, ``--set``, located problems), :mod:`~runner.spec.docs` (JSON Schema and the
Markdown reference) and :mod:`~runner.spec.external` (checks against FlagEmbedding and mteb, imported lazily).
It imports no other ``runner`` module; everything public is importable from ``runner.spec``.
"""

from __future__ import annotations

from runner.spec.base import METRIC_PATTERN, apply_override, check_metric
from runner.spec.data import (
    ChunkingSpec,
    DataSpec,
    LLMSpec,
    MixSource,
    NegativesSpec,
    QAPairsSpec,
    QueriesSpec,
    RescoreSpec,
    SemanticSpec,
    Splits,
)
from runner.spec.docs import json_schema, reference_markdown
from runner.spec.eval import EvalSet, EvalSpec, IndexEvalSpec
from runner.spec.experiment import AblateSpec, MergeSpec, OutputSpec, SearchParam, SearchSpec, Spec
from runner.spec.files import check_files
from runner.spec.load import (
    LoadedSpec,
    Position,
    Problem,
    SpecError,
    load_spec,
    parse_override,
    search_values,
)
from runner.spec.model import ModelSpec
from runner.spec.select import ApiModelSpec, Candidate, SelectSpec
from runner.spec.train import DistributedSpec, EarlyStopping, LoraSpec, QueryAdapterSpec, TrainSpec

__all__ = [
    "METRIC_PATTERN",
    "AblateSpec",
    "ApiModelSpec",
    "Candidate",
    "ChunkingSpec",
    "DataSpec",
    "DistributedSpec",
    "EarlyStopping",
    "EvalSet",
    "EvalSpec",
    "IndexEvalSpec",
    "LLMSpec",
    "LoadedSpec",
    "LoraSpec",
    "QueryAdapterSpec",
    "MixSource",
    "MergeSpec",
    "ModelSpec",
    "NegativesSpec",
    "OutputSpec",
    "Position",
    "Problem",
    "QAPairsSpec",
    "QueriesSpec",
    "RescoreSpec",
    "SearchParam",
    "SearchSpec",
    "SelectSpec",
    "SemanticSpec",
    "Spec",
    "SpecError",
    "Splits",
    "TrainSpec",
    "apply_override",
    "check_files",
    "check_metric",
    "json_schema",
    "load_spec",
    "parse_override",
    "reference_markdown",
    "search_values",
]
