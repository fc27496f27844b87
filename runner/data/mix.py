"""`data.mix`: training pairs drawn from other sources with weights, with negatives from their own corpus."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from runner.memo import Memo, mix_source_key

if TYPE_CHECKING:
    from runner.spec import Spec

log = logging.getLogger(__name__)


def _source_data(src, memo: Memo):
    from runner.data import load_source

    return memo.get("data", mix_source_key(src), lambda: load_source(src.source, src.path))


def mix_pairs(spec: Spec, n_main: int, memo: Memo) -> list[tuple[Any, Any]]:
    """Training pairs drawn from the `data.mix` sources: round(weight x n_main) from each (seeded)."""
    out = []
    for src in spec.data.mix:
        want = max(1, round(src.weight * n_main))
        drawn = _source_data(src, memo).pairs(src.split, want, spec.data.seed)
        if len(drawn) < want:
            log.warning("data.mix %s: %d pairs asked, %d available", src.path, want, len(drawn))
        out += [(src, p) for p in drawn]
    return out


def mix_negatives(spec: Spec, mixed: list[tuple[Any, Any]], model, memo: Memo) -> list:
    """Negatives for the mixed-in pairs, from each source's own corpus (or pos/neg pool), as negatives.mode says."""
    from runner.data.negatives import attach_negatives
    from runner.evaluate import CorpusIndex

    out = []
    for src in spec.data.mix:
        pairs = [p for s, p in mixed if s is src]
        if not pairs:
            continue
        data = _source_data(src, memo)
        spec_for = spec.model_copy(
            update={
                "data": spec.data.model_copy(
                    update={"splits": spec.data.splits.model_copy(update={"train": src.split})}
                )
            }
        )
        out += attach_negatives(spec_for, pairs, data=data, model=model, index=CorpusIndex(data.corpus))[0]
    return out
