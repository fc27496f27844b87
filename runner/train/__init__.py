"""Training backends behind one Protocol (:mod:`runner.train.base`), looked up by the spec's `train.backend` name."""

from __future__ import annotations

# Re-exported: the names the rest of embx (and users' scripts) have always imported from runner.train.
from runner.device import cpu_has_bf16_matrix_units as cpu_has_bf16_matrix_units
from runner.device import resolve_precision as resolve_precision
from runner.train.base import DEV_NAME as DEV_NAME
from runner.train.base import DevEval as DevEval
from runner.train.base import LogHook as LogHook
from runner.train.base import TrainBackend
from runner.train.base import TrainOutcome as TrainOutcome
from runner.train.base import cross_device as cross_device
from runner.train.base import ddp_backend as ddp_backend
from runner.train.base import dist_env as dist_env
from runner.train.base import log_callback as log_callback


def get_backend(name: str) -> TrainBackend:
    """The backend registered under `name`."""
    if name == "sentence-transformers":
        from runner.train.sentence_transformers import SentenceTransformersBackend

        return SentenceTransformersBackend()
    if name == "flagembedding":
        from runner.train.flagembedding import FlagEmbeddingBackend

        return FlagEmbeddingBackend()
    if name == "query-adapter":
        from runner.train.query_adapter import QueryAdapterBackend

        return QueryAdapterBackend()
    raise ValueError(f"unknown training backend {name!r}")
