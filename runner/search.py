"""`embx search`: an Optuna study whose trials are ordinary embx runs, chosen on dev, reported on test once.

Storage is Optuna's: a journal file beside the results store by default (several processes on one machine
share it through a file lock), or any RDB URL Optuna supports (PostgreSQL, MySQL, SQLite) for workers on
several machines. Each trial is recorded in the results store with its study and trial number; pruned trials
as ``pruned``. At the end the best spec is written as ``<spec>.best.yaml`` and evaluated on test by one
final run.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import store
from runner.spec import LoadedSpec, SearchParam, Spec, load_spec

log = logging.getLogger(__name__)


STORAGE_ENV = "EMBX_SEARCH_STORAGE"
"""Environment variable read by `embx search --storage` (how local workers get the URL)."""


class SearchError(Exception):
    """A search that cannot start: an unreachable storage, an unusable sampler setting."""


@dataclass
class SearchResult:
    """What `embx search` prints."""

    study: str
    storage: str
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    best_yaml: Path
    objective: str
    trials: dict[str, int] = field(default_factory=dict)
    final: Any = None


def redact(url: str) -> str:
    """A storage URL without its password."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def default_storage(db: str | Path) -> str:
    """The journal file used when no --storage is given: beside the results store."""
    return str(Path(db).with_suffix(".optuna.journal"))


def open_storage(url: str):
    """An Optuna storage for a journal file path or an RDB URL; fails fast when it cannot be reached.

    Raises:
        SearchError: If the database cannot be reached (within about 10 seconds).

    """
    import optuna

    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    given, url = url, _with_driver(url)
    connect_args: dict[str, Any] = {}
    if url.startswith(("postgresql", "mysql")):
        connect_args["connect_timeout"] = 10
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={"connect_args": connect_args, "pool_pre_ping": True},
            heartbeat_interval=60,
            grace_period=180,
        )
    except Exception as exc:  # sqlalchemy's OperationalError, ImportError of a missing driver, ...
        raise SearchError(f"cannot use search storage {redact(given)}: {type(exc).__name__}: {exc}") from exc


def _with_driver(url: str) -> str:
    """Name an installed PostgreSQL driver in a bare ``postgresql://`` URL.

    SQLAlchemy 2.1 maps a bare URL to psycopg 3; embx's `postgres` extra installs psycopg2. Use whichever
    is installed, preferring psycopg 3.
    """
    import importlib.util

    if not url.startswith("postgresql://") or importlib.util.find_spec("psycopg") is not None:
        return url
    if importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _kind(spec: Spec, path: str) -> type:
    """Int or float: the type of the spec field a numeric range searches."""
    node: Any = spec
    for key in path.split("."):
        node = getattr(node, key)
    return int if isinstance(node, int) and not isinstance(node, bool) else float


def suggest(trial, spec: Spec, name: str, param: SearchParam) -> Any:
    """Draw one value of a searched field for an Optuna trial."""
    if param.choices is not None:
        return trial.suggest_categorical(name, param.choices)
    if _kind(spec, name) is int:
        step = int(param.step or 1)
        return trial.suggest_int(name, int(param.low), int(param.high), step=step, log=param.log)
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)


def grid_space(spec: Spec) -> dict[str, list[Any]]:
    """Every value of every searched field, for the grid sampler.

    Raises:
        SearchError: If a range has neither choices nor a step.

    """
    space = {}
    for name, param in spec.search.params.items():
        if param.choices is not None:
            space[name] = list(param.choices)
        elif param.step is not None:
            count = int(math.floor((param.high - param.low) / param.step + 1e-9)) + 1
            values = [param.low + i * param.step for i in range(count)]
            space[name] = [int(v) for v in values] if _kind(spec, name) is int else values
        else:
            raise SearchError(f"search.params.{name}: the grid sampler needs choices or a step")
    return space


def make_study(spec: Spec, storage_url: str, study_name: str, worker: int = 0):
    """Create or load the study; the sampler is seeded (seed + worker index, so workers differ)."""
    import optuna

    cfg = spec.search
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.sampler == "grid":
        sampler = optuna.samplers.GridSampler(grid_space(spec), seed=cfg.seed + worker)
    elif cfg.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=cfg.seed + worker)
    else:
        sampler = optuna.samplers.TPESampler(seed=cfg.seed + worker)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if cfg.pruner == "median" else optuna.pruners.NopPruner()
    try:
        return optuna.create_study(
            study_name=study_name,
            storage=open_storage(storage_url),
            direction=cfg.direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    except SearchError:
        raise
    except Exception as exc:
        raise SearchError(f"cannot open study {study_name!r} in {redact(storage_url)}: {exc}") from exc


def run_worker(
    loaded: LoadedSpec, db: str | Path, *, storage_url: str, study_name: str, trials: int, worker: int
) -> None:
    """Run `trials` trials of the study in this process (each an embx run scored on dev)."""
    import optuna

    from runner.ablate import Variant
    from runner.memo import Memo
    from runner.pipeline import RunPruned, run_spec

    spec = loaded.spec
    cfg = spec.search
    study = make_study(spec, storage_url, study_name, worker)
    memo = Memo()
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def objective(trial: optuna.Trial) -> float:
        changes = {name: suggest(trial, spec, name, param) for name, param in cfg.params.items()}
        variant_spec = spec.variant(changes)
        if spec.output.save_model == "best":  # trials keep no model: the final run of the best trial saves one
            output = variant_spec.output.model_copy(update={"save_model": "none"})
            variant_spec = variant_spec.model_copy(update={"output": output})

        def report(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[cfg.objective], epoch)
            if trial.should_prune():
                raise RunPruned(f"dev {cfg.objective} {metrics[cfg.objective]:.4f} at epoch {epoch} below the median")

        label = f"trial {trial.number}"
        try:
            result = run_spec(
                loaded,
                db,
                variant_spec,
                Variant(label, changes, 0, variant_spec),
                memo,
                evaluate_test=False,
                on_dev=report,
                study=study_name,
                trial=trial.number,
            )
        except RunPruned as exc:
            raise optuna.TrialPruned(str(exc)) from exc
        return result.dev["tuned"][cfg.objective]

    study.optimize(
        objective,
        n_trials=trials,
        callbacks=[optuna.study.MaxTrialsCallback(cfg.trials, states=done)],
        catch=(),
    )


def _best_yaml(loaded: LoadedSpec, *, best: Spec, study_name: str, trial: int, value: float, objective: str) -> Path:
    """Write the best trial's full spec next to the input as <stem>.best.yaml; data paths relative to it."""
    import os

    from ruamel.yaml import YAML

    target = loaded.path.with_name(f"{loaded.path.stem}.best.yaml")
    data = best.model_dump(mode="json", exclude={"search", "ablate"})
    for key in ("path", "eval_path"):
        value_ = data["data"].get(key)
        if value_ and Path(value_).is_absolute() and Path(value_).exists():
            data["data"][key] = os.path.relpath(value_, target.parent)
    base = data["model"]["base"]
    if Path(base).is_absolute() and Path(base).exists():
        data["model"]["base"] = os.path.relpath(base, target.parent)
    with target.open("w", encoding="utf-8") as handle:
        handle.write(
            f"# embx run {target.name}\n# Best trial {trial} of study {study_name}: dev {objective} = {value:.4f}.\n"
        )
        YAML(typ="safe", pure=True).dump(data, handle)
    return target


def run_search(
    loaded: LoadedSpec,
    db: str | Path,
    *,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    workers: int = 1,
    overrides: list[str] | None = None,
) -> SearchResult:
    """Run a search: N local worker processes share one study; then the best spec is tested once.

    Args:
        loaded: Validated spec with a `search:` section.
        db: Results store (every trial is a run in it).
        trials: Total trials of the study (default: search.trials).
        storage: Optuna storage: a journal file path or an RDB URL (default: a journal beside `db`).
        study_name: Study name (default: the spec's name).
        workers: Local worker processes.
        overrides: The --set strings, passed on to worker processes.

    Raises:
        SearchError: If the spec has no search section or the storage cannot be used.

    """
    import optuna

    from runner.pipeline import run_spec

    spec = loaded.spec
    if spec.search is None:
        raise SearchError(f"{loaded.path}: no `search:` section")
    total = trials or spec.search.trials
    spec.search.trials = total
    storage_url = storage or default_storage(db)
    name = study_name or spec.name
    study = make_study(spec, storage_url, name)  # fail fast on a bad storage, before spawning workers
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = max(0, total - len(study.get_trials(deepcopy=False, states=done_states)))
    shares = [remaining // workers + (1 if i < remaining % workers else 0) for i in range(workers)]
    log.info("study %s in %s: %d trial(s) to run in %d worker(s)", name, redact(storage_url), remaining, workers)
    if workers == 1:
        if remaining:
            run_worker(loaded, db, storage_url=storage_url, study_name=name, trials=remaining, worker=0)
    else:
        # The storage URL (it may hold a password) reaches the workers through the environment, not argv.
        env = {**os.environ, STORAGE_ENV: storage_url}
        # Workers on one machine share its cores: give each its share of CPU threads (unless set by the user).
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, threads)
        procs = []
        for index, share in enumerate(shares):
            if not share:
                continue
            cmd = [sys.executable, "-m", "runner.cli", "search", str(loaded.path), "--db", str(db)]
            cmd += ["--study", name, "--trials", str(total), "--worker-share", f"{index}:{share}"]
            for item in overrides or []:
                cmd += ["--set", item]
            procs.append(subprocess.Popen(cmd, env=env))
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SearchError(f"search worker(s) failed (exit codes {codes}); the study keeps their trials")
    study = make_study(spec, storage_url, name)
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        raise SearchError(f"study {name!r} has no completed trial")
    best = study.best_trial
    best_spec = spec.variant(best.params)
    best_yaml = _best_yaml(
        loaded, best=best_spec, study_name=name, trial=best.number, value=best.value, objective=spec.search.objective
    )
    log.info("best trial %d: dev %s = %.4f with %s", best.number, spec.search.objective, best.value, best.params)
    # Run the spec as written, so `embx run <spec>.best.yaml` finds this run (paths hash relative to that file).
    best_spec = load_spec(best_yaml).spec
    # The test split is scored once, by one final run of the best spec.
    from runner.ablate import Variant

    final = run_spec(
        loaded, db, best_spec, Variant(f"best of {name}", best.params, 0, best_spec), study=name, trial=best.number
    )
    try:
        importances = optuna.importance.get_param_importances(study) if len(completed) > 1 else {}
    except Exception as exc:  # importance needs variation in the completed trials
        log.warning("parameter importances unavailable: %s", exc)
        importances = {}
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    store.save_study(
        db,
        {
            "study": name,
            "experiment": spec.name,
            "storage": redact(storage_url),
            "objective": spec.search.objective,
            "direction": spec.search.direction,
            "best_trial": best.number,
            "best_value": best.value,
            "best_params": best.params,
            "importances": {k: float(v) for k, v in importances.items()},
            "best_run_id": final.run_id,
        },
    )
    return SearchResult(
        study=name,
        storage=redact(storage_url),
        best_trial=best.number,
        best_value=best.value,
        best_params=best.params,
        best_yaml=best_yaml,
        objective=spec.search.objective,
        trials=counts,
        final=final,
    )
