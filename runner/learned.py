"""Runs that learned nothing or cannot be measured say so.

Two checks after training, each writing an info section and warnings the summary and the report show in red:

- :func:`check_training` (info ``learned``): fewer than :data:`MIN_STEPS` optimizer steps, a learning rate that
  never left its warm-up (the linear warm-up starts at 0, so one step of a one-step warm-up trains at 0.0),
  tuned weights equal to the base weights.
- :func:`check_splits` (info ``measurable``): an evaluation split whose 95% bootstrap interval of the main
  metric's change (tuned - base, paired by query, as the report computes it) includes 0, with the number of
  queries that would exclude it at the observed effect.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from runner.records import BASE, DEV, TEST, TUNED
from runner.stats import paired_test, queries_needed

if TYPE_CHECKING:
    from runner.records import Scores
    from runner.spec import Spec

MIN_STEPS = 10
"""Fewer optimizer steps than this is too little training to learn a domain from."""
FEW_QUERIES = 30
"""Below this many queries one query moves a split's mean by more than 0.03: said alongside a split warning."""


class TrainingError(RuntimeError):
    """Training ran but could not have taught the model anything (the run is recorded as failed)."""


def check_training(
    spec: Spec, *, steps: int, steps_per_epoch: int, base_weights: list[float], tuned_weights: list[float]
) -> tuple[dict[str, Any], list[str]]:
    """Whether training could have taught the model anything.

    Args:
        spec: The run's spec (train.learning_rate, warmup_ratio, epochs, batch_size).
        steps: Optimizer steps taken.
        steps_per_epoch: Optimizer steps of one epoch (sizes the warm-up, as the schedulers do).
        base_weights: :func:`runner.models.weights_fingerprint` of the base model before training.
        tuned_weights: The same of the trained model.

    Returns:
        The `learned` info section and the warnings.

    Raises:
        TrainingError: When no optimizer step was taken: the model handed on would be the base model, so the run
            fails instead of finishing "ok".

    """
    cfg = spec.train
    if steps == 0:
        raise TrainingError(
            f"training took no optimizer step ({steps_per_epoch} planned per epoch at batch size {cfg.batch_size}): "
            "the batches held no pair to learn from (too few training pairs for train.batch_size, or a no-duplicates "
            "batch sampler that could not place pairs whose texts repeat); add training pairs or lower "
            "train.batch_size"
        )
    planned = steps_per_epoch * cfg.epochs
    warmup = math.ceil(cfg.warmup_ratio * planned)  # as get_linear_schedule_with_warmup and the HF trainer count it
    # Step i (0-based) runs at lr * i / warmup during the warm-up, at lr from step `warmup` on.
    highest = cfg.learning_rate if warmup == 0 or steps > warmup else cfg.learning_rate * max(0, steps - 1) / warmup
    changed = base_weights != tuned_weights
    facts = {
        "steps": steps,
        "min_steps": MIN_STEPS,
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": warmup,
        "highest_learning_rate": highest,
        "left_warmup": steps > warmup,
        "weights_changed": changed,
    }
    warnings = []
    if steps < MIN_STEPS:
        warnings.append(
            f"training took {steps} optimizer step(s) ({steps_per_epoch} per epoch at batch size {cfg.batch_size}),"
            f" fewer than {MIN_STEPS}: too little to learn from; add training pairs or epochs, or lower"
            " train.batch_size"
        )
    if steps <= warmup:
        warnings.append(
            f"the learning rate never left warm-up: {steps} step(s) of a {warmup}-step warm-up (train.warmup_ratio"
            f" {cfg.warmup_ratio:g}); the highest rate used was {highest:.3g} of {cfg.learning_rate:.3g}"
            + (" (the warm-up starts at 0)" if highest == 0 else "")
            + "; lower train.warmup_ratio or train longer"
        )
    if not changed:
        warnings.append("the tuned weights equal the base model's: training changed nothing")
    return facts, warnings


def kept_base(
    spec: Spec, *, log: list[tuple[int, float, str, float]], best_epoch: int | None, base_dev: dict[str, float] | None
) -> dict[str, Any] | None:
    """``train.early_stopping.keep_base``: whether the base model (epoch 0) beat every trained epoch on dev.

    Args:
        spec: The run's spec.
        log: The training log, with its ``dev_<metric>`` rows per epoch.
        best_epoch: The epoch training kept.
        base_dev: The base model's dev metrics (None: dev was not scored).

    Returns:
        The facts (metric, the base model's score, the best epoch and its score) when the base model is better and
        is to be kept; None when an epoch beat it, or keep_base is off.

    """
    stopping = spec.train.early_stopping
    if stopping is None or not stopping.keep_base or not base_dev or best_epoch is None:
        return None
    metric = stopping.metric or spec.eval.main
    best = [value for _, epoch, name, value in log if name == f"{DEV}_{metric}" and epoch == best_epoch]
    if not best or metric not in base_dev or best[-1] >= base_dev[metric]:
        return None
    return {"metric": metric, "base": base_dev[metric], "best_epoch": best_epoch, "best": best[-1]}


def check_splits(spec: Spec, scores: Scores) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Whether each evaluation split (test, dev) has the queries to tell the observed change from zero.

    Returns:
        The `measurable` info section (per split: queries, mean change, 95% interval, queries needed) and the
        warnings.

    """
    main = spec.eval.main
    facts: dict[str, dict[str, Any]] = {}
    warnings = []
    for split in (TEST, DEV):
        base, tuned = scores.dense.get((split, BASE)), scores.dense.get((split, TUNED))
        if base is None or tuned is None:
            continue
        common = sorted(set(base.per_query) & set(tuned.per_query))
        x = [base.per_query[q].get(main, 0.0) for q in common]
        y = [tuned.per_query[q].get(main, 0.0) for q in common]
        test = paired_test(x, y)
        needed = queries_needed([b - a for a, b in zip(x, y)])
        n, mean, lo, hi = len(common), test["mean_diff"], test["ci_low"], test["ci_high"]
        excludes_zero = n >= 2 and (lo > 0 or hi < 0)
        facts[split] = {"queries": n, "mean_diff": mean, "ci_low": lo, "ci_high": hi, "queries_needed": needed}
        facts[split]["measurable"] = excludes_zero
        if excludes_zero:
            continue
        few = f" (one query moves the mean by up to {1 / n:.2f})" if 0 < n < FEW_QUERIES else ""
        if needed is None:
            warnings.append(f"{split}: {main} did not change on any of its {n} queries{few}: nothing was measured")
            continue
        warnings.append(
            f"{split}: {n} queries{few} cannot tell the {main} change from zero ({mean:+.4f}, 95% interval"
            f" [{lo:+.4f}, {hi:+.4f}]); at this effect about {max(needed, n + 1)} queries would"
        )
    return facts, warnings
