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
