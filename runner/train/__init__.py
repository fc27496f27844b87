"""Training backends behind one Protocol, looked up by the spec's `train.backend` name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from runner.data.types import Pair
    from runner.spec import Spec

DevEval = Callable[["SentenceTransformer"], dict[str, float]]
"""Scores a model on the dev split: returns flat metric keys -> values."""


@dataclass
class TrainOutcome:
    """What a backend returns.

    Attributes:
        model: The selected model (best dev epoch when early stopping is on, else the last), fp32.
        log: Rows of (step, epoch, name, value): train loss, learning rate, dev metrics.
        epochs_run: Epochs actually trained (early stopping may cut them short).
        best_epoch: Epoch whose weights were kept.
        seconds: Wall time of training (evaluation during training included).
        eval_seconds: Part of `seconds` spent scoring the dev split.
        samples: Training examples seen.
        precision: The autocast precision used.

    """

    model: SentenceTransformer
    log: list[tuple[int, float, str, float]] = field(default_factory=list)
    epochs_run: int = 0
    best_epoch: int | None = None
    seconds: float = 0.0
    eval_seconds: float = 0.0
    samples: int = 0
    precision: str = "fp32"


class TrainBackend(Protocol):
    """A fine-tuning backend."""

    name: str

    def train(
        self, model: SentenceTransformer, pairs: list[Pair], spec: Spec, dev: DevEval | None, workdir: Path
    ) -> TrainOutcome:
        """Fine-tune `model` on `pairs` (each with 0 or `per_query` negatives) as `spec.train` says."""
        ...


def get_backend(name: str) -> TrainBackend:
    """The backend registered under `name`."""
    if name == "sentence-transformers":
        from runner.train.sentence_transformers import SentenceTransformersBackend

        return SentenceTransformersBackend()
    raise ValueError(f"unknown training backend {name!r}")


def resolve_precision(precision: str, device: str) -> str:
    """Turn ``auto`` into fp32/bf16/fp16 for the device; half precision needs CUDA."""
    import torch

    if device != "cuda":
        if precision in ("bf16", "fp16"):
            raise ValueError(f"train.precision {precision} needs a CUDA GPU; this run is on {device}")
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision
