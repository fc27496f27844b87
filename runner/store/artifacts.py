"""What else a store keeps: Optuna studies, saved models, exports, index evaluations, dataset texts."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.store.base import _rows, now
from runner.store.connection import connect

log = logging.getLogger(__name__)


def save_study(db: str | Path, summary: dict[str, Any]) -> None:
    """Insert or replace a study's summary (best trial, parameter importances, final run)."""
    cols = [
        "study",
        "experiment",
        "storage",
        "objective",
        "direction",
        "best_trial",
        "best_value",
        "best_params",
        "importances",
        "best_run_id",
    ]
    values = [json.dumps(summary.get(c)) if c in ("best_params", "importances") else summary.get(c) for c in cols]
    with connect(db) as con:
        con.execute(
            f"INSERT OR REPLACE INTO studies ({', '.join(cols)}, updated_at) VALUES ({', '.join('?' * len(cols))}, ?)",
            [*values, now()],
        )


def load_studies(db: str | Path, experiment: str) -> list[dict[str, Any]]:
    """Searches of an experiment, each with its trials (run id, trial, status, dev objective per epoch)."""
    with connect(db, read_only=True) as con:
        studies = _rows(con, "SELECT * FROM studies WHERE experiment = ? ORDER BY updated_at", [experiment])
        for study in studies:
            study["best_params"] = json.loads(study["best_params"] or "{}")
            study["importances"] = json.loads(study["importances"] or "{}")
            study["trials"] = _rows(
                con,
                "SELECT r.run_id, r.trial, r.status, r.changes, m.value AS dev_objective FROM runs r"
                " LEFT JOIN metrics m ON m.run_id = r.run_id AND m.split = 'dev' AND m.stage = 'tuned' AND m.name = ?"
                " WHERE r.study = ? AND r.trial IS NOT NULL AND r.variant LIKE 'trial %' ORDER BY r.trial",
                [study["objective"], study["study"]],
            )
            for trial in study["trials"]:
                trial["changes"] = json.loads(trial["changes"] or "{}")
                curve = con.execute(
                    "SELECT epoch, value FROM train_log WHERE run_id = ? AND name = ? ORDER BY epoch",
                    [trial["run_id"], f"dev_{study['objective']}"],
                ).fetchall()
                trial["curve"] = [list(row) for row in curve]
    return studies


def saved_models(db: str | Path, *, experiment: str | None = None) -> list[dict[str, Any]]:
    """Ok runs whose tuned model is on disk: run_id, experiment, started_at, path and the score that ranks them.

    The score is the tuned main metric on dev, or on test for a run without a dev split (None: neither).
    """
    where = " AND experiment = ?" if experiment else ""
    with connect(db, read_only=True) as con:
        runs = _rows(
            con,
            f"SELECT run_id, experiment, started_at, info, spec_json FROM runs WHERE status = 'ok'{where}",
            [experiment] if experiment else [],
        )
        scores = _rows(
            con,
            "SELECT run_id, split, name, value FROM metrics WHERE stage = 'tuned' AND source = 'native'"
            " AND split IN ('dev', 'test')",
        )
    by_run: dict[str, dict[tuple[str, str], float]] = {}
    for row in scores:
        by_run.setdefault(row["run_id"], {})[row["split"], row["name"]] = row["value"]
    out = []
    for run in runs:
        saved = json.loads(run["info"] or "{}").get("saved_model")
        path = saved.get("path") if isinstance(saved, dict) and not saved.get("removed") else saved
        if not isinstance(path, str) or not Path(path).is_dir():
            continue
        main = json.loads(run["spec_json"] or "{}").get("eval", {}).get("main")
        values = by_run.get(run["run_id"], {})
        score = values.get(("dev", main), values.get(("test", main)))
        out.append({**{k: run[k] for k in ("run_id", "experiment", "started_at")}, "path": path, "score": score})
    return out


def forget_saved_model(db: str | Path, run_id: str, *, reason: str) -> None:
    """Record in a run's info that its saved model was removed (the path is kept, with the reason)."""
    with connect(db) as con:
        (info,) = con.execute("SELECT info FROM runs WHERE run_id = ?", [run_id]).fetchone()
        data = json.loads(info or "{}")
        saved = data.get("saved_model")
        data["saved_model"] = {**(saved if isinstance(saved, dict) else {"path": saved}), "removed": reason}
        con.execute("UPDATE runs SET info = ? WHERE run_id = ?", [json.dumps(data, default=str), run_id])


def record_index_eval(db: str | Path, run_id: str, figures: dict[str, Any]) -> None:
    """Record in a run's info the figures of `embx eval-index` (``index_eval``; a later measurement replaces it)."""
    with connect(db) as con:
        (info,) = con.execute("SELECT info FROM runs WHERE run_id = ?", [run_id]).fetchone()
        data = json.loads(info or "{}")
        data["index_eval"] = figures
        con.execute("UPDATE runs SET info = ? WHERE run_id = ?", [json.dumps(data, default=str), run_id])


def record_export(
    db: str | Path,
    run_id: str,
    *,
    fmt: str,
    path: str | None,
    parity: dict[str, Any],
    ok: bool,
    hub_repo: str | None = None,
) -> None:
    """Record an export of a run's saved model (`embx export`), passed or failed, with its parity figures."""
    with connect(db) as con:
        con.execute(
            "INSERT INTO exports (run_id, format, path, parity, ok, hub_repo, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [run_id, fmt, path, json.dumps(parity, default=str), ok, hub_repo, now()],
        )


def list_exports(db: str | Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """Exports, oldest first (of one run, if given), with their parity figures decoded."""
    with connect(db, read_only=True) as con:
        where, params = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
        rows = _rows(con, f"SELECT * FROM exports {where} ORDER BY created_at, run_id", params)
    for row in rows:
        row["parity"] = json.loads(row["parity"] or "{}")
        if isinstance(row.get("created_at"), datetime):
            row["created_at"] = row["created_at"].isoformat(timespec="seconds")
    return rows


def dataset_texts(
    db: str | Path, dataset: str
) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, dict[str, int]]]]:
    """The texts and judgements stored for a dataset (a run's test queries and the documents its reports show).

    Returns:
        (queries {id: text}, documents {id: text}, qrels {split: {query id: {document id: grade}}}); empty when
        nothing was stored (e.g. runs that never scored the test split).

    """
    with connect(db, read_only=True) as con:
        texts = con.execute("SELECT kind, id, text FROM texts WHERE dataset = ? ORDER BY id", [dataset]).fetchall()
        judged = con.execute(
            "SELECT split, query_id, doc_id, grade FROM qrels WHERE dataset = ? ORDER BY query_id, doc_id", [dataset]
        ).fetchall()
    queries = {i: t for kind, i, t in texts if kind == "query" and t is not None}
    docs = {i: t for kind, i, t in texts if kind == "doc" and t is not None}
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for split, qid, did, grade in judged:
        qrels.setdefault(split, {}).setdefault(qid, {})[did] = grade
    return queries, docs, qrels
