"""Experiment trackers: runs logged live to MLflow, Weights & Biases, TensorBoard or Trackio; stored runs pushed.

``start`` opens one tracker run per name in ``train.report_to`` that embx logs itself (see
:data:`runner.spec.train.EMBX_TRACKERS`) and logs the spec as parameters; the training loops stream their log rows
(loss, learning rate, grad norm, dev metrics per epoch) into :meth:`Tracking.log_rows`; ``Tracking.finish`` logs the
test metrics and closes the runs. transformers' other integrations are passed to the trainer as its ``report_to``
(:func:`runner.spec.train.trainer_report_to`). ``push_runs`` (`embx push-runs`) copies runs from the embx store
into an MLflow tracking store, once per run. Each tracker's package is imported inside the function that uses it.

Metric names follow transformers' trainer: ``loss``, ``learning_rate``, ``grad_norm``, ``epoch``,
``eval_dev_ndcg_10`` (``@`` and other characters MLflow refuses become ``_``), and ``test_tuned_ndcg_10`` /
``test_base_ndcg_10`` for the final scores. Every embx run in MLflow carries the tag ``embx.run_id``; the tag
``embx.complete`` marks one whose logging finished, which ``push_runs`` then leaves alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from runner import store
from runner.spec.train import EMBX_TRACKERS

if TYPE_CHECKING:
    from runner.spec import Spec

log = logging.getLogger(__name__)

RUN_TAG = "embx.run_id"
"""MLflow tag holding the embx run id: how `push_runs` knows a run is already there."""
COMPLETE_TAG = "embx.complete"
"""MLflow tag set once a run's logging finished; a run without it (a crash, an interrupted push) is pushed again."""
PROBE_TIMEOUT = 5.0
"""Seconds the reachability probe of a tracking server waits."""
PUSHED_STATUSES = ("ok", "failed", "interrupted", "pruned")
"""Stored runs `push_runs` copies: finished ones (running and stale runs are left for later)."""
_MLFLOW_STATUS = {"ok": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "pruned": "KILLED"}

LogRows = list[tuple[int, float, str, float]]


class TrackerError(Exception):
    """A tracker that cannot be used: not installed, or its tracking server not reachable."""


def metric_key(name: str) -> str:
    """A tracker metric name for an embx log or metric name, as transformers' trainer names them.

    ``dev_ndcg@10`` -> ``eval_dev_ndcg_10``; characters MLflow refuses become ``_``.
    """
    if name.startswith("dev_"):
        name = f"eval_{name}"
    return _sanitize(name)


def _sanitize(name: str) -> str:
    """`name` with the characters MLflow refuses in metric names (``@``, ...) as ``_``, as transformers does."""
    return re.sub(r"[^0-9A-Za-z_\-\.\ :/]", "_", name)


def score_key(*, split: str, stage: str, source: str, name: str) -> str:
    """A tracker metric name for one stored score: ``test_tuned_ndcg_10`` (``test_tuned_mteb_ndcg_10`` for mteb)."""
    parts = [split, stage] + ([] if source == "native" else [source]) + [name]
    return _sanitize("_".join(parts))


def spec_params(resolved: dict[str, Any]) -> dict[str, str]:
    """The resolved spec as flat parameters: ``train.learning_rate`` -> ``"2e-05"``; lists and nulls as JSON."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, str):
            out[prefix] = node[:500]
        else:
            out[prefix] = json.dumps(node)[:500]

    walk(resolved, "")
    return out


def redact(uri: str) -> str:
    """`uri` without user name, password and query (which may carry a token): safe to print."""
    parts = urlsplit(uri)
    if not parts.netloc:
        return uri
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_tracking_uri(uri: str | None, *, timeout: float = PROBE_TIMEOUT) -> None:
    """Fail fast when an http(s) tracking URI does not answer (MLflow's client would retry for minutes).

    Any HTTP answer counts as reachable (a login page, a 404): only a refused or timed-out connection fails.
    Local stores (``sqlite:``, ``file:``, a path) need no probe.

    Raises:
        TrackerError: If the server does not answer within `timeout` seconds (the URI redacted).

    """
    import urllib.error
    import urllib.request

    if not uri or urlsplit(uri).scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(uri, timeout=timeout).close()  # noqa: S310 - http(s) only, checked above
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackerError(
            f"MLflow tracking server {redact(uri)} is not reachable ({reason}); start it, or set train.tracking_uri "
            "(or --tracking-uri) to a reachable server or a local store such as sqlite:///mlflow.db"
        ) from None


def preflight(spec: Spec) -> None:
    """Probe the spec's MLflow tracking server once, before a command starts its runs (each run probes again).

    Raises:
        TrackerError: If ``train.report_to`` names mlflow and its http(s) server does not answer.

    """
    if "mlflow" in (spec.train.report_to or []):
        check_tracking_uri(spec.train.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))


def _mlflow_client(uri: str | None):
    """An MlflowClient on `uri` (else MLFLOW_TRACKING_URI, else MLflow's default), failing fast when unreachable."""
    try:
        import mlflow
    except ImportError:
        raise TrackerError("MLflow is not installed: pip install mlflow  (or: pip install 'embx[trackers]')") from None
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    check_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def _experiment_id(client, name: str) -> str:
    """The MLflow experiment `name`, created when missing (a sqlite store keeps its artifacts beside the database)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    uri = client.tracking_uri
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def _metrics(rows: Iterable[tuple[str, float, int]]):
    """MLflow Metric objects for (key, value, step) rows, stamped now."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    return [Metric(key=key, value=float(value), timestamp=stamp, step=int(step)) for key, value, step in rows]


def _log_batch(client, run_id: str, *, metrics: list | None = None, params: dict[str, str] | None = None) -> None:
    """Log metrics and params in MLflow's batch sizes (1,000 metrics, 100 params per call)."""
    from mlflow.entities import Param

    metrics = metrics or []
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000], synchronous=True)
    items = [Param(key, value) for key, value in (params or {}).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100], synchronous=True)


def _row_metrics(rows: LogRows, seen: set[int] | None = None) -> list[tuple[str, float, int]]:
    """(key, value, step) of training-log rows, with the epoch once beside each logged step (as the trainer logs it).

    Steps in `seen` already have their epoch logged; the new ones are added to it.
    """
    seen = set() if seen is None else seen
    out, epochs = [], {}
    for step, epoch, name, value in rows:
        out.append((metric_key(name), value, step))
        if step not in seen:
            epochs[step] = epoch
    seen.update(epochs)
    return out + [("epoch", epoch, step) for step, epoch in epochs.items()]


def _score_metrics(scores: Iterable[tuple[str, str, str, str, float]], step: int) -> list[tuple[str, float, int]]:
    """(key, value, step) of stored scores: rows of (split, stage, source, name, value)."""
    return [
        (score_key(split=split, stage=stage, source=source, name=name), value, step)
        for split, stage, source, name, value in scores
        if value is not None
    ]


@dataclass
class Tracking:
    """The tracker runs one embx run is logged to, by tracker name (see the module docstring).

    A tracker that fails while logging is reported once and dropped: the run goes on, the embx store keeps
    everything, and `embx push-runs` can copy it later.
    """

    run_id: str
    handles: dict[str, Any] = field(default_factory=dict)
    last_step: int = 0
    epoch_steps: set[int] = field(default_factory=set)
    """Steps whose epoch is logged."""

    def log_rows(self, rows: LogRows) -> None:
        """Log training-log rows (step, epoch, name, value): loss, learning rate, grad norm, dev metrics."""
        if not rows:
            return
        self.last_step = max(self.last_step, *(int(row[0]) for row in rows))
        self._each("log", _row_metrics(rows, self.epoch_steps))

    def finish(self, *, status: str, scores: Iterable[tuple[str, str, str, str, float]] = ()) -> None:
        """Log the final scores (split, stage, source, name, value) and close every tracker run."""
        self._each("log", _score_metrics(scores, self.last_step), final=True)
        self._each("end", status)
        self.handles.clear()

    def _each(self, action: str, *args: Any, **kwargs: Any) -> None:
        for name, handle in list(self.handles.items()):
            try:
                _ACTIONS[name][action](handle, *args, **kwargs)
            except Exception as exc:  # a tracker must not fail the run it watches
                log.warning("tracker %s failed (%s: %s); the run goes on without it", name, type(exc).__name__, exc)
                self.handles.pop(name, None)


def start(spec: Spec, *, run_id: str, variant: str | None) -> Tracking | None:
    """Open a tracker run for each tracker embx logs itself in ``spec.train.report_to`` and log the spec.

    The resolved spec is logged as flat parameters, and the variant and spec hash as the tags ``embx.variant`` and
    ``embx.spec_hash``.

    Args:
        spec: The run's spec (``train.report_to``, ``train.tracking_uri``, ``name``, ``output.dir``).
        run_id: The embx run id (the tracker run's name, and the MLflow tag ``embx.run_id``).
        variant: The run's ablation variant (None: base).

    Returns:
        The open runs, or None when the spec names no tracker embx logs.

    Raises:
        TrackerError: If a tracker cannot start (its server not reachable, its package missing).

    """
    names = [name for name in spec.train.report_to or [] if name in EMBX_TRACKERS]
    if not names:
        return None
    tracking = Tracking(run_id=run_id)
    params = spec_params(spec.model_dump(mode="json"))
    tags = {"embx.variant": str(variant or "base"), "embx.spec_hash": spec.spec_hash()}
    try:
        for name in names:
            tracking.handles[name] = _ACTIONS[name]["start"](spec, run_id=run_id, params=params, tags=tags)
    except BaseException:
        tracking.finish(status="failed")
        raise
    return tracking


def _mlflow_start(spec: Spec, *, run_id: str, params: dict[str, str], tags: dict[str, str]):
    client = _mlflow_client(spec.train.tracking_uri)
    experiment = _experiment_id(client, spec.name)
    _delete_incomplete(client, experiment, run_id)
    run = client.create_run(experiment, run_name=run_id, tags={RUN_TAG: run_id, **tags})
    _log_batch(client, run.info.run_id, params=params)
    return client, run.info.run_id


def _mlflow_log(handle, rows: list[tuple[str, float, int]], final: bool = False) -> None:
    client, run = handle
    _log_batch(client, run, metrics=_metrics(rows))


def _mlflow_end(handle, status: str) -> None:
    client, run = handle
    client.set_tag(run, COMPLETE_TAG, "true")
    client.set_terminated(run, status=_MLFLOW_STATUS.get(status, "FAILED"))


def _wandb_start(spec: Spec, *, run_id: str, params: dict[str, str], tags: dict[str, str]):
    import wandb

    project = os.environ.get("WANDB_PROJECT") or spec.name
    return wandb.init(project=project, name=run_id, config=params, tags=[f"{k}={v}" for k, v in tags.items()])


def _wandb_log(run, rows: list[tuple[str, float, int]], final: bool = False) -> None:
    if final:
        run.summary.update({key: value for key, value, _ in rows})
        return
    for step in sorted({step for _, _, step in rows}):
        run.log({key: value for key, value, s in rows if s == step}, step=step)


def _wandb_end(run, status: str) -> None:
    run.finish(exit_code=0 if status == "ok" else 1)


def _tensorboard_start(spec: Spec, *, run_id: str, params: dict[str, str], tags: dict[str, str]):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(Path(spec.output.dir) / "tensorboard" / run_id))
    writer.add_text("spec", "\n".join(f"    {key}: {value}" for key, value in params.items()))
    return writer


def _tensorboard_log(writer, rows: list[tuple[str, float, int]], final: bool = False) -> None:
    for key, value, step in rows:
        writer.add_scalar(key, value, step)
    writer.flush()


def _tensorboard_end(writer, status: str) -> None:
    writer.add_text("status", status)
    writer.close()


def _trackio_start(spec: Spec, *, run_id: str, params: dict[str, str], tags: dict[str, str]):
    import trackio

    return trackio.init(project=os.environ.get("TRACKIO_PROJECT") or spec.name, name=run_id, config=params)


def _trackio_log(run, rows: list[tuple[str, float, int]], final: bool = False) -> None:
    for step in sorted({step for _, _, step in rows}):
        run.log({key: value for key, value, s in rows if s == step}, step=step)


def _trackio_end(run, status: str) -> None:
    run.finish()


_ACTIONS: dict[str, dict[str, Any]] = {
    "mlflow": {"start": _mlflow_start, "log": _mlflow_log, "end": _mlflow_end},
    "wandb": {"start": _wandb_start, "log": _wandb_log, "end": _wandb_end},
    "tensorboard": {"start": _tensorboard_start, "log": _tensorboard_log, "end": _tensorboard_end},
    "trackio": {"start": _trackio_start, "log": _trackio_log, "end": _trackio_end},
}


def _delete_incomplete(client, experiment: str, run_id: str) -> bool:
    """Delete MLflow runs of embx run `run_id` whose logging never finished; True if a complete one exists."""
    found = client.search_runs([experiment], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'", max_results=100)
    complete = False
    for run in found:
        if run.data.tags.get(COMPLETE_TAG) == "true":
            complete = True
        else:
            client.delete_run(run.info.run_id)
    return complete


@dataclass
class PushResult:
    """What `push_runs` did: MLflow run ids of the runs it copied, and the runs already there."""

    tracking_uri: str
    pushed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def push_runs(
    db: str | Path, *, tracking_uri: str | None, experiment: str | None = None, run_ids: list[str] | None = None
) -> PushResult:
    """Copy finished runs from the embx store into an MLflow tracking store; runs already there are skipped.

    Each run becomes one MLflow run in the experiment named after the embx experiment: the resolved spec as
    parameters, every stored score (``test_tuned_ndcg_10``), the training log as per-step curves (loss, learning
    rate, dev metrics per epoch), the saved model folder as the artifact ``model`` when it still exists, and the
    tags ``embx.run_id``, status, variant and spec hash.

    Args:
        db: The embx store.
        tracking_uri: MLflow tracking URI (None: MLFLOW_TRACKING_URI, else MLflow's default).
        experiment: Only runs of this embx experiment.
        run_ids: Only these runs (ids or unique prefixes).

    Raises:
        TrackerError: If MLflow is missing or the tracking server is not reachable.
        KeyError: If a run id matches no run.

    """
    client = _mlflow_client(tracking_uri)
    if run_ids:
        chosen = [store.get_run(db, run_id) for run_id in run_ids]
    else:
        chosen = [store.get_run(db, run["run_id"]) for run in reversed(store.list_runs(db, experiment=experiment))]
    result = PushResult(tracking_uri=redact(client.tracking_uri))
    for run in chosen:
        if experiment and run["experiment"] != experiment:
            continue
        if run["status"] not in PUSHED_STATUSES:
            log.info("run %s is %s: not pushed", run["run_id"], run["status"])
            continue
        experiment_id = _experiment_id(client, run["experiment"])
        if _delete_incomplete(client, experiment_id, run["run_id"]):
            result.skipped.append(run["run_id"])
            continue
        result.pushed[run["run_id"]] = _push_one(client, experiment_id, run)
    return result


def _push_one(client, experiment_id: str, run: dict[str, Any]) -> str:
    """Copy one stored run (from `store.get_run`) into MLflow; returns the MLflow run id."""
    started = _millis(run.get("started_at"))
    tags = {
        RUN_TAG: run["run_id"],
        "embx.status": run["status"],
        "embx.variant": str(run.get("variant") or "base"),
        "embx.spec_hash": str(run.get("spec_hash") or ""),
    }
    created = client.create_run(experiment_id, start_time=started, run_name=run["run_id"], tags=tags)
    mlflow_id = created.info.run_id
    rows = [(row["step"] or 0, row["epoch"] or 0.0, row["name"], row["value"]) for row in run["train_log"]]
    rows = [row for row in rows if row[3] is not None]
    last = max((int(row[0]) for row in rows), default=0)
    scores = [
        (split, stage, source, name, value)
        for split, by_source in run["metrics_by_split"].items()
        for source, by_stage in by_source.items()
        for stage, values in by_stage.items()
        for name, value in values.items()
    ]
    params = spec_params(json.loads(run.get("spec_json") or "{}"))
    _log_batch(client, mlflow_id, metrics=_metrics(_row_metrics(rows) + _score_metrics(scores, last)), params=params)
    saved = store.saved_model_of(run.get("info") or {})
    if saved and not saved.get("removed") and Path(saved["path"]).is_dir():
        client.log_artifacts(mlflow_id, saved["path"], artifact_path="model")
    client.set_tag(mlflow_id, COMPLETE_TAG, "true")
    client.set_terminated(
        mlflow_id, status=_MLFLOW_STATUS.get(run["status"], "FAILED"), end_time=_millis(run.get("finished_at"))
    )
    return mlflow_id


def _millis(stamp: str | None) -> int | None:
    """Milliseconds since the epoch of a stored UTC timestamp (None stays None)."""
    from datetime import datetime, timezone

    if not stamp:
        return None
    moment = datetime.fromisoformat(str(stamp))
    if moment.tzinfo is None:  # the store keeps UTC without tzinfo
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)
