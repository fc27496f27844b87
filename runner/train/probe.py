"""The learning-rate probe (``train.lr_probe``): short trainings on copies of the base model, scored on dev.

Each rate trains a deep copy of the base model for one pass over the same sample of training pairs, with the
spec's backend and settings but no early stopping and no dev scoring inside the loop; the copy is then scored on
dev by the run's own evaluator and dropped. The base model itself is never trained here.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from sentence_transformers import SentenceTransformer

    from runner.data.types import Pair
    from runner.spec import Spec

log = logging.getLogger(__name__)


@dataclass
class ProbeResult:
    """What the probe measured and chose.

    Attributes:
        rate: The chosen learning rate.
        scores: Dev main metric of each rate's copy, in the order tried.
        pairs: Training pairs each copy trained on.
        seconds: Wall time of the whole probe (trainings and dev scoring).

    """

    rate: float
    scores: dict[float, float] = field(default_factory=dict)
    pairs: int = 0
    seconds: float = 0.0

    def info(self, *, metric: str) -> dict[str, Any]:
        """The run's `lr_probe` info section."""
        return {
            "chosen": self.rate,
            "metric": f"dev {metric}",
            "dev": {f"{rate:g}": round(score, 4) for rate, score in self.scores.items()},
            "pairs": self.pairs,
            "seconds": round(self.seconds, 1),
        }


def probe_learning_rate(
    model: SentenceTransformer,
    pairs: list[Pair],
    spec: Spec,
    *,
    dev: Callable[[SentenceTransformer], dict[str, float]],
    workdir: Path,
) -> ProbeResult:
    """Try each of ``train.lr_probe.rates`` on a copy of `model`; returns the best on dev (see the module docstring).

    Args:
        model: The base model (left untouched).
        pairs: The run's training pairs, negatives attached.
        spec: The run's spec (``train.lr_probe`` set).
        dev: Scores a model on the dev split (flat metric keys, ``eval.main`` among them).
        workdir: A folder for the backends' scratch files.

    """
    import copy

    from runner.train import get_backend

    settings = spec.train.lr_probe
    assert settings is not None
    started = time.perf_counter()
    sample = random.Random(spec.train.seed).sample(pairs, min(settings.pairs, len(pairs)))
    backend = get_backend(spec.train.backend)
    result = ProbeResult(rate=spec.train.learning_rate, pairs=len(sample))
    for rate in settings.rates:
        train = spec.train.model_copy(
            update={"learning_rate": rate, "epochs": 1, "early_stopping": None, "lr_probe": None}
        )
        trial = copy.deepcopy(model)
        scratch = workdir / f"lr-{rate:g}"
        scratch.mkdir(parents=True, exist_ok=True)
        outcome = backend.train(trial, sample, spec.model_copy(update={"train": train}), None, scratch)
        result.scores[rate] = dev(outcome.model)[spec.eval.main]
        log.info("learning-rate probe: %g -> dev %s %.4f", rate, spec.eval.main, result.scores[rate])
        del trial, outcome
    best = max(result.scores.values())
    tied = [rate for rate, score in result.scores.items() if score == best]
    result.rate = min(tied, key=lambda rate: abs(math.log(rate / spec.train.learning_rate)))
    result.seconds = time.perf_counter() - started
    return result
