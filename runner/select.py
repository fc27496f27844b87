"""`embx select`: every base-model candidate scored on the spec's own data, then (optionally) the chosen one tuned.

Each candidate is one run in the store (variant ``select:<label>``, stage base only) under the spec's
experiment, scored by the same :class:`~runner.scoring.RunScorer` as a run's base model (test and dev, and
`eval.retrievers`, `eval.sets`, `eval.mteb` when given), and profiled (:mod:`runner.profile`). A candidate
whose run is already ok in the store is skipped; a candidate that fails is recorded as failed and the others
still run. The table (:mod:`runner.selection`) is read back from the store, so the terminal and the report
show the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import records, store
from runner.api_adapter import api_identity
from runner.memo import Memo, api_embedding_key, baseline_key, data_key, selection_key
from runner.pipeline import ExperimentResult, Timer, run_experiment, sigterm_as_interrupt
from runner.profile import language_fit
from runner.scoring import RunScorer
from runner.selection import SelectionTable, selection_table
from runner.spec import Candidate, LoadedSpec, ModelSpec, Spec

if TYPE_CHECKING:
    from runner.data.types import RetrievalData

log = logging.getLogger(__name__)


class SelectError(ValueError):
    """The selection cannot go on as asked (no `select:` section, an API model chosen for tuning)."""


@dataclass
class SelectionResult:
    """What `embx select` did.

    Attributes:
        ran: (label, run id) of candidates evaluated now.
        skipped: (label, run id) of candidates already ok in the store.
        failed: (label, error) of candidates that failed (recorded as failed).
        table: The selection table of the spec's candidates.
        chosen: The candidate tuned (with `--tune`).
        tuned: The training runs of the chosen candidate.

    """

    ran: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    table: SelectionTable | None = None
    chosen: str | None = None
    tuned: ExperimentResult | None = None


def select_models(
    loaded: LoadedSpec, db: str | Path, *, force: bool = False, tune: bool | None = None, choose: str | None = None
) -> SelectionResult:
    """Evaluate the spec's candidates, build the table, and tune the chosen one when asked.

    Args:
        loaded: The validated spec (with a `select:` section).
        db: Results store.
        force: Evaluate candidates again even when an ok selection run exists.
        tune: Fine-tune the chosen candidate (None: as `select.then` says).
        choose: Tune this candidate instead of the recommended one.

    Raises:
        SelectError: No `select:` section, an unknown `choose`, or an API model chosen for tuning.

    """
    spec = loaded.spec
    if spec.select is None:
        raise SelectError(f"{loaded.path}: the spec has no select: section (a list of candidates to compare)")
    labels = [c.label for c in spec.select.candidates]
    if choose is not None and choose not in labels:
        raise SelectError(f"--candidate {choose!r} is not a candidate of {loaded.path} ({', '.join(labels)})")
    out, memo = SelectionResult(), Memo()
    data = _load_data(spec, memo=memo)
    from runner.profile import detect_languages

    test_queries = {q: data.queries[q] for q in data.split(spec.data.splits.test)}
    languages = detect_languages(test_queries)
    for candidate in spec.select.candidates:
        _evaluate(loaded, candidate, db=db, memo=memo, data=data, languages=languages, force=force, out=out)
    out.table = selection_table(store.load_experiment(db, spec.name), labels=labels)
    if tune if tune is not None else spec.select.then == "tune":
        _tune(loaded, db=db, out=out, choose=choose)
    return out


def _load_data(spec: Spec, *, memo: Memo) -> RetrievalData:
    """The spec's data, loaded once for every candidate (documents: chunked by `model.base`'s tokenizer)."""
    from runner.training_set import load_run_data

    model = None
    if spec.data.source == "documents":
        from runner.device import pick_device
        from runner.models import load_model

        model = load_model(spec.model, pick_device())
    return load_run_data(spec, model=model, memo=memo)


def candidate_spec(spec: Spec, candidate: Candidate, *, db: str | Path) -> Spec:
    """The spec as it evaluates `candidate`: its model section in `model:`, the test split always scored.

    An API candidate gets a model section named ``api:<model>@<base URL>`` (its identity in the store) with
    its prefixes; mteb is not run for it (mteb would send every task's corpus to the endpoint).

    Raises:
        KeyError: A `run:` candidate whose run or experiment has no saved model in the store.

    """
    data = spec.model_dump(mode="json", exclude={"ablate", "search", "select", "merge"})
    data["eval"]["baseline"] = True
    if candidate.api is not None:
        api = candidate.api
        data["model"] = ModelSpec(
            base=api_identity(api),
            max_seq_length=min(api.max_input_tokens, 8192),
            query_prefix=api.query_prefix,
            passage_prefix=api.passage_prefix,
        ).model_dump(mode="json")
        data["eval"]["mteb"], data["eval"]["mteb_local"] = [], False
    elif candidate.run is not None:
        path, section = _saved_model(candidate.run, db=db)
        own = candidate.model.model_dump(mode="json", exclude_unset=True) if candidate.model else {}
        data["model"] = {**section, **own, "base": str(path)}
    else:
        assert candidate.model is not None
        data["model"] = candidate.model.model_dump(mode="json")
    return Spec.model_validate(data)


def _saved_model(ref: str, *, db: str | Path) -> tuple[Path, dict[str, Any]]:
    """The saved model a `run:` candidate names (a run id or prefix, or an experiment's best) and its model section.

    Raises:
        KeyError: Nothing in the store matches, or the match has no saved model on disk.

    """
    from runner.export import ExportError, saved_model_path

    hint = f"no saved model for run or experiment {ref!r} in {db}: run its spec first (e.g. `embx run SPEC`)"
    if not Path(db).exists():
        raise KeyError(hint)
    try:
        run = store.get_run(db, ref)
    except KeyError:
        best = sorted(
            store.saved_models(db, experiment=ref),
            key=lambda r: (r["score"] is not None, r["score"] or 0.0, str(r["started_at"])),
        )
        if not best:
            raise KeyError(hint) from None
        run = store.get_run(db, best[-1]["run_id"])
    try:
        path = saved_model_path(run)
    except ExportError as exc:
        raise KeyError(str(exc)) from None
    section = json.loads(run["spec_json"]).get("model", {})
    return path, section


def _evaluate(
    loaded: LoadedSpec,
    candidate: Candidate,
    *,
    db: str | Path,
    memo: Memo,
    data: RetrievalData,
    languages: dict[str, str],
    force: bool,
    out: SelectionResult,
) -> None:
    """One candidate's selection run: skip when done, else score and profile it, recorded ok or failed."""
    from runner.device import describe_device, pick_device

    spec, label = loaded.spec, candidate.label
    section = candidate.model_dump(mode="json", exclude_none=True)
    try:
        cspec = candidate_spec(spec, candidate, db=db)
        base = baseline_key(cspec)
    except (KeyError, ValueError) as exc:  # a `run:` with no saved model: recorded as a failed candidate
        cspec, base = spec, f"unresolved:{exc}"
        problem: Exception | None = exc
    else:
        problem = None
    key = selection_key(candidate=section, baseline=base)
    done = None if force or problem else store.find_ok_run(db, key)
    if done:
        log.info("select %s: run %s is already ok", label, done)
        out.skipped.append((label, done))
        return
    device = pick_device()
    record = dataclasses.replace(
        records.new_record(
            loaded, cspec, device=describe_device(device), variant=None, baseline_key=base, study=None, trial=None
        ),
        variant=f"{records.SELECT_PREFIX}{label}",
        spec_hash=key,
    )
    store.start_run(db, record)
    timer, info = Timer(), {"device": record.device, "select": {"label": label, "kind": candidate.kind}}
    info["select"]["candidate"] = section
    try:
        with sigterm_as_interrupt(), timer("total"):
            if problem is not None:
                raise problem
            rows = _measure(
                cspec,
                candidate,
                spec=spec,
                run_id=record.run_id,
                db=db,
                memo=memo,
                data=data,
                device=device,
                languages=languages,
                timer=timer,
                info=info,
            )
    except KeyboardInterrupt:
        store.end_run(db, record.run_id, status="interrupted", error="interrupted", timings=dict(timer), info=info)
        raise
    except Exception as exc:
        error = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else f"{type(exc).__name__}: {exc}"
        store.end_run(db, record.run_id, status="failed", error=error, timings=dict(timer), info=info)
        log.error("select %s failed: %s", label, error)
        out.failed.append((label, error))
        return
    rows.timings = dict(timer)
    saved = store.finish_run(db, record.run_id, rows)
    if saved is not None:
        log.warning("select %s: %s was locked; results saved to %s (imported by the next run)", label, db, saved)
    out.ran.append((label, record.run_id))


def _measure(
    cspec: Spec,
    candidate: Candidate,
    *,
    spec: Spec,
    run_id: str,
    db: str | Path,
    memo: Memo,
    data: RetrievalData,
    device: str,
    languages: dict[str, str],
    timer: Timer,
    info: dict[str, Any],
) -> store.RunResults:
    """Load, score (as a run scores its base model) and profile one candidate; writes `info`, returns the rows."""
    with timer("load_model"):
        model = _load(cspec, candidate, device=device)
    scorer = RunScorer(cspec, data=data, memo=memo)
    stored = lambda key, split: store.find_baseline(db, key, split)  # noqa: E731 - earlier runs' scores
    scores = scorer.base(model, run_id=run_id, stored=stored, timer=timer)
    info["baseline_from"] = scores.baseline_from
    info["select"]["corpus_encodes"] = scorer.index.encodes  # test and dev share one (0: from the cache)
    with timer("profile"):
        info["select"].update(_profile(cspec, candidate, model=model, data=data, settings=spec.select))
    test = scores.dense[records.TEST, records.BASE]
    info["select"]["languages"] = language_fit(
        languages, declared=candidate.languages, per_query=test.per_query, main=spec.eval.main
    )
    info["dataset"] = dataset = data_key(spec)  # the data as loaded (documents: chunked by model.base)
    return records.results_rows(
        scores, info=info, train_log=[], data=data, test_qrels=scorer.test_qrels, dataset=dataset, with_test=True
    )


def _load(cspec: Spec, candidate: Candidate, *, device: str) -> Any:
    """The candidate's model: a SentenceTransformer (fp32, the spec's settings) or an :class:`ApiEmbedder`."""
    if candidate.api is None:
        from runner.models import load_model

        return load_model(cspec.model, device)
    from runner.embed_api import ApiEmbedder, EmbeddingCache, api_cache_path

    cache = EmbeddingCache(api_cache_path(cspec.output.dir))
    return ApiEmbedder(candidate.api, cache=cache, model_key=api_embedding_key(candidate.api))


def _profile(cspec: Spec, candidate: Candidate, *, model: Any, data: RetrievalData, settings: Any) -> dict[str, Any]:
    """The candidate's fit and cost figures (:mod:`runner.profile`), with the model name shown in tables."""
    from runner import profile

    corpus = list(data.corpus.values())
    if candidate.api is None:
        figures = profile.local_profile(
            model,
            spec=cspec.model,
            corpus=corpus,
            sample=settings.throughput_sample,
            batch_size=cspec.eval.batch_size,
            precision=cspec.eval.precision,
        )
        return {"model": cspec.model.base, **figures}
    splits = [s for s in (cspec.data.splits.test, cspec.data.splits.dev) if s]
    queries = [data.queries[q] for split in splits for q in data.split(split)]
    figures = profile.api_profile(
        model, api=candidate.api, corpus=corpus, queries=queries, queries_per_month=settings.queries_per_month
    )
    return {"model": f"{candidate.api.model} @ {candidate.api.base_url}", **figures}


def _tune(loaded: LoadedSpec, *, db: str | Path, out: SelectionResult, choose: str | None) -> None:
    """Fine-tune the chosen candidate with the spec's training; the runs record which selection chose it.

    Raises:
        SelectError: Nothing to choose from, or the chosen candidate is an API model.

    """
    spec, table = loaded.spec, out.table
    assert spec.select is not None
    label = choose or (table.recommended if table else None)
    if label is None:
        raise SelectError("no candidate was evaluated successfully: nothing to tune")
    candidate = next(c for c in spec.select.candidates if c.label == label)
    if candidate.api is not None and spec.train.query_adapter is None:
        raise SelectError(
            f"candidate {label!r} is an API model ({candidate.api.model}): its weights cannot be fine-tuned; "
            "choose a local candidate with --candidate LABEL, or add train.query_adapter to the spec: --tune then "
            "trains a query adapter over its cached embeddings (no re-indexing)"
        )
    row = next((r for r in table.rows if r.label == label), None) if table else None
    if row is None or row.status != "ok":
        raise SelectError(f"candidate {label!r} has no ok selection run: nothing to tune")
    # model_copy keeps where the spec file is (its hash's paths)
    if candidate.api is not None:  # a query adapter over the API model's cached embeddings
        assert spec.train.query_adapter is not None
        adapter = spec.train.query_adapter.model_copy(update={"api": candidate.api})
        tuned = spec.model_copy(update={"train": spec.train.model_copy(update={"query_adapter": adapter})})
        try:
            tuned._query_adapter_alone()  # the validator model_copy skips: what an API adapter cannot combine with
        except ValueError as exc:
            raise SelectError(f"candidate {label!r}: {exc}") from None
        what = f"a query adapter over {api_identity(candidate.api)}"
    else:
        tuned = spec.model_copy(update={"model": candidate_spec(spec, candidate, db=db).model})
        what = tuned.model.base
    provenance = {
        "experiment": spec.name,
        "candidate": label,
        "selection_run": row.run_id,
        "recommended": label == table.recommended,
        "rule": table.rule,
    }
    log.info("tuning candidate %s (%s)", label, what)
    out.chosen = label
    out.tuned = run_experiment(dataclasses.replace(loaded, spec=tuned), db, provenance=provenance)
