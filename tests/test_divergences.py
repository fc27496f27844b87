"""Settings that used to travel as separate copies and disagreed; each test failed before its fix.

1. `embx prepare` wrote a training set without `data.mix`, although a run trains on the mixed pairs.
2. The in-memory corpus index left `eval.precision` out of its key: a variant that changed the precision reused
   the base embeddings encoded at the other one.
3. Under torchrun the dev split was scored without `eval.precision` and without `eval.filter`, so early stopping
   saw other scores than a one-process run.
"""

from __future__ import annotations

import json

from helpers import cli


def _lines(path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def test_prepare_writes_the_mixed_pairs_a_run_trains_on(write_spec, beir_copy, tmp_path):
    path = write_spec(data={"mix": [{"path": str(beir_copy), "weight": 0.5}]}, negatives={"mode": "random"})
    result = cli("prepare", path, "-o", tmp_path / "prepared")
    assert result.exit_code == 0, result.output
    # 47 train pairs of the main source + round(0.5 x 47) = 24 from the mixed-in source (as a run reports)
    assert _lines(tmp_path / "prepared" / "train.jsonl") == 47 + 24


def test_a_variant_changing_eval_precision_encodes_the_corpus_again(write_spec, tmp_path, monkeypatch):
    import runner.evaluate as evaluate

    seen = []
    real = evaluate.encode

    def spy(model, texts, **settings):
        precision = evaluate.inference_settings(model, settings["batch_size"], settings.get("precision", "auto"))[1]
        seen.append((settings["description"], precision))
        return real(model, texts, **settings)

    monkeypatch.setattr(evaluate, "encode", spy)
    path = write_spec(
        train={"epochs": 1, "early_stopping": None},
        eval={"batch_size": 16, "precision": "fp32"},
        ablate={"factors": {"eval.precision": ["bf16"]}},
    )
    result = cli("run", path, "--db", tmp_path / "r.duckdb")
    assert result.exit_code == 0, result.output
    corpus_base = [precision for description, precision in seen if description == "encode corpus (base)"]
    assert corpus_base == ["fp32", "bf16"]  # once per precision: the bf16 variant does not reuse fp32 embeddings


def test_torchrun_dev_scoring_uses_the_runs_precision_and_filter(tmp_path, tiny_model, monkeypatch):
    """The dev split handed to the training processes scores exactly as the one-process dev scorer does."""
    import runner.evaluate as evaluate
    from runner.memo import Memo
    from runner.models import load_model
    from runner.scoring import RunScorer
    from runner.spec import Spec
    from runner.train import launch, worker
    from runner.training_set import TrainingSet

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "", "text": f"passage {i} about topic {i % 3}"} for i in range(12)]
    (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"topic {i % 3} question {i}"} for i in range(9)]
    (beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, ids in {"train": range(0, 3), "dev": range(3, 6), "test": range(6, 9)}.items():
        rows = "".join(f"q{i}\td{i}\t1\n" for i in ids)
        (beir / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    spec = Spec.model_validate(
        {
            "name": "dist",
            "model": {"base": str(tiny_model), "max_seq_length": 32},
            "data": {"path": str(beir)},
            "eval": {"batch_size": 8, "precision": "fp32"},
            "output": {"embedding_cache": False},
        }
    )
    model = load_model(spec.model, "cpu")
    memo = Memo()
    training = TrainingSet.load(spec, model=model, memo=memo)
    # a metadata filter, as the documents source provides: only even passages may be retrieved
    training.data.meta = {f"d{i}": {"parity": "even" if i % 2 == 0 else "odd"} for i in range(12)}
    spec = spec.model_copy(update={"eval": spec.eval.model_copy(update={"filter": {"parity": "even"}})})
    scorer = RunScorer(spec, data=training.data, memo=memo)
    in_process = scorer.dev.metrics(model)

    seen = []
    real = evaluate.encode

    def spy(model, texts, **settings):
        seen.append(settings.get("precision", "auto"))
        return real(model, texts, **settings)

    monkeypatch.setattr(evaluate, "encode", spy)
    job = tmp_path / "job"
    launch.write_job(job, model=model, pairs=training.pairs, spec=spec, dev=scorer.dev)
    distributed = worker._dev_scorer(job, spec, rank=0)(model)
    assert set(seen) == {"fp32"}
    assert distributed == in_process
