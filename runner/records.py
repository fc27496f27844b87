"""What a run records: its provenance, the rows it stores and the summary `embx run` prints.

The only module that spells the names of splits (test, dev, set:<name>, mteb:<task>), stages (base, tuned)
and sources (native, mteb, and the retriever names) as they appear in the store.
"""

from __future__ import annotations

import os
import platform
import secrets
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.ablate import Variant
    from runner.evaluate import EvalResult
    from runner.spec import LoadedSpec, Spec
    from runner.store import RunRecord, RunResults

TEST, DEV = "test", "dev"
"""Splits of the run's own data, by role."""
BASE, TUNED = "base", "tuned"
"""Stages: the untuned base model, the fine-tuned model."""
NATIVE, MTEB = "native", "mteb"
DENSE = "dense"
"""Dense retrieval's name; ``dense@<d>`` is its score at the first d dimensions (Matryoshka)."""
"""Sources of metrics besides the retriever names (bm25, hybrid, two-stage): embx's own evaluation, mteb's."""
SET_SPLIT_PREFIX, MTEB_SPLIT_PREFIX = "set:", "mteb:"
"""Split names of `eval.sets` entries (set:<name>) and mteb hub tasks (mteb:<task>)."""
SELECT_PREFIX = "select:"
"""Variant label of a selection run: select:<candidate label> (`embx select`, stage base only)."""
RANKED = 10
"""Documents kept per test query in the rankings table."""

PACKAGES = (
    "embx",
    "torch",
    "transformers",
    "sentence-transformers",
    "datasets",
    "pytrec-eval-terrier",
    "duckdb",
    "pydantic",
    "numpy",
)


@dataclass
class Scores:
    """What a run scored, by stage (base, tuned).

    Attributes:
        dense: (split, stage) -> dense retrieval result on the run's own data (test and dev).
        others: (retriever, stage) -> test metrics of bm25, hybrid and two-stage retrieval.
        sets: (set name, stage) -> metrics on an `eval.sets` entry.
        mteb: (stage, split) -> metrics by mteb's evaluation ("test", or "mteb:<task>").
        baseline_from: split -> run id whose base scores were used (this run's, or an earlier one's).
        index_eval: The tuned model's test split through a vector database's approximate search beside exact
            search (`eval.index`; see :func:`runner.index_eval.evaluate_index`), empty when not asked for.

    """

    dense: dict[tuple[str, str], EvalResult] = field(default_factory=dict)
    others: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    sets: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    mteb: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    baseline_from: dict[str, str] = field(default_factory=dict)
    index_eval: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """What `embx run` prints and returns.

    Attributes:
        run_id: Store id of the run.
        experiment: Spec name.
        status: ok (failures raise instead).
        main: The spec's main metric.
        metrics: Test metrics by stage: {"base": {...}, "tuned": {...}}.
        dev: Dev metrics by stage, when there is a dev split.
        warnings: Things the user must see (e.g. tuned worse than base).
        info: Data counts, negative statistics, epochs, device.
        timings: Seconds per stage.
        other: Test metrics by source besides dense (bm25, hybrid, two-stage, mteb), then by stage.

    """

    run_id: str
    experiment: str
    status: str
    main: str
    metrics: dict[str, dict[str, float]]
    dev: dict[str, dict[str, float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    other: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def new_run_id() -> str:
    """Sortable, unique run id: UTC time plus random hex."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def versions() -> dict[str, str]:
    """Installed versions of the packages that decide a result, and Python's."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        with suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def git_commit(folder: Path) -> str | None:
    """HEAD of the git repository holding `folder` (with "-dirty" for uncommitted changes), if any."""
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def new_record(
    loaded: LoadedSpec,
    spec: Spec,
    *,
    device: str,
    variant: Variant | None,
    baseline_key: str,
    study: str | None,
    trial: int | None,
) -> RunRecord:
    """The provenance written when a run starts: spec text, resolved JSON and hash, versions, commit, device."""
    from runner.store import RunRecord

    return RunRecord(
        run_id=new_run_id(),
        experiment=spec.name,
        description=spec.description,
        spec_path=str(loaded.path),
        spec_text=loaded.text,
        spec_json=spec.resolved_json(),
        spec_hash=spec.spec_hash(),
        overrides=loaded.overrides,
        versions=versions(),
        git_commit=git_commit(loaded.path.parent),
        device=device,
        host=platform.node(),
        pid=os.getpid(),
        variant=variant.label if variant else BASE,
        changes=variant.changes if variant else {},
        repeat=variant.repeat if variant else 0,
        baseline_key=baseline_key,
        study=study,
        trial=trial,
    )


def dev_log_rows(epoch: int, metrics: dict[str, float]) -> list[tuple[int, float, str, float]]:
    """Training-log rows (step 0, epoch, dev_<metric>, value) of one dev evaluation."""
    return [(0, float(epoch), f"{DEV}_{k}", v) for k, v in metrics.items()]


def results_rows(
    scores: Scores,
    *,
    info: dict[str, Any],
    train_log: list[tuple[int, float, str, float]],
    data: Any,
    test_qrels: dict[str, dict[str, int]],
    dataset: str,
    with_test: bool,
) -> RunResults:
    """The rows a finished run adds to the store.

    Args:
        scores: Everything the run scored.
        info: The run's info sections.
        train_log: Training-log rows (the base model's dev scores at epoch 0 are added here).
        data: The run's data (texts of the queries and documents the rankings show).
        test_qrels: Judgements of the test split.
        dataset: :func:`runner.memo.data_key` of the data.
        with_test: Whether the test split was scored (not for search trials).

    """
    from runner.evaluate import ranked
    from runner.store import RunResults

    out = RunResults(info=info, train_log=list(train_log), dataset=dataset)
    if (DEV, BASE) in scores.dense:
        out.train_log += dev_log_rows(0, scores.dense[DEV, BASE].metrics)
    shown: set[str] = set()
    for (stage, split), values in scores.mteb.items():
        out.metrics += [(split, stage, MTEB, k, v) for k, v in values.items()]
    for (source, stage), values in scores.others.items():
        out.metrics += [(TEST, stage, source, k, v) for k, v in values.items()]
    for (name, stage), values in scores.sets.items():
        out.metrics += [(f"{SET_SPLIT_PREFIX}{name}", stage, NATIVE, k, v) for k, v in values.items()]
    for (split, stage), ev in scores.dense.items():
        out.metrics += [(split, stage, NATIVE, k, v) for k, v in ev.metrics.items()]
        if split == TEST:
            out.query_scores += [(split, stage, q, k, v) for q, row in ev.per_query.items() for k, v in row.items()]
            for qid, docs in ev.run.items():
                top = ranked(docs)[:RANKED]
                out.rankings += [(split, stage, qid, r + 1, d, s) for r, (d, s) in enumerate(top)]
                shown.update(d for d, _ in top)
    if with_test:
        shown.update(d for docs in test_qrels.values() for d in docs)
        out.texts = [("query", q, data.queries[q]) for q in test_qrels] + [("doc", d, data.corpus[d]) for d in shown]
        out.qrels = [(TEST, q, d, g) for q, docs in test_qrels.items() for d, g in docs.items()]
    return out


def run_result(scores: Scores, *, run_id: str, spec: Spec, info: dict[str, Any], notes: list[str]) -> RunResult:
    """The summary `embx run` prints: test and dev metrics by stage, other sources, warnings."""
    by = {split: {stage: ev.metrics for (s, stage), ev in scores.dense.items() if s == split} for split in (TEST, DEV)}
    result = RunResult(
        run_id=run_id, experiment=spec.name, status="ok", main=spec.eval.main, metrics=by[TEST], dev=by[DEV], info=info
    )
    for (source, stage), values in scores.others.items():
        result.other.setdefault(source, {})[stage] = values
    for (stage, split), values in scores.mteb.items():
        result.other.setdefault(MTEB if split == TEST else split, {})[stage] = values
    for (name, stage), values in scores.sets.items():
        result.other.setdefault(f"{SET_SPLIT_PREFIX}{name}", {})[stage] = values
    result.warnings = notes + worse_than_base(spec, by)
    return result


def worse_than_base(spec: Spec, by: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Loud notes when fine-tuning did not help: the tuned model scores below the base on dev or test."""
    out = []
    main = spec.eval.main
    for split in (DEV, TEST):
        base, tuned = by.get(split, {}).get(BASE), by.get(split, {}).get(TUNED)
        if base and tuned and tuned[main] < base[main]:
            out.append(
                f"the tuned model is WORSE than the base model on {split}: {main} {tuned[main]:.4f} < {base[main]:.4f}"
            )
    return out
