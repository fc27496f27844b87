"""The training set of a run: data loaded, pairs drawn (and mixed in), checked under the leak policy, negatives.

Used by `embx run` and by `embx prepare`, so what prepare writes is what a run trains on. Each step is one
call of the recipe and writes its own `info` section; the work is shared between runs through the memo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.memo import Memo, checks_key, data_key, negatives_key

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from runner.data.checks import DataReport
    from runner.data.negatives import NegativeStats
    from runner.data.types import Pair, RetrievalData
    from runner.evaluate import CorpusIndex
    from runner.spec import Spec

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """Pairs to train on and the data they come from.

    Attributes:
        data: The run's data (corpus, queries, splits).
        pairs: Training pairs from the main source (with negatives after :meth:`add_negatives`).
        mixed: (mix source, pair) drawn from the `data.mix` sources.
        report: The data checks' findings (after :meth:`check`).
        negative_stats: What negative sampling did (after :meth:`add_negatives`).

    """

    data: RetrievalData
    pairs: list[Pair]
    mixed: list[tuple[Any, Pair]] = field(default_factory=list)
    report: DataReport | None = None
    negative_stats: NegativeStats | None = None

    @classmethod
    def load(cls, spec: Spec, *, model: SentenceTransformer, memo: Memo) -> TrainingSet:
        """Load the data (documents: chunked, queries made, split by document) and draw the training pairs.

        Raises:
            ValueError: When the train split yields no pairs.

        """
        from runner.data.mix import mix_pairs

        splits = spec.data.splits
        data = load_run_data(spec, model=model, memo=memo)
        pairs = data.pairs(splits.train, spec.data.limit, spec.data.seed)
        if not pairs:
            raise ValueError(f"no training pairs in split {splits.train!r}")
        return cls(data=data, pairs=pairs, mixed=mix_pairs(spec, len(pairs), memo))

    def info(self) -> dict[str, Any]:
        """The `data` info section: counts, and what preparing the data skipped or noted."""
        out = {**self.data.stats(), "train_pairs": len(self.pairs)}
        if self.data.notes or self.data.skipped:
            out["preparation"] = self.data.notes
            out["skipped"] = [{"item": x.item, "reason": x.reason} for x in self.data.skipped]
        return out

    def check(self, spec: Spec, *, model: SentenceTransformer, memo: Memo) -> dict[str, Any]:
        """Run the data checks on all pairs (mixed ones too) and apply `data.on_leak`; returns the `checks` info.

        Raises:
            runner.data.types.DataError: With ``on_leak: error`` when a leak is found.

        """
        from runner.data.checks import apply_leak_policy

        everything = self.pairs + [p for _, p in self.mixed]
        self.report = memo.get("checks", checks_key(spec), lambda: _check(spec, self.data, everything, model))
        mix_ids = {id(p) for _, p in self.mixed}
        checked = apply_leak_policy(self.report, everything, spec.data.on_leak)
        kept = {id(p) for p in checked}
        self.pairs = [p for p in checked if id(p) not in mix_ids]
        self.mixed = [(source, p) for source, p in self.mixed if id(p) in kept]
        return self.report.as_dict()

    def add_negatives(self, spec: Spec, *, model: SentenceTransformer, index: CorpusIndex, memo: Memo) -> list[Pair]:
        """Attach negatives as `negatives:` says (mined with the base model), mixed-in pairs last.

        Returns:
            Every pair to train on.

        """
        from runner.data.mix import mix_negatives
        from runner.data.negatives import attach_negatives

        pairs = self.pairs
        self.pairs, self.negative_stats = memo.get(
            "negatives",
            negatives_key(spec),
            lambda: attach_negatives(spec, pairs, data=self.data, model=model, index=index),
        )
        if not self.mixed:
            return self.pairs
        return self.pairs + mix_negatives(spec, self.mixed, model, memo)

    def mix_info(self, spec: Spec) -> dict[str, int]:
        """Pairs drawn per `data.mix` source (after the leak policy)."""
        return {str(src.path): sum(1 for s, _ in self.mixed if s is src) for src in spec.data.mix}


def load_run_data(spec: Spec, *, model: SentenceTransformer | None, memo: Memo) -> RetrievalData:
    """The spec's data, once per process (the memo), with its test and dev splits checked before anything runs.

    Args:
        spec: The spec.
        model: The base model (documents source: its tokenizer sizes the chunks; None for the other sources).
        memo: Work shared between the runs of this process.

    """
    from runner.data import load_data

    data = memo.get("data", data_key(spec), lambda: load_data(spec, model, Path(spec.output.dir) / "llm-cache"))
    data.split(spec.data.splits.test)  # a missing evaluation split is an error before anything else runs
    if spec.data.splits.dev:
        data.split(spec.data.splits.dev)
    return data


def _check(spec: Spec, data: RetrievalData, pairs: list[Pair], model: SentenceTransformer) -> DataReport:
    """Run the data checks (leakage, duplicates, short texts, queries without positives, negative ratio)."""
    from runner.data.checks import check_data
    from runner.data.prepare import embedder

    splits = spec.data.splits
    report = check_data(
        data,
        train=splits.train,
        evals=[s for s in (splits.dev, splits.test) if s],
        pairs=pairs,
        negatives_mode=spec.negatives.mode,
        per_query=spec.negatives.per_query,
        min_chars=spec.data.min_chars,
        leak_similarity=spec.data.leak_similarity,
        embed=embedder(model, spec.eval.batch_size, spec.eval.precision),
        positives_are_leaks=spec.data.source == "documents",
    )
    for note in report.notes:
        log.info("data check: %s", note)
    return report
