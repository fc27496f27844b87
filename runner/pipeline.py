"""`run_spec`: one experiment run, top to bottom: data -> negatives -> train -> evaluate -> store."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from runner import store
from runner.ablate import Variant
from runner.spec import LoadedSpec, Spec

log = logging.getLogger(__name__)

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


def describe_device(device: str) -> str:
    """Human-readable device, e.g. ``cuda: NVIDIA H100 80GB HBM3`` or ``cpu: 2 threads``."""
    import torch

    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"{device}: {torch.get_num_threads()} threads"


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so a terminated run is recorded as interrupted."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Timer(dict):
    """Seconds per named stage."""

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Add the time spent in the block to stage `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 3)


def content_key(*parts: Any) -> str:
    """Content hash of JSON-able parts: the cache and baseline keys."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Shared:
    """Work that no ablation factor changes, done once per experiment: data, base scores, negatives.

    Keys are content hashes of the spec sections the work depends on, so a variant that changes one of
    them (say `model.max_seq_length`) gets its own entry.
    """

    data: dict[str, Any] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)
    base_evals: dict[str, tuple[Any, str]] = field(default_factory=dict)
    negatives: dict[str, tuple[list, Any]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    others: dict[str, Any] = field(default_factory=dict)


def fingerprint(location: str | None) -> list:
    """Names, sizes and modification times of the files at a local path (empty for a hub id).

    Part of the cache keys, so editing a dataset or a model folder in place invalidates reused results.
    """
    if not location:
        return []
    path = Path(location)
    if path.is_file():
        stat = path.stat()
        return [[path.name, stat.st_size, stat.st_mtime_ns]]
    if not path.is_dir():
        return []
    files = sorted(p for p in path.rglob("*") if p.is_file())[:500]
    return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def data_key(spec: Spec) -> str:
    """Identity of the dataset a spec reads, files included (not of the training sample drawn from it)."""
    section = spec.data.model_dump(mode="json", exclude={"limit", "seed", "on_leak", "leak_similarity", "min_chars"})
    parts = [section, fingerprint(spec.data.path), fingerprint(spec.data.eval_path)]
    if spec.data.source == "documents":  # chunks are sized by the model's tokenizer; queries made as `queries:` says
        parts += [spec.chunking.model_dump(mode="json"), spec.queries.model_dump(mode="json"), spec.model.base]
    return content_key(*parts)


def model_key(spec: Spec) -> str | None:
    """Identity of the base model as loaded: the model section and the files behind it.

    None for a hub id without `model.revision`: what it names can change upstream, so nothing is cached for it.
    """
    from runner.models import resolve_model

    try:
        resolved = resolve_model(spec.model.base)
    except ValueError:
        return None
    if resolved.kind == "hub" and not spec.model.revision:
        return None
    location = None if resolved.kind == "hub" else resolved.location
    return content_key(spec.model.model_dump(mode="json"), fingerprint(location))


def baseline_key(spec: Spec) -> str:
    """Identity of the base model's evaluation: model (files included), data and evaluation settings."""
    from runner.models import resolve_model

    try:
        location = resolve_model(spec.model.base).location
    except ValueError:
        location = None
    model = spec.model.model_dump(mode="json")
    return content_key(model, fingerprint(location), data_key(spec), spec.eval.model_dump(mode="json"))


class RunPruned(Exception):
    """Raised by an `on_dev` hook to stop a run early (a search trial the pruner gave up on)."""


DevHook = Callable[[int, dict[str, float]], None]
"""Called with (epoch, dev metrics) after every epoch's dev evaluation; may raise RunPruned."""


def run_spec(
    loaded: LoadedSpec,
    db: str | Path,
    spec: Spec | None = None,
    variant: Variant | None = None,
    shared: Shared | None = None,
    *,
    evaluate_test: bool = True,
    on_dev: DevHook | None = None,
    study: str | None = None,
    trial: int | None = None,
) -> RunResult:
    """Run one experiment and record it; a failure is recorded as failed (or interrupted) and re-raised.

    Args:
        loaded: The validated spec with its source.
        db: Path of the results store.
        spec: The spec to run, when it differs from ``loaded.spec`` (an ablation variant).
        variant: The ablation variant this run is, recorded with it.
        shared: Cache of work shared between the runs of one experiment.
        evaluate_test: Score the test split. Search trials do not: they are chosen on dev only.
        on_dev: Hook called after each epoch's dev evaluation (a search trial's pruner).
        study: Search study this run is a trial of.
        trial: Trial number in that study.

    Returns:
        The run's metrics and notes.

    """
    from runner.models import pick_device

    spec = spec or loaded.spec
    shared = shared or Shared()
    device = pick_device()
    record = store.RunRecord(
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
        device=describe_device(device),
        host=platform.node(),
        pid=os.getpid(),
        variant=variant.label if variant else "base",
        changes=variant.changes if variant else {},
        repeat=variant.repeat if variant else 0,
        baseline_key=baseline_key(spec),
        study=study,
        trial=trial,
    )
    store.start_run(db, record)
    timer, info = Timer(), {"device": record.device, "variant": record.variant}
    dev_log: list[tuple[int, float, str, float]] = []
    try:
        with sigterm_as_interrupt(), timer("total"):
            result, results = _execute(
                spec, record.run_id, device, timer, info, shared, db, evaluate_test, on_dev, dev_log
            )
    except RunPruned as exc:
        store.end_run(db, record.run_id, "pruned", f"pruned: {exc}", dict(timer), info, dev_log)
        raise
    except KeyboardInterrupt as exc:
        store.end_run(db, record.run_id, "interrupted", f"interrupted ({exc or 'Ctrl-C'})", dict(timer), info)
        raise
    except Exception as exc:
        store.end_run(db, record.run_id, "failed", f"{type(exc).__name__}: {exc}", dict(timer), info)
        raise
    results.timings = result.timings = dict(timer)
    store.finish_run(db, record.run_id, results)
    return result


@dataclass
class ExperimentResult:
    """All runs of one `embx run` invocation: ran, skipped (already ok in the store) and failed."""

    runs: list[RunResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def run_experiment(loaded: LoadedSpec, db: str | Path, force: bool = False) -> ExperimentResult:
    """Run every variant of a spec (just the spec itself when it has no `ablate:`).

    A variant whose resolved spec already has an ok run in the store is skipped unless `force`. Data, the
    base model's scores and mined negatives are shared between variants that do not change them. A variant
    that fails is recorded as failed and the others still run; with a single variant the error propagates.

    Args:
        loaded: The validated spec.
        db: Results store.
        force: Rerun variants that already have an ok run.

    """
    from runner.ablate import expand

    variants = expand(loaded.spec)
    out, shared = ExperimentResult(), Shared()
    with _follower_session(loaded.spec):
        _run_variants(variants, loaded, db, force, out, shared)
    return out


@contextmanager
def _follower_session(spec: Spec) -> Iterator[None]:
    """On a multi-node leader, open a session of training jobs for the follower nodes and close it at the end."""
    cfg = spec.train.distributed
    if cfg.nnodes == 1:
        yield
        return
    from runner.train.launch import finish, start_session

    start_session(Path(cfg.workdir))
    try:
        yield
    finally:
        finish(Path(cfg.workdir))


def _run_variants(variants: list, loaded: LoadedSpec, db: str | Path, force: bool, out, shared: Shared) -> None:
    """Run (or skip) each variant in order, collecting results in `out`."""
    for variant in variants:
        done = None if force else store.find_ok_run(db, variant.spec.spec_hash())
        if done:
            out.skipped.append((variant.label, done))
            log.info("skip %s (repeat %d): run %s is already ok", variant.label, variant.repeat, done)
            continue
        log.info("variant %s (repeat %d)", variant.label, variant.repeat)
        try:
            out.runs.append(run_spec(loaded, db, variant.spec, variant, shared))
        except Exception as exc:
            if len(variants) == 1:
                raise
            out.failed.append((variant.label, f"{type(exc).__name__}: {exc}"))
            log.error("variant %s failed: %s", variant.label, exc)


def prepare_data(loaded: LoadedSpec, out: Path) -> dict[str, Any]:
    """`embx prepare`: the data stage alone; writes train.jsonl, a BEIR folder and the data card under `out`.

    Runs what `embx run` runs before training (loading or building the data, the checks with `data.on_leak`,
    the negatives), so the files are what a run would train and evaluate on.

    Returns:
        The data card.

    """
    from runner.data import load_data
    from runner.data.checks import apply_leak_policy
    from runner.data.export import card_markdown, data_card, write_beir, write_training_jsonl
    from runner.data.negatives import attach_negatives
    from runner.evaluate import CorpusIndex
    from runner.models import load_model, pick_device

    spec = loaded.spec
    model = load_model(spec.model, pick_device())
    data = load_data(spec, model, Path(spec.output.dir) / "llm-cache")
    pairs = data.pairs(spec.data.splits.train, spec.data.limit, spec.data.seed)
    report = _check(spec, data, pairs, model)
    pairs = apply_leak_policy(report, pairs, spec.data.on_leak)
    disk = Path(spec.output.dir) / "embeddings" if spec.output.embedding_cache else None
    pairs, stats = attach_negatives(spec, pairs, data, model, CorpusIndex(data.corpus, disk, model_key(spec)))
    out.mkdir(parents=True, exist_ok=True)
    write_training_jsonl(pairs, out / "train.jsonl")
    write_beir(data, out / "beir")
    card = data_card(data, pairs, report.as_dict(), stats.as_dict(), model.tokenizer)
    (out / "data_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "data_card.md").write_text(card_markdown(card), encoding="utf-8")
    return card


def _execute(
    spec: Spec,
    run_id: str,
    device: str,
    timer: Timer,
    info: dict,
    shared: Shared,
    db: str | Path,
    evaluate_test: bool,
    on_dev: DevHook | None,
    dev_log: list,
) -> tuple[RunResult, store.RunResults]:
    """The recipe. Returns the summary and the rows to store."""
    from runner.data import load_data
    from runner.data.checks import apply_leak_policy
    from runner.data.mix import mix_negatives, mix_pairs
    from runner.data.negatives import attach_negatives
    from runner.evaluate import CorpusIndex, evaluate, ranked
    from runner.evaluate_more import filtered_ids, mteb_metrics, other_retrievers, set_metrics
    from runner.models import load_model
    from runner.train import get_backend

    splits, metrics, m = spec.data.splits, spec.eval.metrics, spec.model
    results = store.RunResults(info=info)
    dkey = data_key(spec)
    ikey = content_key(dkey, m.model_dump(mode="json"), spec.eval.batch_size)

    def score(model, label, split_qrels):
        return evaluate(
            model,
            label,
            index,
            data.queries,
            split_qrels,
            m,
            metrics,
            spec.eval.depth,
            spec.eval.batch_size,
            allowed=allowed,
            precision=spec.eval.precision,
        )

    # 1. Base model (its tokenizer sizes document chunks; it embeds for semantic chunking and the checks)
    with timer("load_model"):
        model = load_model(m, device)
    info["model"] = {"base": m.base, "max_seq_length": m.max_seq_length}

    # 2. Data: loaded (documents: chunked, queries generated, split by document) and checked once per experiment
    with timer("data"):
        if dkey not in shared.data:
            shared.data[dkey] = load_data(spec, model, Path(spec.output.dir) / "llm-cache")
        data = shared.data[dkey]
        test_qrels = data.split(splits.test)
        dev_qrels = data.split(splits.dev) if splits.dev else None
        pairs = data.pairs(splits.train, spec.data.limit, spec.data.seed)
        if not pairs:
            raise ValueError(f"no training pairs in split {splits.train!r}")
        mixed = mix_pairs(spec, len(pairs), shared)
        allowed = filtered_ids(spec, data)
        if ikey not in shared.index:
            disk = Path(spec.output.dir) / "embeddings" if spec.output.embedding_cache else None
            shared.index[ikey] = CorpusIndex(data.corpus, disk, model_key(spec))
        index = shared.index[ikey]
    with timer("checks"):
        ckey = content_key(ikey, spec.data.model_dump(mode="json"), spec.negatives.mode, spec.negatives.per_query)
        if ckey not in shared.checks:
            shared.checks[ckey] = _check(spec, data, pairs + [p for _, p in mixed], model)
        report = shared.checks[ckey]
        mix_ids = {id(p) for _, p in mixed}
        checked = apply_leak_policy(report, pairs + [p for _, p in mixed], spec.data.on_leak)
        kept = {id(p) for p in checked}
        pairs = [p for p in checked if id(p) not in mix_ids]
        mixed = [(source, p) for source, p in mixed if id(p) in kept]
        info["data"] = {**data.stats(), "train_pairs": len(pairs)}
        info["checks"] = report.as_dict()
        if data.notes or data.skipped:
            info["data"]["preparation"] = data.notes
            info["data"]["skipped"] = [{"item": x.item, "reason": x.reason} for x in data.skipped]

    # 3. The base model's scores (once per experiment, or reused from an earlier run in the store)
    evals, bkey = {}, baseline_key(spec)
    with timer("eval_base"):
        for role, qrels in (("test", test_qrels if spec.eval.baseline and evaluate_test else None), ("dev", dev_qrels)):
            if qrels is None:
                continue
            cached = shared.base_evals.get(f"{bkey}:{role}") or store.find_baseline(db, bkey, role)
            if cached is None:
                cached = (score(model, "base", qrels), run_id)
            shared.base_evals[f"{bkey}:{role}"] = cached
            evals[role, "base"] = cached[0]
            if role == "dev":  # epoch 0 of the dev curve, kept even if the run is pruned
                dev_log.extend((0, 0.0, f"dev_{k}", v) for k, v in cached[0].metrics.items())
            info.setdefault("baseline_from", {})[role] = cached[1]
    with timer("retrievers"):
        others: dict[tuple[str, str], dict[str, float]] = {}
        if evaluate_test and spec.eval.baseline:
            okey = f"{bkey}:others"
            if okey not in shared.others:

                def base_run():
                    return score(model, "base", test_qrels).run

                shared.others[okey] = other_retrievers(
                    spec, data, base_run, model, "base", index, test_qrels, allowed, shared
                )
            others.update({(source, "base"): v for source, v in shared.others[okey].items()})
            skey = f"{bkey}:sets"
            if skey not in shared.others:
                shared.others[skey] = set_metrics(spec, model, "base", shared)
            set_scores = {(name, "base"): v for name, v in shared.others[skey].items()}
        else:
            set_scores = {}
    with timer("mteb"):
        if evaluate_test and spec.eval.baseline:
            mkey = f"{bkey}:mteb"
            if mkey not in shared.base_evals:
                shared.base_evals[mkey] = (mteb_metrics(spec, model, data, test_qrels), run_id)
            mteb_scores = {("base", split): v for split, v in shared.base_evals[mkey][0].items()}
        else:
            mteb_scores = {}

    # 4. Negatives (mined once per experiment for the same model, data, sample and settings)
    with timer("negatives"):
        nkey = content_key(
            ikey, ckey, spec.negatives.model_dump(mode="json"), spec.data.limit, spec.data.seed, splits.train
        )
        if nkey not in shared.negatives:
            shared.negatives[nkey] = attach_negatives(spec, pairs, data, model, index)
        pairs, neg_stats = shared.negatives[nkey]
    info["negatives"] = neg_stats.as_dict()
    if mixed:
        with timer("negatives"):
            pairs = pairs + mix_negatives(spec, mixed, model, shared)
        info["data"]["mix"] = {str(src.path): sum(1 for s, _ in mixed if s is src) for src in spec.data.mix}
        info["data"]["train_pairs"] = len(pairs)

    # 5. Train (the dev split is scored after every epoch; early stopping keeps the best epoch)
    epochs = iter(range(1, 10_000))

    def dev_eval(model_) -> dict[str, float]:
        scores = score(model_, None, dev_qrels).metrics
        epoch = next(epochs)
        dev_log.extend((0, float(epoch), f"dev_{k}", v) for k, v in scores.items())
        if on_dev is not None:
            on_dev(epoch, scores)
        return scores

    with timer("train"), tempfile.TemporaryDirectory(prefix=f"embx-{run_id}-") as workdir:
        distributed = spec.train.distributed
        if distributed.world_size > 1:
            from runner.train.launch import launch

            if on_dev is not None:
                raise ValueError("search trials train in one process: train.distributed is not supported in search")
            dev = None
            if dev_qrels:
                dev = {"corpus": data.corpus, "queries": {q: data.queries[q] for q in dev_qrels}, "qrels": dev_qrels}
            # Kept when training fails (its logs), removed when it succeeds.
            job = Path(distributed.workdir or Path(spec.output.dir) / "jobs") / run_id
            outcome = launch(model, pairs, spec, dev, job)
        else:
            backend = get_backend(spec.train.backend)
            outcome = backend.train(model, pairs, spec, dev_eval if dev_qrels else None, Path(workdir))
    tuned = outcome.model
    info["train"] = {
        "epochs_run": outcome.epochs_run,
        "best_epoch": outcome.best_epoch,
        "samples": outcome.samples,
        "samples_per_s": round(outcome.samples / (outcome.seconds - outcome.eval_seconds), 2)
        if outcome.seconds > outcome.eval_seconds
        else None,
        "dev_eval_seconds": round(outcome.eval_seconds, 2),
        "precision": outcome.precision,
        "backend": spec.train.backend,
        "world_size": 1,
        "per_device_batch": spec.train.batch_size,
        "global_batch": spec.train.batch_size,
        **outcome.details,
    }
    results.train_log = list(outcome.log)
    if ("dev", "base") in evals:
        results.train_log += [(0, 0.0, f"dev_{k}", v) for k, v in evals["dev", "base"].metrics.items()]

    # 6. Tuned model on the held-out split (its corpus embeddings are not shared: the model is this run's)
    with timer("eval_tuned"):
        index.embeddings.pop("tuned", None)
        if evaluate_test:
            evals["test", "tuned"] = score(tuned, "tuned", test_qrels)
        if dev_qrels:
            evals["dev", "tuned"] = score(tuned, "tuned", dev_qrels)
    with timer("retrievers"):
        if evaluate_test and (len(spec.eval.retrievers) > 1 or spec.eval.two_stage):
            tuned_run = evals["test", "tuned"].run
            found = other_retrievers(spec, data, lambda: tuned_run, tuned, "tuned", index, test_qrels, allowed, shared)
            others.update({(source, "tuned"): v for source, v in found.items() if source != "bm25"})
        index.embeddings.pop("tuned", None)
        if evaluate_test:
            set_scores.update({(name, "tuned"): v for name, v in set_metrics(spec, tuned, None, shared).items()})
    with timer("mteb"):
        if evaluate_test:
            mteb_scores.update(
                {("tuned", split): v for split, v in mteb_metrics(spec, tuned, data, test_qrels).items()}
            )
    if spec.output.save_model:
        target = Path(spec.output.dir) / run_id
        tuned.save(str(target))
        info["saved_model"] = str(target.resolve())

    # 7. Rows for the store, and the summary
    shown: set[str] = set()
    for (stage, split), scores in mteb_scores.items():
        results.metrics += [(split, stage, "mteb", k, v) for k, v in scores.items()]
    for (source, stage), scores in others.items():
        results.metrics += [("test", stage, source, k, v) for k, v in scores.items()]
    for (name, stage), scores in set_scores.items():
        results.metrics += [(f"set:{name}", stage, "native", k, v) for k, v in scores.items()]
    for (split, stage), ev in evals.items():
        results.metrics += [(split, stage, "native", k, v) for k, v in ev.metrics.items()]
        if split == "test":
            results.query_scores += [(split, stage, q, k, v) for q, row in ev.per_query.items() for k, v in row.items()]
            for qid, docs in ev.run.items():
                top = ranked(docs)[:10]
                results.rankings += [(split, stage, qid, r + 1, d, s) for r, (d, s) in enumerate(top)]
                shown.update(d for d, _ in top)
    if evaluate_test:
        shown.update(d for docs in test_qrels.values() for d in docs)
        results.texts = [("query", q, data.queries[q]) for q in test_qrels] + [
            ("doc", d, data.corpus[d]) for d in shown
        ]
        results.qrels = [("test", q, d, g) for q, docs in test_qrels.items() for d, g in docs.items()]
    results.dataset = dkey
    by = {split: {stage: ev.metrics for (s, stage), ev in evals.items() if s == split} for split in ("test", "dev")}
    result = RunResult(run_id, spec.name, "ok", spec.eval.main, by["test"], by["dev"], info=info)
    for (source, stage), scores in others.items():
        result.other.setdefault(source, {})[stage] = scores
    for (stage, split), scores in mteb_scores.items():
        result.other.setdefault("mteb" if split == "test" else split, {})[stage] = scores
    for (name, stage), scores in set_scores.items():
        result.other.setdefault(f"set:{name}", {})[stage] = scores
    result.warnings = outcome.notes + _warnings(spec, by)
    info["warnings"] = result.warnings
    info["dataset"] = dkey
    return result, results


def _check(spec: Spec, data, pairs, model):
    """Run the data checks (leakage, duplicates, short texts, queries without positives, negative ratio)."""
    from runner.data.checks import check_data
    from runner.data.prepare import embedder

    splits = spec.data.splits
    report = check_data(
        data,
        splits.train,
        [s for s in (splits.dev, splits.test) if s],
        pairs,
        spec.negatives.mode,
        spec.negatives.per_query,
        spec.data.min_chars,
        spec.data.leak_similarity,
        embedder(model, spec.eval.batch_size, spec.eval.precision),
        positives_are_leaks=spec.data.source == "documents",
    )
    for note in report.notes:
        log.info("data check: %s", note)
    return report


def _warnings(spec: Spec, by: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Loud notes when fine-tuning did not help."""
    out = []
    main = spec.eval.main
    for split in ("dev", "test"):
        base, tuned = by.get(split, {}).get("base"), by.get(split, {}).get("tuned")
        if base and tuned and tuned[main] < base[main]:
            out.append(
                f"the tuned model is WORSE than the base model on {split}: {main} {tuned[main]:.4f} < {base[main]:.4f}"
            )
    return out
