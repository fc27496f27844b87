"""The recipe of `embx run`: one run is a short list of stages, each owning one component.

``run_experiment`` runs every variant of a spec with one :class:`~runner.memo.Memo`; ``run_spec`` owns a run's
record (running -> ok | failed | interrupted | pruned); ``_execute`` is the recipe: load the base model ->
training set (load, check) -> (an adapter over an API model: that model, its cached corpus checked) -> base
scores -> negatives -> train -> tuned scores -> save -> rows. Each stage writes its own `info` section.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import records, store, trackers
from runner.api_adapter import api_spec, load_api_base, over_api
from runner.learned import check_splits, check_training, kept_base
from runner.memo import Memo, baseline_key, data_key
from runner.models import weights_fingerprint
from runner.records import RunResult
from runner.scoring import RunScorer
from runner.spec import LoadedSpec, Spec
from runner.training_set import TrainingSet

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from runner.ablate import Variant
    from runner.data.types import Pair
    from runner.train import TrainOutcome

log = logging.getLogger(__name__)

__all__ = ["ExperimentResult", "RunPruned", "RunResult", "prepare_data", "run_experiment", "run_spec"]


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


class RunPruned(Exception):
    """Raised by an `on_dev` hook to stop a run early (a search trial the pruner gave up on)."""


DevHook = Callable[[int, dict[str, float]], None]
"""Called with (epoch, dev metrics) after every epoch's dev evaluation; may raise RunPruned."""


def run_spec(
    loaded: LoadedSpec,
    db: str | Path,
    spec: Spec | None = None,
    variant: Variant | None = None,
    memo: Memo | None = None,
    *,
    evaluate_test: bool = True,
    on_dev: DevHook | None = None,
    study: str | None = None,
    trial: int | None = None,
    provenance: dict[str, Any] | None = None,
) -> RunResult:
    """Run one experiment and record it; a failure is recorded as failed (or interrupted) and re-raised.

    Args:
        loaded: The validated spec with its source.
        db: Path of the results store.
        spec: The spec to run, when it differs from ``loaded.spec`` (an ablation variant).
        variant: The ablation variant this run is, recorded with it.
        memo: Work shared between the runs of one experiment.
        evaluate_test: Score the test split. Search trials do not: they are chosen on dev only.
        on_dev: Hook called after each epoch's dev evaluation (a search trial's pruner).
        study: Search study this run is a trial of.
        trial: Trial number in that study.
        provenance: The selection that chose this run's base model (`embx select --tune`), kept as the
            ``selected_by`` info section.

    Returns:
        The run's metrics and notes.

    """
    from runner.device import describe_device, pick_device

    spec = spec or loaded.spec
    device = pick_device()
    record = records.new_record(
        loaded,
        spec,
        device=describe_device(device),
        variant=variant,
        baseline_key=baseline_key(spec),
        study=study,
        trial=trial,
    )
    tracking = trackers.start(spec, run_id=record.run_id, variant=record.variant)  # before any work: fails fast
    store.start_run(db, record)
    run = _Run(spec, run_id=record.run_id, device=device, db=db, memo=memo or Memo(), on_dev=on_dev, tracking=tracking)
    run.info.update({"device": record.device, "variant": record.variant})
    if spec.recipe_choices:  # what `recipe: auto` filled in, and why
        run.info["recipe"] = {
            choice.field: {"value": choice.value, "reason": choice.reason} for choice in spec.recipe_choices
        }
    if provenance:
        run.info["selected_by"] = provenance
    try:
        with sigterm_as_interrupt(), run.timer("total"):
            result, rows = _execute(run, evaluate_test=evaluate_test)
    except RunPruned as exc:
        _record_end(run, exc, "pruned", f"pruned: {exc}", run.dev_log)
        raise
    except KeyboardInterrupt as exc:
        _record_end(run, exc, "interrupted", f"interrupted ({str(exc) or 'Ctrl-C'})")
        raise
    except Exception as exc:
        _record_end(run, exc, "failed", f"{type(exc).__name__}: {exc}")
        raise
    rows.timings = result.timings = dict(run.timer)
    if tracking is not None:
        tracking.finish(status="ok", scores=rows.metrics)
    saved = store.finish_run(db, run.run_id, rows)
    if saved is not None:
        result.info["recovery_file"] = str(saved)
        log.warning(
            "run %s: could not write %s (locked by another process, or not writable): results saved to %s;"
            " they will be imported into %s by the next `embx run` or `embx search`",
            run.run_id,
            db,
            saved,
            db,
        )
    return result


def _record_end(run: _Run, exc: BaseException, status: str, error: str, train_log: list | None = None) -> None:
    """Record how a run ended, and say where on the exception (``embx_recorded``, printed by the CLI)."""
    if run.tracking is not None:
        run.tracking.finish(status=status)
    try:
        saved = store.end_run(
            run.db, run.run_id, status=status, error=error, timings=dict(run.timer), info=run.info, train_log=train_log
        )
    except store.StoreError as err:
        log.error("run %s was not recorded as %s: %s", run.run_id, status, err)
        exc.embx_recorded = f"not recorded: {err}"
        return
    exc.embx_recorded = (
        f"run recorded as {status} in {run.db}"
        if saved is None
        else f"run record saved to {saved}; it will be imported into {run.db} by the next `embx run` or `embx search`"
    )


@dataclass
class _Run:
    """The state one run's stages share: its spec, identity, device, timings, info sections and dev log."""

    spec: Spec
    run_id: str
    device: str
    db: str | Path
    memo: Memo
    on_dev: DevHook | None = None
    timer: Timer = field(default_factory=Timer)
    info: dict[str, Any] = field(default_factory=dict)
    dev_log: list[tuple[int, float, str, float]] = field(default_factory=list)
    """Dev scores as they come (kept with a pruned run, which has no other rows)."""
    tracking: trackers.Tracking | None = None
    """The experiment trackers the run is logged to (``train.report_to``), if any."""


def _execute(run: _Run, *, evaluate_test: bool) -> tuple[RunResult, store.RunResults]:
    """The recipe. Returns the summary and the rows to store."""
    spec, timer, info, memo = run.spec, run.timer, run.info, run.memo
    with timer("load_model"):
        model = _load_base_model(spec, device=run.device, info=info)
    with timer("data"):
        training = TrainingSet.load(spec, model=model, memo=memo)
        guards = _guard_sets(spec, memo=memo)  # loaded now: a bad guard set fails before any training
    with timer("checks"):
        info["checks"] = training.check(spec, model=model, memo=memo)
        info["data"] = training.info()
    tuning = spec  # what scores, mines and trains: the spec, or its API model's (`train.query_adapter.api`)
    if over_api(spec):
        tuning = api_spec(spec)
        model = load_api_base(spec, corpus=list(training.data.corpus.values()))
        info["model"] = {"base": tuning.model.base, "dim": None, "api": model.api.model}
    scorer = RunScorer(tuning, data=training.data, memo=memo, evaluate_test=evaluate_test)
    scores = scorer.base(model, run_id=run.run_id, stored=_stored_baseline(run.db), timer=timer)
    info["baseline_from"] = scores.baseline_from
    if (records.DEV, records.BASE) in scores.dense:  # epoch 0 of the dev curve, kept even if the run is pruned
        run.dev_log += records.dev_log_rows(0, scores.dense[records.DEV, records.BASE].metrics)
        if run.tracking is not None:
            run.tracking.log_rows(run.dev_log)
    with timer("negatives"):
        pairs = training.add_negatives(tuning, model=model, index=scorer.index, memo=memo)
    info["negatives"] = training.negative_stats.as_dict()
    if training.mixed:
        info["data"]["mix"] = training.mix_info(spec)
        info["data"]["train_pairs"] = len(pairs)
    base_weights = _snapshot(model) if spec.merge else None
    base_print = weights_fingerprint(model)
    with timer("train"):
        outcome = _train(run, model=model, pairs=pairs, scorer=scorer, spec=tuning)
    info["train"] = outcome.info(spec)
    steps_per_epoch = outcome.details.get("steps_per_epoch") or math.ceil(
        len(pairs) / (spec.train.batch_size * spec.train.distributed.world_size)
    )
    info["learned"], notes = check_training(
        spec,
        steps=outcome.steps,
        steps_per_epoch=steps_per_epoch,
        base_weights=base_print,
        tuned_weights=weights_fingerprint(outcome.model),
    )
    base_dev = scores.dense.get((records.DEV, records.BASE))
    kept = kept_base(spec, log=outcome.log, best_epoch=outcome.best_epoch, base_dev=base_dev and base_dev.metrics)
    if kept:  # no epoch beat the base model on dev: hand on the base model
        info["learned"]["kept_base"] = kept
        notes.append(
            f"kept the base model: no epoch beat it on dev {kept['metric']} (best epoch {kept['best_epoch']}: "
            f"{kept['best']:.4f} < base {kept['base']:.4f}); the saved model is the base model"
        )
        outcome.model, outcome.adapter = _base_again(spec, model=model, device=run.device), None
    tuned = outcome.model
    if spec.merge and not kept:
        with timer("merge"):
            tuned, info["merge"] = _merge(spec, base=base_weights, outcome=outcome, scorer=scorer, guards=guards)
    scorer.tuned(tuned, into=scores, timer=timer)
    if scores.index_eval:
        info["index_eval"] = scores.index_eval
    if spec.output.save_model != "none":
        adapter = outcome.adapter if tuned is outcome.model else None  # a merged (interpolated) model has none
        info["saved_model"] = _save(tuned, spec=tuning, folder=Path(spec.output.dir) / run.run_id, adapter=adapter)
    info["measurable"], split_notes = check_splits(spec, scores)
    result = records.run_result(
        scores, run_id=run.run_id, spec=spec, info=info, notes=outcome.notes + notes + split_notes
    )
    info["warnings"] = result.warnings
    info["dataset"] = dataset = data_key(spec)  # fingerprints the data files: once
    rows = records.results_rows(
        scores,
        info=info,
        train_log=outcome.log,
        data=training.data,
        test_qrels=scorer.test_qrels,
        dataset=dataset,
        with_test=evaluate_test,
    )
    return result, rows


def _load_base_model(spec: Spec, *, device: str, info: dict[str, Any]) -> SentenceTransformer:
    """The base model in fp32 on `device`; writes the `model` info section."""
    from runner.models import embedding_dim, load_model

    model = load_model(spec.model, device)
    info["model"] = {"base": spec.model.base, "max_seq_length": spec.model.max_seq_length, "dim": embedding_dim(model)}
    return model


def _base_again(spec: Spec, *, model: Any, device: str) -> Any:
    """The base model handed on when no epoch beat it: reloaded, or the API model with no adapter."""
    if over_api(spec):
        from runner.api_adapter import AdaptedApiEmbedder

        return AdaptedApiEmbedder(model, None, normalize=spec.model.normalize)
    return _load_base_model(spec, device=device, info={})


def _stored_baseline(db: str | Path):
    """(baseline key, split) -> the base scores an earlier run in the store computed, or None."""
    return lambda key, split: store.find_baseline(db, key, split)


def _train(run: _Run, *, model: SentenceTransformer, pairs: list[Pair], scorer: RunScorer, spec: Spec) -> TrainOutcome:
    """Fine-tune with the spec's backend, in this process or through torchrun; dev is scored after every epoch."""
    distributed = spec.train.distributed
    if distributed.world_size > 1:
        from runner.train.launch import launch

        if run.on_dev is not None:
            raise ValueError("search trials train in one process: train.distributed is not supported in search")
        # The job folder is kept when training fails (its logs), removed when it succeeds.
        job = Path(distributed.workdir or Path(spec.output.dir) / "jobs") / run.run_id
        outcome = launch(model, pairs=pairs, spec=spec, dev=scorer.dev, folder=job)
        if run.tracking is not None:  # the training processes log nothing themselves: the log, once they are done
            run.tracking.log_rows(outcome.log)
        return outcome
    from runner.train import get_backend
    from runner.train.base import WORKDIR_PREFIX, remove_orphan_workdirs

    epochs = iter(range(1, 10_000))

    def dev_eval(model_: SentenceTransformer) -> dict[str, float]:
        scores = scorer.dev.metrics(model_)
        epoch = next(epochs)
        run.dev_log.extend(records.dev_log_rows(epoch, scores))
        if run.on_dev is not None:
            run.on_dev(epoch, scores)
        return scores

    remove_orphan_workdirs()
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-{run.run_id}-") as workdir:
        if spec.train.lr_probe is not None and scorer.dev is not None:  # the rate from short trainings, on dev
            from runner.train.probe import probe_learning_rate

            probed = probe_learning_rate(model, pairs, spec, dev=scorer.dev.metrics, workdir=Path(workdir))
            run.info["lr_probe"] = probed.info(metric=spec.eval.main)
            spec = spec.model_copy(update={"train": spec.train.model_copy(update={"learning_rate": probed.rate})})
        backend = get_backend("query-adapter" if spec.train.query_adapter else spec.train.backend)
        on_log = run.tracking.log_rows if run.tracking is not None else None
        outcome = backend.train(model, pairs, spec, dev_eval if scorer.dev else None, Path(workdir), on_log=on_log)
    adapter = spec.train.query_adapter
    outcome.learning_rate = adapter.learning_rate if adapter is not None else spec.train.learning_rate
    return outcome


def _snapshot(model: SentenceTransformer):
    """The base weights, kept before training for the merge."""
    from runner.merge import snapshot

    return snapshot(model)


def _guard_sets(spec: Spec, *, memo: Memo) -> dict:
    """The guard sets' evaluators when the spec merges (none otherwise)."""
    if not spec.merge:
        return {}
    from runner.merge import guard_evaluators

    return guard_evaluators(spec, memo=memo)


def _merge(spec: Spec, *, base, outcome: TrainOutcome, scorer: RunScorer, guards: dict):
    """The forgetting guard: the merged model to score and keep, and the `merge` info section."""
    from runner.merge import choose

    merged = choose(spec, base=base, tuned=outcome.model, dev=scorer.dev, guards=guards)
    if merged.warning:
        outcome.notes.append(merged.warning)
    return merged.model, merged.info()


def _save(model: SentenceTransformer, *, spec: Spec, folder: Path, adapter: dict | None = None) -> dict[str, str]:
    """Save the tuned model (sentence-transformers format, its prefixes as prompts) and say where and what.

    With `adapter` (``train.lora``), the adapters alone are also written to ``<folder>/lora-adapter``.

    Returns:
        ``{"path": absolute folder, "sha256": content hash of its weight files}`` (the `saved_model` info), plus
        ``"adapter"``: the adapter folder, when one was written.

    """
    from runner.keep import weights_sha256

    prompts = {"query": spec.model.query_prefix, "document": spec.model.passage_prefix}
    model.prompts = {**model.prompts, **{name: text for name, text in prompts.items() if text}}
    model.save(str(folder))
    saved = {"path": str(folder.resolve())}
    if adapter is not None:
        from runner.train.lora import save_adapter

        saved["adapter"] = str(save_adapter(adapter, folder / "lora-adapter").resolve())
    return {**saved, "sha256": weights_sha256(folder)}


@dataclass
class ExperimentResult:
    """All runs of one `embx run` invocation: ran, skipped (already ok in the store) and failed."""

    runs: list[RunResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def run_experiment(
    loaded: LoadedSpec, db: str | Path, force: bool = False, *, provenance: dict[str, Any] | None = None
) -> ExperimentResult:
    """Run every variant of a spec (just the spec itself when it has no `ablate:`).

    A variant whose resolved spec already has an ok run in the store is skipped unless `force`. Data, the
    base model's scores and mined negatives are shared between variants that do not change them. A variant
    that fails is recorded as failed and the others still run; with a single variant the error propagates.

    Args:
        loaded: The validated spec.
        db: Results store.
        force: Rerun variants that already have an ok run.
        provenance: The selection that chose the base model, recorded with every run (``selected_by``).

    """
    from runner.ablate import expand
    from runner.train.launch import follower_session

    variants = expand(loaded.spec)
    trackers.preflight(loaded.spec)  # an unreachable tracking server fails once, before any variant
    out, memo = ExperimentResult(), Memo()
    for choice in loaded.spec.recipe_choices:
        log.info("%s", choice.line())
    with follower_session(loaded.spec):
        for variant in variants:
            hashes = (variant.spec.spec_hash(), variant.spec.legacy_spec_hash())  # and runs hashed with absolute paths
            done = None if force else store.find_ok_run(db, *hashes)
            if done:
                out.skipped.append((variant.label, done))
                log.info("skip %s (repeat %d): run %s is already ok", variant.label, variant.repeat, done)
                continue
            log.info("variant %s (repeat %d)", variant.label, variant.repeat)
            try:
                out.runs.append(run_spec(loaded, db, variant.spec, variant, memo, provenance=provenance))
            except Exception as exc:
                if len(variants) == 1:
                    raise
                out.failed.append((variant.label, f"{type(exc).__name__}: {exc}"))
                log.error("variant %s failed: %s", variant.label, exc)
    if loaded.spec.output.save_model == "best" and len(variants) > 1:
        from runner.keep import remove_models

        remove_models(db, experiment=loaded.spec.name)
    return out


def prepare_data(loaded: LoadedSpec, out: Path) -> dict[str, Any]:
    """`embx prepare`: the data stages alone; writes train.jsonl, a BEIR folder and the data card under `out`.

    Runs what `embx run` runs before training, through the same :class:`~runner.training_set.TrainingSet`
    (loading or building the data, `data.mix`, the checks with `data.on_leak`, the negatives), so the files
    are what a run would train and evaluate on.

    Returns:
        The data card.

    """
    import json

    from runner.data.export import card_markdown, data_card, write_beir, write_training_jsonl
    from runner.device import pick_device

    spec, memo = loaded.spec, Memo()
    model = _load_base_model(spec, device=pick_device(), info={})
    training = TrainingSet.load(spec, model=model, memo=memo)
    scorer = RunScorer(spec, data=training.data, memo=memo)
    training.check(spec, model=model, memo=memo)
    pairs = training.add_negatives(spec, model=model, index=scorer.index, memo=memo)
    out.mkdir(parents=True, exist_ok=True)
    write_training_jsonl(pairs, out / "train.jsonl")
    write_beir(training.data, out / "beir")
    card = data_card(
        training.data, pairs, training.report.as_dict(), training.negative_stats.as_dict(), model.tokenizer
    )
    (out / "data_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "data_card.md").write_text(card_markdown(card), encoding="utf-8")
    return card
