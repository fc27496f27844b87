"""Reading runs back: lists, one run whole, finished runs and baselines to reuse, an experiment's runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from runner.store.base import _decode, _rows
from runner.store.connection import connect
from runner.store.liveness import _mark_stale

log = logging.getLogger(__name__)


def list_runs(db: str | Path, experiment: str | None = None) -> list[dict[str, Any]]:
    """Runs, newest first, each with its main test metric for base and tuned (stale runs as `stale?`)."""
    with connect(db, read_only=True) as con:
        where = "WHERE r.experiment = ?" if experiment else ""
        runs = _rows(
            con,
            "SELECT r.run_id, r.experiment, r.status, r.error, r.spec_hash, r.started_at, r.finished_at, r.device,"
            " r.variant, r.study, r.trial, r.host, r.pid, r.pid_start, r.info,"
            f" r.spec_json FROM runs r {where} ORDER BY r.started_at DESC, r.run_id DESC",
            [experiment] if experiment else [],
        )
        metrics = _rows(
            con, "SELECT run_id, stage, name, value FROM metrics WHERE split = 'test' AND source = 'native'"
        )
    by_run: dict[str, dict[str, dict[str, float]]] = {}
    for m in metrics:
        by_run.setdefault(m["run_id"], {}).setdefault(m["stage"], {})[m["name"]] = m["value"]
    out = []
    for run in runs:
        _mark_stale(run)
        for key in ("host", "pid", "pid_start"):
            del run[key]
        spec = json.loads(run.pop("spec_json") or "{}")
        main = spec.get("eval", {}).get("main")
        run["main_metric"] = main
        run["metrics"] = by_run.get(run["run_id"], {})
        run["model"] = saved_model_of(json.loads(run.pop("info") or "{}"))
        out.append(_decode(run))
    return out


def get_run(db: str | Path, run_id: str) -> dict[str, Any]:
    """One run with its metrics ({split: {stage: {name: value}}} per source) and training log.

    A `running` run whose process is gone shows as `stale?` (nothing is written).

    Args:
        db: Store path.
        run_id: Full id or a unique prefix, taken literally (``%`` and ``_`` are no wildcards).

    Raises:
        KeyError: If no run (or more than one) matches, or the prefix is empty.

    """
    if not run_id:
        raise KeyError("an empty run id prefix matches every run: give a run id or a unique prefix (see `embx ls`)")
    with connect(db, read_only=True) as con:
        found = _rows(con, "SELECT * FROM runs WHERE starts_with(run_id, ?) ORDER BY run_id", [run_id])
        if len(found) != 1:
            raise KeyError(f"no run {run_id!r}" if not found else f"run id prefix {run_id!r} is ambiguous")
        run = _decode(_mark_stale(found[0]))
        rid = run["run_id"]
        metrics = _rows(con, "SELECT split, stage, source, name, value FROM metrics WHERE run_id = ?", [rid])
        run["train_log"] = _rows(
            con, "SELECT step, epoch, name, value FROM train_log WHERE run_id = ? ORDER BY step, name", [rid]
        )
    run["metrics"] = {}
    run["metrics_by_split"] = {}
    for m in metrics:
        if m["source"] == "native" and m["split"] == "test":
            run["metrics"].setdefault(m["stage"], {})[m["name"]] = m["value"]
        split = run["metrics_by_split"].setdefault(m["split"], {})
        split.setdefault(m["source"], {}).setdefault(m["stage"], {})[m["name"]] = m["value"]
    return run


def find_ok_run(db: str | Path, spec_hash: str, *more: str) -> str | None:
    """The newest ok run of a resolved spec, if any (used to skip finished ablation variants).

    Args:
        db: The store.
        spec_hash: The spec's hash.
        *more: Other hashes the same spec had (an older hash algorithm's, which older runs were recorded under).

    """
    if not Path(db).exists():
        return None
    hashes = [spec_hash, *more]
    with connect(db, read_only=True) as con:
        row = con.execute(
            f"SELECT run_id FROM runs WHERE spec_hash IN ({', '.join('?' * len(hashes))}) AND status = 'ok'"
            " ORDER BY started_at DESC LIMIT 1",
            hashes,
        ).fetchone()
    return row[0] if row else None


def find_baseline(db: str | Path, key: str, split: str):
    """The base model's stored evaluation for a baseline key and split, from the run that computed it.

    Returns:
        (EvalResult, run_id) or None. Per-query scores and the top-10 rankings come back for the test split.

    """
    from runner.evaluate import EvalResult

    if not Path(db).exists():
        return None
    with connect(db, read_only=True) as con:
        row = con.execute(
            "SELECT r.run_id FROM runs r WHERE r.baseline_key = ? AND r.status = 'ok' AND EXISTS (SELECT 1 FROM"
            " metrics m WHERE m.run_id = r.run_id AND m.split = ? AND m.stage = 'base') ORDER BY r.started_at LIMIT 1",
            [key, split],
        ).fetchone()
        if not row:
            return None
        source = _rows(con, "SELECT info FROM runs WHERE run_id = ?", [row[0]])[0]
        origin = (json.loads(source["info"] or "{}").get("baseline_from") or {}).get(split, row[0])
        args = [row[0], split]
        metrics = con.execute(
            "SELECT name, value FROM metrics WHERE run_id = ? AND split = ? AND stage = 'base' AND source = 'native'",
            args,
        ).fetchall()
        scores = con.execute(
            "SELECT query_id, name, value FROM query_scores WHERE run_id = ? AND split = ? AND stage = 'base'", args
        ).fetchall()
        ranks = con.execute(
            "SELECT query_id, doc_id, score FROM rankings WHERE run_id = ? AND split = ? AND stage = 'base'", args
        ).fetchall()
    per_query: dict[str, dict[str, float]] = {}
    for qid, name, value in scores:
        per_query.setdefault(qid, {})[name] = value
    run: dict[str, dict[str, float]] = {}
    for qid, did, score in ranks:
        run.setdefault(qid, {})[did] = score
    return EvalResult(dict(metrics), per_query, run), origin


def experiment_names(db: str | Path) -> list[str]:
    """Experiments in the store, most recently run first."""
    with connect(db, read_only=True) as con:
        rows = con.execute("SELECT experiment FROM runs GROUP BY experiment ORDER BY max(started_at) DESC").fetchall()
    return [r[0] for r in rows]


def load_experiment(db: str | Path, experiment: str) -> dict[str, Any]:
    """Everything a report shows about one experiment: runs, metrics, per-query scores, curves, examples.

    Returns:
        A dict with lists of row dicts: ``runs`` (decoded, oldest first, stale ones as `stale?`), ``metrics``,
        ``query_scores`` (test), ``train_log``, ``rankings`` (test, top 10), and ``texts``/``qrels`` of the
        datasets the runs used.

    """
    with connect(db, read_only=True) as con:
        runs = [
            _decode(_mark_stale(r))
            for r in _rows(con, "SELECT * FROM runs WHERE experiment = ? ORDER BY started_at", [experiment])
        ]
        if not runs:
            raise KeyError(f"no experiment {experiment!r} in {db}")
        ids = [r["run_id"] for r in runs]
        datasets = sorted({(r.get("info") or {}).get("dataset") for r in runs} - {None})

        def select(sql: str, values: list) -> list[dict[str, Any]]:
            marks = ", ".join("?" for _ in values) or "NULL"
            return _rows(con, sql.format(marks=marks), values)

        return {
            "runs": runs,
            "metrics": select("SELECT * FROM metrics WHERE run_id IN ({marks})", ids),
            "query_scores": select("SELECT * FROM query_scores WHERE split = 'test' AND run_id IN ({marks})", ids),
            "train_log": select("SELECT * FROM train_log WHERE run_id IN ({marks}) ORDER BY step", ids),
            "rankings": select("SELECT * FROM rankings WHERE split = 'test' AND run_id IN ({marks})", ids),
            "texts": select("SELECT * FROM texts WHERE dataset IN ({marks})", datasets),
            "qrels": select("SELECT * FROM qrels WHERE dataset IN ({marks})", datasets),
        }


def saved_model_of(info: dict[str, Any]) -> dict[str, Any] | None:
    """A run's saved model as {"path", "sha256", "removed"?} from its info (older runs stored a bare path)."""
    saved = info.get("saved_model")
    if isinstance(saved, str):
        return {"path": saved, "sha256": None}
    return saved if isinstance(saved, dict) else None
