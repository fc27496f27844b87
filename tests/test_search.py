"""`embx search`: search-space validation, local worker processes, pruning, and Optuna storages."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import cli, query

from runner import store
from runner.search import redact
from runner.spec import SpecError, load_spec

FAST_TRAIN = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}
FAST_EVAL = {"batch_size": 16, "metrics": ["recall@10", "ndcg@10"]}
SPACE = {
    "trials": 10,  # the command line's --trials 4 must win
    "objective": "ndcg@10",
    "sampler": "random",
    "params": {
        "train.learning_rate": {"low": 1e-4, "high": 3e-3, "log": True},
        "train.batch_size": {"choices": [4, 8]},
    },
}
PG_PASSWORD = "hunter2-secret-pw"


def search_spec(make_spec, path: Path, name: str, **search) -> Path:
    return make_spec(path, name=name, train=FAST_TRAIN, data={"limit": 16}, eval=FAST_EVAL, search={**SPACE, **search})


# ------------------------------------------------------------------------------- 1. search space validation

SPACE_HEAD = """\
name: bad-search
model: {{base: {model}, max_seq_length: 32}}
data:
  path: {data}
  splits: {{train: train, dev: {dev}, test: test}}
train: {{epochs: 1, early_stopping: null}}
search:
  trials: 3
  params:
    train.learning_rate: {{low: 1.0e-5, high: 1.0e-3, log: true}}
"""
BAD_LINE = 11  # the line each case below adds after SPACE_HEAD


@pytest.mark.parametrize(
    ("entry", "name", "message"),
    [
        (
            "train.learnin_rate: {low: 1.0e-5, high: 1.0e-3}",
            "train.learnin_rate",
            "unknown spec path; did you mean 'train.learning_rate'?",
        ),
        (
            "train.batch_size: {low: 0, high: 16}",
            "train.batch_size",
            "value 0 is invalid: Input should be greater than or equal to 2",
        ),
        (
            "train.epochs: {low: 1, high: 500}",
            "train.epochs",
            "value 500 is invalid: Input should be less than or equal to 100",
        ),
        (
            "negatives.per_query: {low: 1, high: 4, choices: [2, 3]}",
            "negatives.per_query",
            "give either choices or low/high, not both",
        ),
        (
            "train.warmup_ratio: {low: 0.0, high: 0.5, log: true}",
            "train.warmup_ratio",
            "log ranges need low > 0 and no step",
        ),
    ],
    ids=["unknown-path", "low-end-invalid", "high-end-invalid", "choices-and-low", "log-low-zero"],
)
def test_bad_search_space_is_located(entry, name, message, write_spec, tiny_model, tiny_beir, tmp_path):
    path = write_spec(SPACE_HEAD.format(model=tiny_model, data=tiny_beir, dev="dev") + f"    {entry}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert [str(p) for p in info.value.problems] == [f"{path}:{BAD_LINE}:5: search.params.{name}: {message}"]

    # `embx search` refuses it before any trial: exit 2, nothing written (no store, no Optuna journal).
    db = tmp_path / "r.duckdb"
    result = cli("search", path, "--db", db, "--trials", 2)
    assert result.exit_code == 2
    assert f"{path}:{BAD_LINE}:5: search.params.{name}: {message}" in result.stderr
    assert not db.exists()
    assert not db.with_suffix(".optuna.journal").exists()


def test_valid_search_space_loads(write_spec, tiny_model, tiny_beir):
    path = write_spec(
        SPACE_HEAD.format(model=tiny_model, data=tiny_beir, dev="dev") + "    train.batch_size: {low: 4, high: 16}\n"
    )
    params = load_spec(path).spec.search.params
    assert params["train.batch_size"].low == 4 and params["train.batch_size"].high == 16
    assert params["train.learning_rate"].log is True


def _no_dev_spec(write_spec, tiny_model, tiny_beir) -> Path:
    return write_spec(SPACE_HEAD.format(model=tiny_model, data=tiny_beir, dev="null"))


def test_search_without_dev_split_is_refused(write_spec, tiny_model, tiny_beir):
    path = _no_dev_spec(write_spec, tiny_model, tiny_beir)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert problem.message == "search scores trials on the dev split: set data.splits.dev"
    result = cli("search", path, "--db", path.with_suffix(".duckdb"))
    assert result.exit_code == 2
    assert "search scores trials on the dev split" in result.stderr


def test_search_without_dev_split_points_at_a_line(write_spec, tiny_model, tiny_beir):
    path = _no_dev_spec(write_spec, tiny_model, tiny_beir)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (problem,) = info.value.problems
    # line 5 holds data.splits.dev, line 7 the search: section; either is a useful place to point at
    assert problem.line in (5, 7), str(problem)
    assert problem.path in ("data.splits.dev", "search")


# ------------------------------------------------------------------- 2. a search with two local workers


@pytest.fixture(scope="module")
def journal_search(tmp_path_factory, make_spec):
    """One `embx search --trials 4 --workers 2` on the tiny model, with the default journal storage."""
    root = tmp_path_factory.mktemp("search")
    spec = search_spec(make_spec, root / "tune.yaml", "tune")
    db = root / "results.duckdb"
    result = cli("search", spec, "--db", db, "--trials", 4, "--workers", 2)
    listed = cli("ls", "--db", db, "--json")
    return {
        "spec": spec,
        "db": db,
        "result": result,
        "runs": json.loads(listed.stdout) if listed.exit_code == 0 else [],
    }


def test_search_records_trials_and_one_final_run(journal_search):
    result, runs, db = journal_search["result"], journal_search["runs"], journal_search["db"]
    assert result.exit_code == 0, result.output
    trials = sorted((r for r in runs if r["variant"].startswith("trial ")), key=lambda r: r["trial"])
    finals = [r for r in runs if r["variant"] == "best of tune"]
    assert len(runs) == 5
    assert [r["variant"] for r in trials] == ["trial 0", "trial 1", "trial 2", "trial 3"]
    assert [r["trial"] for r in trials] == [0, 1, 2, 3]
    assert {r["study"] for r in trials} == {"tune"}
    assert {r["experiment"] for r in runs} == {"tune"}
    assert {r["status"] for r in trials} <= {"ok", "pruned"}
    assert any(r["status"] == "ok" for r in trials)
    # Trials are chosen on dev: none of them touched the test split.
    assert all(r["metrics"] == {} for r in trials)
    ids = [r["run_id"] for r in trials]
    assert query(
        db, f"SELECT count(*) FROM metrics WHERE split = 'test' AND run_id IN ({', '.join('?' * 4)})", ids
    ) == [(0,)]
    for run in trials:
        dev = query(
            db, "SELECT count(*) FROM metrics WHERE run_id = ? AND split = 'dev' AND stage = 'tuned'", [run["run_id"]]
        )
        assert dev == [(2 if run["status"] == "ok" else 0,)], run
    # The final run: the best spec, scored on test (base and tuned), once.
    (final,) = finals
    assert final["status"] == "ok"
    assert final["study"] == "tune"
    assert set(final["metrics"]) == {"base", "tuned"}
    assert set(final["metrics"]["tuned"]) == {"recall@10", "ndcg@10"}
    assert 0.0 <= final["metrics"]["tuned"]["ndcg@10"] <= 1.0
    assert f"best trial {final['trial']}: dev ndcg@10 = " in result.stdout


def test_search_trials_ran_in_two_worker_processes(journal_search):
    db = journal_search["db"]
    pids = dict(query(db, "SELECT trial, pid FROM runs WHERE variant LIKE 'trial %'"))
    per_process = Counter(pids.values())
    assert sorted(per_process.values()) == [2, 2]  # --workers 2: two processes, two trials each
    assert os.getpid() not in per_process
    # The final run is the parent's (this test process, through CliRunner).
    assert query(db, "SELECT pid FROM runs WHERE variant = 'best of tune'") == [(os.getpid(),)]


def test_search_writes_a_valid_best_spec(journal_search):
    spec, runs = journal_search["spec"], journal_search["runs"]
    best_yaml = spec.with_name("tune.best.yaml")
    assert best_yaml.exists()
    checked = cli("validate", best_yaml)
    assert checked.exit_code == 0, checked.output
    loaded = load_spec(best_yaml)
    assert loaded.spec.search is None and loaded.spec.ablate is None
    (final,) = [r for r in runs if r["variant"] == "best of tune"]
    # The best spec is exactly what the final run ran.
    assert final["spec_hash"] == loaded.spec.spec_hash()
    assert f"hash {final['spec_hash']}" in checked.stdout
    text = best_yaml.read_text()
    assert text.startswith("# embx run tune.best.yaml\n")
    assert f"# Best trial {final['trial']} of study tune: dev ndcg@10 = " in text


def test_search_study_summary(journal_search):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    db, runs = journal_search["db"], journal_search["runs"]
    (study,) = store.load_studies(db, "tune")
    completed = [t for t in study["trials"] if t["status"] == "ok"]
    assert [t["trial"] for t in study["trials"]] == [0, 1, 2, 3]
    assert study["objective"] == "ndcg@10" and study["direction"] == "maximize"
    assert study["storage"] == str(db.with_suffix(".optuna.journal"))
    assert set(study["best_params"]) == {"train.learning_rate", "train.batch_size"}
    best = next(t for t in study["trials"] if t["trial"] == study["best_trial"])
    assert best["status"] == "ok"
    assert best["changes"] == study["best_params"]
    assert best["dev_objective"] == study["best_value"] == max(t["dev_objective"] for t in completed)
    (final,) = [r for r in runs if r["variant"] == "best of tune"]
    assert study["best_run_id"] == final["run_id"]
    assert final["trial"] == study["best_trial"]

    # The Optuna study in the journal beside the store agrees with the results store.
    storage = JournalStorage(JournalFileBackend(str(db.with_suffix(".optuna.journal"))))
    otrials = optuna.load_study(study_name="tune", storage=storage).get_trials()
    assert len(otrials) == 4
    states = {"ok": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}
    for trial, ot in zip(study["trials"], sorted(otrials, key=lambda t: t.number)):
        assert ot.state == states[trial["status"]]
        assert ot.params == trial["changes"]
        if trial["status"] == "ok":
            assert ot.value == trial["dev_objective"]


# ------------------------------------------------------------------------------------------- 3. pruning


def test_median_pruner_records_pruned_trials_with_their_curve(make_spec, tmp_path):
    """Learning rate 1e-9 leaves the model as it was: such a trial is clearly worse and gets pruned.

    The random sampler with seed 42 draws 1e-3, 1e-9, 1e-9, 1e-3 in one worker; with two completed trials
    (1e-3 and 1e-9) the median at epoch 1 lies between them, so trial 2 (1e-9) falls below it.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    spec = make_spec(
        tmp_path / "prune.yaml",
        name="prune",
        train={"epochs": 2, "batch_size": 8, "early_stopping": None},
        data={"limit": 16},
        eval=FAST_EVAL,
        search={
            "trials": 4,
            "objective": "ndcg@10",
            "sampler": "random",
            "seed": 42,
            "pruner": "median",
            "params": {"train.learning_rate": {"choices": [1e-9, 1e-3]}},
        },
    )
    db = tmp_path / "results.duckdb"
    result = cli("search", spec, "--db", db)
    assert result.exit_code == 0, result.output
    (study,) = store.load_studies(db, "prune")
    trials = study["trials"]
    pruned = [t for t in trials if t["status"] == "pruned"]
    done = [t for t in trials if t["status"] == "ok"]
    assert len(trials) == 4 and len(pruned) + len(done) == 4
    assert pruned, f"no trial was pruned: {[(t['changes'], t['curve']) for t in trials]}"
    good_epoch1 = [dict(t["curve"])[1.0] for t in done if t["changes"]["train.learning_rate"] == 1e-3]
    assert good_epoch1
    for t in done:  # completed trials: base (epoch 0) and both epochs on the curve, and a dev score
        assert [e for e, _ in t["curve"]] == [0.0, 1.0, 2.0]
        assert t["dev_objective"] is not None
    storage = JournalStorage(JournalFileBackend(str(db.with_suffix(".optuna.journal"))))
    otrials = {t.number: t for t in optuna.load_study(study_name="prune", storage=storage).get_trials()}
    for t in pruned:
        assert t["changes"] == {"train.learning_rate": 1e-9}
        # Stopped after the first epoch's dev evaluation; the base point (epoch 0) and that evaluation are kept.
        assert [e for e, _ in t["curve"]] == [0.0, 1.0]
        value = t["curve"][-1][1]
        assert value < min(good_epoch1)
        assert t["dev_objective"] is None  # no dev metrics: the run did not finish
        assert query(
            db,
            "SELECT epoch, value FROM train_log WHERE run_id = ? AND name = 'dev_ndcg@10' ORDER BY epoch",
            [t["run_id"]],
        ) == [(0.0, t["curve"][0][1]), (1.0, value)]
        (error,) = query(db, "SELECT error FROM runs WHERE run_id = ?", [t["run_id"]])[0]
        assert error.startswith("pruned: dev ndcg@10 ")
        assert otrials[t["trial"]].state == optuna.trial.TrialState.PRUNED
        assert otrials[t["trial"]].intermediate_values == {1: value}
    assert study["best_params"] == {"train.learning_rate": 1e-3}
    assert "1 pruned" in result.stdout


# ------------------------------------------------------------------------------ 4. unreachable storage


def test_redact_hides_passwords():
    assert redact("postgresql://u:p%40ss@db.example:5432/x") == "postgresql://u:***@db.example:5432/x"
    assert redact("mysql+pymysql://root:pw@127.0.0.1/db") == "mysql+pymysql://root:***@127.0.0.1/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact("runs/results.optuna.journal") == "runs/results.optuna.journal"


@pytest.mark.parametrize(
    "scheme",
    [
        "postgresql",
        "postgresql+psycopg2",
    ],
)
def test_unreachable_storage_fails_fast_without_the_password(scheme, make_spec, tmp_path):
    spec = search_spec(make_spec, tmp_path / "s.yaml", "unreachable")
    db = tmp_path / "r.duckdb"
    url = f"{scheme}://embx:{PG_PASSWORD}@127.0.0.1:1/db"
    started = time.monotonic()
    result = cli("search", spec, "--db", db, "--storage", url, "--trials", 2, "--workers", 2)
    elapsed = time.monotonic() - started
    assert result.exit_code == 2
    assert elapsed < 20
    assert PG_PASSWORD not in result.output + result.stderr
    assert f"error: cannot use search storage {scheme}://embx:***@127.0.0.1:1/db: " in result.stderr
    assert "Connection refused" in result.stderr  # says why: nothing listens there
    assert not db.exists()  # no trial started


def test_worker_command_lines_do_not_carry_the_storage_password(monkeypatch, make_spec, tmp_path):
    import runner.search as search

    loaded = load_spec(search_spec(make_spec, tmp_path / "s.yaml", "argv"))
    commands = []

    class NoTrials:
        def get_trials(self, deepcopy=True, states=None):
            return []

    class Worker:
        def __init__(self, cmd, *args, **kwargs):
            commands.append(list(cmd))

        def wait(self):
            return 0

    monkeypatch.setattr(search, "make_study", lambda *args, **kwargs: NoTrials())
    monkeypatch.setattr(search.subprocess, "Popen", Worker)
    url = f"postgresql+psycopg2://embx:{PG_PASSWORD}@db.internal:5432/optuna"
    with pytest.raises(search.SearchError, match="no completed trial"):
        search.run_search(loaded, tmp_path / "r.duckdb", trials=4, storage=url, workers=2)
    assert len(commands) == 2  # both workers were started ...
    assert [PG_PASSWORD in " ".join(cmd) for cmd in commands] == [False, False]  # ... without the password


# ------------------------------------------------------------------------------------------ 5. PostgreSQL


def _pg_bindir() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; PostgreSQL tests must run in CI")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 with a password-protected user and an empty database."""
    bindir = _pg_bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
    try:
        import psycopg2
    except ImportError:
        _unavailable("psycopg2 is not installed")
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' OS user to run the server as")
        if shutil.which("runuser") is None:
            _unavailable("running as root and runuser is missing")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="embx-pg-"))
    data, pwfile, logfile = root / "data", root / "pwfile", root / "server.log"
    pwfile.write_text(PG_PASSWORD + "\n")
    if owner is not None:
        for path in (root, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    port = _free_port()
    try:
        subprocess.run(
            [
                *as_user,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "embx",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
        subprocess.run(
            [*pg_ctl, "-l", str(logfile), "-o", options, "-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
            timeout=90,
        )
        con = psycopg2.connect(host="127.0.0.1", port=port, user="embx", password=PG_PASSWORD, dbname="postgres")
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("CREATE DATABASE embx_search")
        con.close()
        yield {"port": port, "url": f"postgresql+psycopg2://embx:{PG_PASSWORD}@127.0.0.1:{port}/embx_search"}
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_storage_two_workers_share_one_study(postgres, make_spec, tmp_path):
    import optuna

    url = postgres["url"]
    spec = search_spec(make_spec, tmp_path / "pg.yaml", "pgtune")
    db = tmp_path / "results.duckdb"
    result = cli("search", spec, "--db", db, "--storage", url, "--workers", 2, "--trials", 4)
    assert result.exit_code == 0, result.output
    assert PG_PASSWORD not in result.output + result.stderr
    shown = f"postgresql+psycopg2://embx:***@127.0.0.1:{postgres['port']}/embx_search"
    assert f"study pgtune ({shown})" in result.stdout

    storage = optuna.storages.RDBStorage(url)
    try:
        otrials = optuna.load_study(study_name="pgtune", storage=storage).get_trials()
    finally:
        storage.remove_session()
        storage.engine.dispose()
    done = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert sorted(t.number for t in otrials) == [0, 1, 2, 3]
    assert {t.state for t in otrials} <= done

    rows = query(
        db, "SELECT trial, status, pid FROM runs WHERE study = 'pgtune' AND variant LIKE 'trial %' ORDER BY trial"
    )
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    states = {"ok": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}
    assert [states[r[1]] for r in rows] == [t.state for t in sorted(otrials, key=lambda t: t.number)]
    assert sorted(Counter(r[2] for r in rows).values()) == [2, 2]  # two worker processes, one study
    (study,) = store.load_studies(db, "pgtune")
    assert study["storage"] == shown
    assert query(db, "SELECT status FROM runs WHERE variant = 'best of pgtune'") == [("ok",)]
