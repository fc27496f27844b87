"""Experiment trackers: a tiny run logged live to a local MLflow store, read back with MLflow's client;
`embx push-runs` copying stored runs once; a tracker not installed and an unreachable server as bad input."""

from __future__ import annotations

import importlib.util
import socket
import time
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from helpers import auto_cpu_precision

from runner import store
from runner.cli import main
from runner.pipeline import run_spec
from runner.spec import Spec, SpecError, load_spec
from runner.spec.train import TRACKERS, TRACKERS_SINCE, trainer_report_to, transformers_major
from runner.trackers import COMPLETE_TAG, RUN_TAG, push_runs

EPOCHS = 2


def _uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def _runs(uri: str, experiment: str = "tiny") -> list:
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


@pytest.fixture(scope="module")
def tracked(make_spec, tmp_path_factory):
    """One tiny run of embx's own loop (2 epochs, dev scored after each) logged to a local MLflow store."""
    folder = tmp_path_factory.mktemp("tracked")
    uri = _uri(folder)
    train = {
        "epochs": EPOCHS,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "early_stopping": None,
        "loop": "embx",
        "precision": auto_cpu_precision(),
        "report_to": ["mlflow"],
        "tracking_uri": uri,
    }
    output = {"embedding_cache": False, "save_model": "all", "dir": str(folder / "models")}
    path = make_spec(folder / "spec.yaml", train=train, output=output)
    db = folder / "runs.duckdb"
    result = run_spec(load_spec(path), db)
    return uri, db, store.get_run(db, result.run_id)


def test_a_run_is_logged_to_mlflow_and_reads_back(tracked):
    uri, _, stored = tracked
    (run,) = _runs(uri)
    client = mlflow.MlflowClient(uri)
    mlflow_id = run.info.run_id
    assert run.data.tags[RUN_TAG] == stored["run_id"] and run.data.tags[COMPLETE_TAG] == "true"
    assert run.info.status == "FINISHED"
    # The training curves, as the loop logged them (the same rows the store keeps).
    logged = {row["name"] for row in stored["train_log"]}
    assert {"loss", "learning_rate", "dev_ndcg@10"} <= logged
    for name, key in (("loss", "loss"), ("learning_rate", "learning_rate")):
        history = client.get_metric_history(mlflow_id, key)
        expected = [row["value"] for row in stored["train_log"] if row["name"] == name]
        assert len(history) == len(expected) >= EPOCHS
        assert sorted(m.value for m in history) == pytest.approx(sorted(expected))
    dev = sorted(client.get_metric_history(mlflow_id, "eval_dev_ndcg_10"), key=lambda m: m.step)
    assert len(dev) == EPOCHS + 1  # the base model's (epoch 0, step 0), then one point per epoch
    stored_dev = [row["value"] for row in stored["train_log"] if row["name"] == "dev_ndcg@10"]
    assert [m.value for m in dev] == pytest.approx(stored_dev)
    # Final test metrics, base and tuned, and the spec as parameters.
    assert run.data.metrics["test_tuned_ndcg_10"] == pytest.approx(stored["metrics"]["tuned"]["ndcg@10"])
    assert run.data.metrics["test_base_recall_10"] == pytest.approx(stored["metrics"]["base"]["recall@10"])
    params = run.data.params
    assert params["train.learning_rate"] == "0.001" and params["train.epochs"] == str(EPOCHS)
    assert params["name"] == "tiny" and params["eval.main"] == "ndcg@10"


def test_push_runs_copies_a_run_once(tracked, tmp_path):
    _, db, stored = tracked
    uri = _uri(tmp_path)
    first = push_runs(db, tracking_uri=uri)
    assert list(first.pushed) == [stored["run_id"]] and first.skipped == []
    second = push_runs(db, tracking_uri=uri)
    assert second.pushed == {} and second.skipped == [stored["run_id"]]
    (run,) = _runs(uri)
    client = mlflow.MlflowClient(uri)
    assert run.data.tags[RUN_TAG] == stored["run_id"] and run.info.status == "FINISHED"
    assert run.data.metrics["test_tuned_ndcg_10"] == pytest.approx(stored["metrics"]["tuned"]["ndcg@10"])
    assert run.data.params["train.learning_rate"] == "0.001"
    assert len(client.get_metric_history(run.info.run_id, "eval_dev_ndcg_10")) == EPOCHS + 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/config.json" in artifacts or "model/modules.json" in artifacts


def test_push_runs_skips_a_run_logged_live(tracked):
    uri, db, stored = tracked
    result = push_runs(db, tracking_uri=uri)
    assert result.pushed == {} and result.skipped == [stored["run_id"]]
    assert len(_runs(uri)) == 1


def test_push_runs_replaces_a_run_whose_push_broke_off(tracked, tmp_path):
    _, db, stored = tracked
    uri = _uri(tmp_path)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("tiny")
    client.create_run(experiment, tags={RUN_TAG: stored["run_id"]})  # no embx.complete: an interrupted push
    result = push_runs(db, tracking_uri=uri)
    assert list(result.pushed) == [stored["run_id"]]
    (run,) = _runs(uri)
    assert run.data.tags[COMPLETE_TAG] == "true"


def test_push_runs_command_twice(tracked, tmp_path):
    _, db, stored = tracked
    uri = _uri(tmp_path)
    args = ["push-runs", "--to", "mlflow", "--tracking-uri", uri, "--db", str(db)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "1 run(s) pushed, 0 already there" in first.output
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert "0 run(s) pushed, 1 already there" in second.output
    assert len(_runs(uri)) == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_server_fails_fast_without_credentials(write_spec, tmp_path):
    url = f"http://embx-user:s3cret-token@127.0.0.1:{_closed_port()}/?token=s3cret-token"
    path = write_spec(train={"epochs": 1, "report_to": ["mlflow"], "tracking_uri": url, "early_stopping": None})
    db = tmp_path / "runs.duckdb"
    started = time.monotonic()
    result = CliRunner().invoke(main, ["run", str(path), "--db", str(db)])
    # Not a speed goal: MLflow's client alone retries for minutes before it gives up.
    assert time.monotonic() - started < 60
    assert result.exit_code == 2, result.output
    assert "not reachable" in result.output and "127.0.0.1" in result.output
    assert "s3cret" not in result.output and "embx-user" not in result.output
    assert not db.exists() or store.list_runs(db) == []  # failed before any run started

    pushed = CliRunner().invoke(main, ["push-runs", "--tracking-uri", url, "--db", str(db)])
    assert pushed.exit_code == 2 and "not reachable" in pushed.output and "s3cret" not in pushed.output


def _pretend_missing(monkeypatch, module: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))


def test_a_tracker_not_installed_is_a_spec_error_naming_the_install(write_spec, monkeypatch):
    _pretend_missing(monkeypatch, "wandb")
    path = write_spec(train={"report_to": ["wandb"]})
    with pytest.raises(SpecError, match=r"tracker 'wandb' is not installed: pip install wandb"):
        load_spec(path)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "pip install wandb" in result.output

    _pretend_missing(monkeypatch, "mlflow")
    with pytest.raises(SpecError, match=r"pip install mlflow"):
        load_spec(write_spec(train={"report_to": ["mlflow"]}))


def test_unknown_tracker_names_the_close_one(write_spec):
    with pytest.raises(SpecError, match=r"unknown tracker 'mlfow': did you mean 'mlflow'"):
        load_spec(write_spec(train={"report_to": ["mlfow"]}))


def test_tracker_names_are_transformers_integrations():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    later = {name for name, since in TRACKERS_SINCE.items() if transformers_major() < since}
    assert set(TRACKERS) - later == set(INTEGRATION_TO_CALLBACK)


def test_a_tracker_of_a_later_transformers_is_refused_naming_the_version(write_spec, monkeypatch):
    monkeypatch.setattr("runner.spec.train.transformers_major", lambda: 4)
    with pytest.raises(SpecError, match=r"kubeflow' needs transformers >= 5 \(installed: 4.x\)"):
        load_spec(write_spec(train={"report_to": ["kubeflow"]}))


def test_trackers_embx_does_not_log_go_to_the_trainer(write_spec, monkeypatch):
    _pretend_installed = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "comet_ml" else _pretend_installed(name, *a)
    )
    with pytest.raises(SpecError, match=r"comet_ml is logged by transformers' trainer only"):
        load_spec(write_spec(train={"report_to": ["comet_ml"]}))  # loop auto: embx's own loop
    spec = load_spec(write_spec(train={"report_to": ["mlflow", "comet_ml"], "loop": "trainer"})).spec
    assert trainer_report_to(spec.train.report_to) == ["comet_ml"]
    assert trainer_report_to(["mlflow"]) == "none" and trainer_report_to(None) == "none"


def test_report_to_takes_no_part_in_the_spec_hash(tiny_model, tiny_beir):
    data = {"name": "x", "model": {"base": str(tiny_model)}, "data": {"path": str(tiny_beir)}}
    plain = Spec.model_validate(data)
    tracked = Spec.model_validate({**data, "train": {"report_to": ["mlflow"], "tracking_uri": "sqlite:///m.db"}})
    assert tracked.spec_hash() == plain.spec_hash()


def test_the_trainer_loop_logs_under_the_same_names(make_spec, tmp_path):
    uri = _uri(tmp_path)
    train = {
        "epochs": 1,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "early_stopping": None,
        "loop": "trainer",
        "precision": "fp32",
        "report_to": ["mlflow"],
        "tracking_uri": uri,
    }
    path = make_spec(tmp_path / "spec.yaml", train=train, output={"embedding_cache": False, "save_model": "none"})
    result = run_spec(load_spec(path), tmp_path / "runs.duckdb")
    (run,) = _runs(uri)
    client = mlflow.MlflowClient(uri)
    assert run.data.tags[RUN_TAG] == result.run_id
    assert len(client.get_metric_history(run.info.run_id, "eval_dev_ndcg_10")) == 2  # base, then the epoch
    assert client.get_metric_history(run.info.run_id, "loss") and "learning_rate" in run.data.metrics
    assert run.data.metrics["test_tuned_ndcg_10"] == pytest.approx(result.metrics["tuned"]["ndcg@10"])


def test_a_specs_tracking_server_never_receives_mlflow_credentials_unasked(monkeypatch):
    from runner.spec.train import TrainSpec

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("EMBX_TRACKING_HOSTS", raising=False)
    assert TrainSpec(tracking_uri="http://collector.example:5000").tracking_uri  # no credentials set: fine
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret-token")
    with pytest.raises(ValueError, match="MLflow would send MLFLOW_TRACKING_TOKEN to the spec's tracking server") as e:
        TrainSpec(tracking_uri="http://collector.example:5000")
    assert "secret-token" not in str(e.value)
    assert TrainSpec(tracking_uri="sqlite:///mlflow.db").tracking_uri  # a local store sends nothing
    monkeypatch.setenv("EMBX_TRACKING_HOSTS", "mlflow.internal, collector.example")
    assert TrainSpec(tracking_uri="http://collector.example:5000").tracking_uri
    monkeypatch.delenv("EMBX_TRACKING_HOSTS")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://collector.example")
    assert TrainSpec(tracking_uri="http://collector.example:5000").tracking_uri
