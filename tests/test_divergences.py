"""Settings that used to travel as separate copies and disagreed; each test failed before its fix.

1. `embx prepare` wrote a training set without `data.mix`, although a run trains on the mixed pairs.
2. The in-memory corpus index left `eval.precision` out of its key: a variant that changed the precision reused
   the base embeddings encoded at the other one.
3. Under torchrun the dev split was scored without `eval.precision` and without `eval.filter`, so early stopping
   saw other scores than a one-process run.
"""

from __future__ import annotations

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

    def spy(model, texts, batch_size, normalize, description, precision="auto"):
        seen.append((description, evaluate.inference_settings(model, batch_size, precision)[1]))
        return real(model, texts, batch_size, normalize, description, precision)

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
