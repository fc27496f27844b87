"""run_spec end to end on the tiny model (CPU, seconds): every negative mode, early stopping, limits, failures."""

from __future__ import annotations

import json

import duckdb
import pytest
from helpers import auto_cpu_precision

from runner import store
from runner.data.types import DataError
from runner.pipeline import run_spec
from runner.spec import load_spec

# One epoch and no early stopping (so no checkpoints): the shortest run that still trains and scores dev.
FAST = {"train": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "early_stopping": None}}
METRICS = {"recall@1", "recall@10", "ndcg@10", "mrr@10", "map@100"}
TEST_QUERIES = 18  # of the tiny BEIR set (hash split of its 80 queries)
DEV_QUERIES = 15
TRAIN_PAIRS = 47


@pytest.fixture(scope="module")
def mode_runs(make_spec, tmp_path_factory):
    """One short run per negative mode, all in one store."""
    folder = tmp_path_factory.mktemp("modes")
    db = folder / "runs.duckdb"
    runs = {}
    for mode in ("in-batch", "random", "hard"):
        negatives = {"mode": mode, "per_query": 2, "mine_range": [2, 20]}
        path = make_spec(folder / f"{mode}.yaml", negatives=negatives, **FAST)
        result = run_spec(load_spec(path), db)
        runs[mode] = (result, store.get_run(db, result.run_id))
    return db, runs


@pytest.mark.parametrize("mode", ["in-batch", "random", "hard"])
def test_each_negative_mode_runs_end_to_end(mode_runs, mode):
    db, runs = mode_runs
    result, stored = runs[mode]
    assert result.status == "ok" and stored["status"] == "ok" and stored["error"] is None
    assert result.main == "ndcg@10"
    # Base and tuned test metrics, returned and stored alike.
    assert set(result.metrics) == {"base", "tuned"}
    for stage in ("base", "tuned"):
        assert set(result.metrics[stage]) == METRICS
        assert all(0.0 <= v <= 1.0 for v in result.metrics[stage].values())
        assert stored["metrics"][stage] == pytest.approx(result.metrics[stage])
    assert set(stored["metrics_by_split"]) == {"test", "dev"}
    assert stored["metrics_by_split"]["dev"]["native"]["tuned"] == pytest.approx(result.dev["tuned"])
    # The untrained base model is the same model in every mode.
    base = {m: runs[m][0].metrics["base"] for m in runs}
    assert base[mode] == pytest.approx(base["in-batch"])

    info = stored["info"]
    assert info["data"]["train_pairs"] == TRAIN_PAIRS and info["data"]["corpus"] == 40
    negatives = info["negatives"]
    assert negatives["mode"] == mode and negatives["pairs"] == TRAIN_PAIRS
    if mode == "in-batch":
        assert negatives["per_query"] == 0 and negatives["candidates"] == 0
    elif mode == "random":
        assert negatives["per_query"] == 2
        assert negatives["candidates"] >= 2 * TRAIN_PAIRS + negatives["dropped_positive"]
    else:
        assert negatives["per_query"] == 2
        assert negatives["candidates"] == TRAIN_PAIRS * (20 - 2)  # every rank in mine_range, for every pair
        assert negatives["dropped_positive"] + negatives["dropped_margin"] <= negatives["candidates"]
        assert 0 <= negatives["filled_random"] <= 2 * TRAIN_PAIRS
    assert info["train"]["epochs_run"] == 1 and info["train"]["precision"] == auto_cpu_precision()
    assert info["train"]["loop"] == "embx" and 0 < info["train"]["padding_efficiency"] <= 1
    assert info["train"]["samples"] == TRAIN_PAIRS
    assert stored["spec_hash"] == load_spec_hash(stored)
    assert set(stored["timings"]) >= {"data", "load_model", "eval_base", "negatives", "train", "eval_tuned", "total"}
    assert stored["versions"]["torch"] and stored["versions"]["python"]

    # Training log: losses during the epoch, dev metrics before training (step 0) and after the epoch.
    log = stored["train_log"]
    losses = [r for r in log if r["name"] == "loss"]
    assert losses and all(r["value"] > 0 for r in losses) and all(r["step"] >= 1 for r in losses)
    dev_main = [r for r in log if r["name"] == "dev_ndcg@10"]
    assert [(r["step"], r["epoch"]) for r in dev_main][0] == (0, 0.0)
    assert dev_main[0]["value"] == pytest.approx(result.dev["base"]["ndcg@10"])
    assert len(dev_main) == 2 and dev_main[1]["epoch"] == pytest.approx(1.0)
    # Without early stopping the last epoch is kept: its dev score is the tuned dev score.
    assert dev_main[1]["value"] == pytest.approx(result.dev["tuned"]["ndcg@10"])

    # Per-query scores and top-10 rankings of the test split, for both stages.
    con = duckdb.connect(str(db), read_only=True)
    try:
        scores = con.execute("SELECT count(*) FROM query_scores WHERE run_id = ?", [result.run_id]).fetchone()[0]
        ranks = con.execute(
            "SELECT stage, query_id, count(*), min(rank), max(rank) FROM rankings WHERE run_id = ?"
            " GROUP BY stage, query_id",
            [result.run_id],
        ).fetchall()
    finally:
        con.close()
    assert scores == 2 * TEST_QUERIES * len(METRICS)
    assert len(ranks) == 2 * TEST_QUERIES
    assert all(row[2:] == (10, 1, 10) for row in ranks)


def load_spec_hash(stored) -> str:
    from runner.spec import Spec

    return Spec.model_validate_json(stored["spec_json"]).spec_hash()


def test_modes_train_on_different_examples(mode_runs):
    _, runs = mode_runs
    first_loss = {m: next(r["value"] for r in runs[m][1]["train_log"] if r["name"] == "loss") for m in runs}
    # With two explicit negatives a batch of 8 scores 24 candidates instead of 8: the loss starts higher.
    assert first_loss["random"] > first_loss["in-batch"]
    assert first_loss["hard"] > first_loss["in-batch"]


def test_early_stopping_and_limit(tmp_path, write_spec):
    # The bookkeeping of early stopping through the pipeline (epochs run, best epoch, log, samples). A learning
    # rate so small that the dev metric cannot move: epoch 2 does not improve on epoch 1, so with patience 1
    # training stops after epoch 2 of 4 and keeps epoch 1. That the kept weights are epoch 1's is tested with
    # falling dev scores and a real learning rate in test_train_sentence_transformers.py.
    path = write_spec(
        data={"limit": 16},
        train={"epochs": 4, "batch_size": 8, "learning_rate": 1e-12, "early_stopping": {"patience": 1}},
    )
    db = tmp_path / "runs.duckdb"
    result = run_spec(load_spec(path), db)
    train = result.info["train"]
    assert train["epochs_run"] == 2
    assert train["best_epoch"] == 1
    assert result.info["data"]["train_pairs"] == 16
    assert result.info["negatives"]["pairs"] == 16
    assert train["samples"] == 32
    stored = store.get_run(db, result.run_id)
    assert stored["info"]["train"]["best_epoch"] == 1
    dev = [r for r in stored["train_log"] if r["name"] == "dev_recall@10"]
    assert [r["epoch"] for r in dev] == pytest.approx([0.0, 1.0, 2.0])
    assert dev[1]["value"] == dev[2]["value"]
    # 16 pairs in batches of 8: 2 steps per epoch.
    assert max(r["step"] for r in stored["train_log"]) == 4


def test_jsonl_source_with_eval_path(tmp_path, tiny_beir, make_spec):
    from runner.data.beir import load_beir

    beir = load_beir(tiny_beir)
    lines = []
    for qid, docs in sorted(beir.split("train").items()):
        lines.append({"query": beir.queries[qid], "pos": [beir.corpus[d] for d in docs]})
    lines[0]["neg"] = [beir.corpus["skin-diet"]]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(line) + "\n" for line in lines))
    path = make_spec(
        tmp_path / "jsonl.yaml",
        data={"source": "jsonl", "path": "train.jsonl", "eval_path": str(tiny_beir)},  # relative to the spec
        negatives={"mode": "hard", "per_query": 2, "mine_range": [0, 10]},
        **FAST,
    )
    result = run_spec(load_spec(path), tmp_path / "runs.duckdb")
    assert result.status == "ok"
    assert set(result.metrics) == {"base", "tuned"}
    data = result.info["data"]
    assert data["jsonl_pairs"] == data["train_pairs"] == len(lines)
    assert data["test_queries"] == TEST_QUERIES
    negatives = result.info["negatives"]
    assert negatives["mode"] == "hard" and negatives["candidates"] == 10 * len(lines)


def test_bad_data_is_recorded_as_failed(tmp_path, beir_copy, write_spec):
    qrels = beir_copy / "qrels" / "test.tsv"
    with qrels.open("a") as f:
        f.write("q-heart-symptoms-0\tno-such-doc\t1\n")
    line = len(qrels.read_text().splitlines())
    db = tmp_path / "runs.duckdb"
    with pytest.raises(DataError) as info:
        run_spec(load_spec(write_spec(data={"path": str(beir_copy)})), db)
    assert info.value.problems == [f"{qrels}:{line}: document 'no-such-doc' is not in corpus.jsonl"]
    (run,) = store.list_runs(db)
    assert run["status"] == "failed"
    assert run["error"].startswith("DataError: 1 data problem:")
    assert f"test.tsv:{line}" in run["error"]
    assert run["finished_at"] is not None
    assert store.get_run(db, run["run_id"])["metrics"] == {}


def test_interrupted_run_is_recorded(tmp_path, write_spec, monkeypatch):
    import runner.data

    def interrupt(*args):
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(runner.data, "load_data", interrupt)
    db = tmp_path / "runs.duckdb"
    with pytest.raises(KeyboardInterrupt):
        run_spec(load_spec(write_spec()), db)
    (run,) = store.list_runs(db)
    assert run["status"] == "interrupted"
    assert "signal 15" in run["error"]


def test_mix_sources_and_extra_eval_sets(tmp_path, write_spec, beir_copy):
    db = tmp_path / "runs.duckdb"
    path = write_spec(
        data={"mix": [{"path": str(beir_copy), "weight": 0.5}]},
        negatives={"mode": "random", "per_query": 1},
        eval={"batch_size": 16, "sets": [{"name": "other", "path": str(beir_copy)}]},
        **FAST,
    )
    result = run_spec(load_spec(path), db)
    data = result.info["data"]
    assert data["mix"] == {str(beir_copy): 24}  # round(0.5 x 47) pairs drawn from the mixed-in source
    assert data["train_pairs"] == TRAIN_PAIRS + 24
    assert result.info["train"]["samples"] == TRAIN_PAIRS + 24
    assert set(result.other["set:other"]) == {"base", "tuned"}
    stored = store.get_run(db, result.run_id)["metrics_by_split"]
    assert stored["set:other"]["native"]["tuned"] == pytest.approx(result.other["set:other"]["tuned"])
    # The extra set is the same data: its base scores equal the main test split's only if the splits match;
    # here both score their own test split over their own corpus, so they are equal.
    assert result.other["set:other"]["base"]["ndcg@10"] == pytest.approx(result.metrics["base"]["ndcg@10"])


def test_a_second_run_reads_the_base_corpus_embeddings_from_disk(tmp_path, write_spec, caplog):
    import logging

    output = {"dir": str(tmp_path / "out"), "embedding_cache": True}
    path = write_spec(negatives={"mode": "hard", "per_query": 2, "mine_range": [2, 20]}, output=output, **FAST)
    caplog.set_level(logging.INFO, logger="runner")
    first = run_spec(load_spec(path), tmp_path / "a.duckdb")
    assert "read from" not in caplog.text
    second = run_spec(load_spec(path), tmp_path / "b.duckdb")  # another store: the base model is scored again
    assert "corpus embeddings of the base model read from" in caplog.text
    assert second.metrics["base"] == first.metrics["base"]
    assert second.info["negatives"] == first.info["negatives"]
    assert len(list((tmp_path / "out" / "embeddings").glob("*.pt"))) == 1


# A small medical BEIR set for the bundled MiniLM: distinct questions, one per passage, and one training query that
# paraphrases a test query (not equal after normalisation, MiniLM cosine about 0.96).
PARAPHRASE_DOCS = {
    "bp": "Less salt, regular exercise and weight loss lower blood pressure without drugs.",
    "diabetes": "Thirst, frequent urination and tiredness are early signs of type 2 diabetes.",
    "migraine": "Triptans stop a migraine attack; beta blockers can prevent new attacks.",
    "asthma": "An inhaled steroid reduces airway inflammation in asthma.",
    "gout": "Uric acid crystals in a joint cause the sudden pain of gout.",
    "sleep": "A regular bedtime and no screens before sleep help with insomnia.",
}
PARAPHRASE_QUERIES = {
    "train": {
        "t-diabetes": ("Which blood test confirms diabetes?", "diabetes"),
        "t-migraine": ("Which drugs prevent migraine attacks?", "migraine"),
        "t-asthma": ("What does an asthma inhaler contain?", "asthma"),
        "t-sleep": ("How can I fall asleep faster at night?", "sleep"),
        "planted": ("What are ways to lower blood pressure without medicine?", "bp"),
    },
    "dev": {"d-gout": ("Why does gout hurt so suddenly?", "gout")},
    "test": {
        "q-bp": ("How can I lower my blood pressure without medication?", "bp"),
        "q-diabetes": ("What are the first signs of diabetes?", "diabetes"),
        "q-gout": ("Which foods raise uric acid levels?", "gout"),
    },
}


@pytest.fixture
def paraphrase_beir(tmp_path):
    root = tmp_path / "paraphrase"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in PARAPHRASE_DOCS.items())
    )
    queries = [(q, text) for split in PARAPHRASE_QUERIES.values() for q, (text, _) in split.items()]
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries))
    for split, rows in PARAPHRASE_QUERIES.items():
        lines = [f"{q}\t{doc}\t1\n" for q, (_, doc) in rows.items()]
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(lines))
    return root


def test_near_leak_of_a_paraphrase_with_minilm(tmp_path, make_spec, paraphrase_beir):
    """With the bundled MiniLM and the default data.leak_similarity, a training query that paraphrases a test
    query is found as a near-identical leak (and only it): `embx prepare` reports it in the data card, and a
    run with on_leak: error stops on it before training."""
    from helpers import cli, query

    from runner.spec import DataSpec

    sections = {
        "model": {"base": "all-MiniLM-L6-v2", "max_seq_length": 64},
        "negatives": {"mode": "in-batch"},
        **FAST,
    }
    warn = make_spec(tmp_path / "warn.yaml", data={"path": str(paraphrase_beir), "on_leak": "warn"}, **sections)
    assert "leak_similarity" not in warn.read_text()  # the default threshold
    result = cli("prepare", warn, "-o", tmp_path / "prepared")
    assert result.exit_code == 0, result.output
    checks = json.loads((tmp_path / "prepared" / "data_card.json").read_text())["checks"]
    counts = checks["counts"]
    assert counts["leaks"] == 1 and counts["leaking_pairs"] == 1
    assert counts["test_query_near"] == 1 and counts["test_query_exact"] == 0
    assert counts["dev_query_near"] == 0 and counts["dev_query_exact"] == 0
    (leak,) = checks["leaks"]
    assert (leak["kind"], leak["split"], leak["train_query"], leak["eval_query"]) == (
        "query-near",
        "test",
        "planted",
        "q-bp",
    )
    assert DataSpec.model_fields["leak_similarity"].default <= leak["similarity"] < 1.0

    error = make_spec(tmp_path / "error.yaml", data={"path": str(paraphrase_beir), "on_leak": "error"}, **sections)
    db = tmp_path / "runs.duckdb"
    with pytest.raises(DataError) as err:
        run_spec(load_spec(error), db)
    assert "query-near: training query 'planted'" in str(err.value) and "'q-bp'" in str(err.value)
    ((status,),) = query(db, "SELECT status FROM runs")
    assert status == "failed"


def test_keep_base_hands_on_the_base_model_when_no_epoch_beats_it(tmp_path, write_spec):
    """`train.early_stopping.keep_base` (recipe: auto sets it): a learning rate that wrecks the model on dev."""
    # the bundled MiniLM (a good base model: a random tiny one improves whatever it learns), wrecked by lr 0.1
    model = {"base": "all-MiniLM-L6-v2", "max_seq_length": 32}
    train = {"epochs": 1, "batch_size": 8, "learning_rate": 0.1, "early_stopping": {"patience": 1, "keep_base": True}}
    result = run_spec(load_spec(write_spec(model=model, train=train)), tmp_path / "runs.duckdb")
    kept = result.info["learned"]["kept_base"]
    assert kept["metric"] == "ndcg@10" and kept["best_epoch"] == 1 and kept["best"] < kept["base"]
    assert result.dev["tuned"] == pytest.approx(result.dev["base"])  # the base model, scored again
    assert result.metrics["tuned"] == pytest.approx(result.metrics["base"])
    assert any("kept the base model" in w for w in result.warnings)
    # without keep_base the same run hands on the wrecked model
    train["early_stopping"] = {"patience": 1}
    worse = run_spec(load_spec(write_spec(model=model, train=train, name="off.yaml")), tmp_path / "off.duckdb")
    assert "kept_base" not in worse.info["learned"] and worse.dev["tuned"]["ndcg@10"] < worse.dev["base"]["ndcg@10"]
