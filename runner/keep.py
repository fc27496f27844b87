"""Which saved models to keep: the best run of each experiment (`output.save_model: best`, and `embx gc`)."""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from runner import store

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx")


def weights_sha256(folder: Path) -> str:
    """sha256 over the weight files of a saved model (relative names and bytes, in name order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class Removal:
    """A saved model that is not its experiment's best.

    Attributes:
        run_id: The run that saved it.
        experiment: Its experiment.
        path: The model folder.
        best_run_id: The experiment's best run (whose model is kept).

    """

    run_id: str
    experiment: str
    path: str
    best_run_id: str


def removable(db: str | Path, *, experiment: str | None = None) -> list[Removal]:
    """Saved models of ok runs that are not the best of their experiment.

    The best run has the highest tuned main metric on dev (on test for runs without a dev split); a model
    already removed is not listed again.
    """
    out = []
    by_experiment: dict[str, list[dict]] = {}
    for run in store.saved_models(db, experiment=experiment):
        by_experiment.setdefault(run["experiment"], []).append(run)
    for name, runs in by_experiment.items():
        best = max(runs, key=lambda r: (r["score"] is not None, r["score"] or 0.0, r["started_at"]))
        out += [Removal(r["run_id"], name, r["path"], best["run_id"]) for r in runs if r is not best]
    return out


def remove_models(db: str | Path, *, experiment: str | None = None) -> list[Removal]:
    """Delete the saved models :func:`removable` lists and record that in their runs; returns what was removed."""
    removed = removable(db, experiment=experiment)
    for item in removed:
        shutil.rmtree(item.path, ignore_errors=True)
        store.forget_saved_model(db, item.run_id, reason=f"removed: not the best run of {item.experiment}")
        log.info(
            "removed the model of run %s (%s): %s is its experiment's best", item.run_id, item.path, item.best_run_id
        )
    return removed
