"""The forgetting guard (`merge:`): interpolate base and tuned weights, keep the best alpha the guard sets allow.

Domain tuning often makes a model better on the domain and worse everywhere else. Averaging the tuned weights
with the base weights (theta = alpha x tuned + (1 - alpha) x base, as WiSE-FT and LM-Cocktail do) trades some
of the domain gain back for general quality. For every alpha of `merge.alphas` the merged model is scored on
the dev split (the domain) and on the guard sets (`eval.sets` entries with ``guard: true``); the alpha with
the best dev main metric whose guard drop, relative to the base model, stays within `merge.max_guard_drop` is
kept. When none does, the run says so loudly and keeps the base model (or the tuned one, `merge.on_fail`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner.memo import Memo, eval_set_index_key, eval_set_key
from runner.scoring import RetrievalEvaluator

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from runner.spec import Spec

log = logging.getLogger(__name__)


def snapshot(model: SentenceTransformer) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's weights (taken before training: the base side of the merge)."""
    from runner.models import weights_copy

    return weights_copy(model)


def interpolate(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], *, alpha: float
) -> dict[str, torch.Tensor]:
    """The weights theta = alpha x tuned + (1 - alpha) x base (floating-point tensors; others from tuned).

    Raises:
        ValueError: When the two state dicts are not of one architecture and vocabulary (names or shapes differ).

    """
    if base.keys() != tuned.keys():
        missing = sorted(set(base) ^ set(tuned))[:3]
        raise ValueError(f"merge: base and tuned models differ in architecture (weights {missing} ...)")
    out = {}
    for name, t in tuned.items():
        b = base[name]
        if b.shape != t.shape:
            raise ValueError(f"merge: {name} has shape {tuple(b.shape)} in the base, {tuple(t.shape)} tuned")
        if t.is_floating_point():
            out[name] = (alpha * t.float() + (1.0 - alpha) * b.float().to(t.device)).to(t.dtype)
        else:
            out[name] = t.clone()
    return out


@dataclass
class MergeOutcome:
    """What the merge chose.

    Attributes:
        model: The chosen model (the tuned model object, with the chosen weights loaded).
        alpha: The chosen alpha (0: the base model, 1: the tuned model).
        rows: Per alpha: dev main metric, guard metrics and relative drops, and whether it kept the guard.
        warning: Set when no alpha kept the guard sets within the allowed drop.

    """

    model: SentenceTransformer
    alpha: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    warning: str | None = None

    def info(self) -> dict[str, Any]:
        """The `merge` info section."""
        return {"chosen_alpha": self.alpha, "alphas": self.rows, "warning": self.warning}


def guard_evaluators(spec: Spec, *, memo: Memo) -> dict[str, RetrievalEvaluator]:
    """One evaluator per guard set, over its own corpus (shared with the extra-set scoring through the memo)."""
    from runner.data import load_source
    from runner.evaluate import CorpusIndex

    out = {}
    for entry in spec.eval.sets:
        if not entry.guard:
            continue
        data = memo.get("data", eval_set_key(entry), lambda e=entry: load_source(e.source, e.path, [e.split]))
        qrels = data.split(entry.split)
        if not qrels:
            from runner.data.types import DataError

            raise DataError([f"eval.sets {entry.name}: the guard set has no judged queries in split {entry.split!r}"])
        index = memo.get("index", eval_set_index_key(entry, spec), lambda d=data: CorpusIndex(d.corpus))
        out[entry.name] = RetrievalEvaluator(
            index=index, queries=data.queries, qrels=qrels, model=spec.model, settings=spec.eval
        )
    return out


def choose(
    spec: Spec,
    *,
    base: dict[str, torch.Tensor],
    tuned: SentenceTransformer,
    dev: RetrievalEvaluator,
    guards: dict[str, RetrievalEvaluator],
) -> MergeOutcome:
    """Score every alpha on dev and the guard sets and keep the best one within the guard; see the module doc."""
    cfg, main = spec.merge, spec.eval.main
    tuned_state = snapshot(tuned)
    probe = copy.deepcopy(tuned)
    probe.load_state_dict(interpolate(base, tuned_state, alpha=0.0))
    reference = {name: evaluator.metrics(probe)[main] for name, evaluator in guards.items()}
    rows = []
    for alpha in cfg.alphas:
        probe.load_state_dict(interpolate(base, tuned_state, alpha=alpha))
        guard = {name: evaluator.metrics(probe)[main] for name, evaluator in guards.items()}
        drop = {name: _drop(reference[name], value) for name, value in guard.items()}
        ok = all(d <= cfg.max_guard_drop + 1e-12 for d in drop.values())
        rows.append({"alpha": alpha, "dev": dev.metrics(probe)[main], "guard": guard, "drop": drop, "ok": ok})
        log.info(
            "merge alpha %.2f: dev %s %.4f, guard drop %s%s",
            alpha,
            main,
            rows[-1]["dev"],
            drop,
            "" if ok else " (too much)",
        )
    allowed = [r for r in rows if r["ok"]]
    warning = None
    if allowed:
        alpha = max(allowed, key=lambda r: (r["dev"], r["alpha"]))["alpha"]
    else:
        alpha = 0.0 if cfg.on_fail == "base" else 1.0
        worst = min(rows, key=lambda r: max(r["drop"].values()))
        warning = (
            f"no merge alpha keeps the guard sets within a {cfg.max_guard_drop:.1%} drop (smallest: "
            f"{max(worst['drop'].values()):.1%} at alpha {worst['alpha']}); keeping the "
            f"{'BASE model: the tuned weights are discarded' if cfg.on_fail == 'base' else 'tuned model anyway'}"
        )
        log.warning(warning)
    tuned.load_state_dict(interpolate(base, tuned_state, alpha=alpha))
    return MergeOutcome(model=tuned, alpha=alpha, rows=rows, warning=warning)


def _drop(reference: float, value: float) -> float:
    """Relative drop of `value` below `reference` (0 when it did not fall; absolute when the reference is 0)."""
    if value >= reference:
        return 0.0
    return (reference - value) / reference if reference > 0 else reference - value
