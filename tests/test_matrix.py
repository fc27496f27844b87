"""Corpus embeddings on disk (eval.memory_mb): the file, block-wise exact top-k, and runs that use it."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from runner.evaluate import CorpusIndex, evaluate, exact_top_k, top_k
from runner.matrix import DiskMatrix, block_rows, gather, iter_blocks


def _unit(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def _write(path, matrix: torch.Tensor, block: int, temporary: bool = False) -> DiskMatrix:
    parts = (matrix[i : i + 7] for i in range(0, matrix.shape[0], 7))  # written in blocks of another size
    return DiskMatrix.write(path, parts, rows=matrix.shape[0], dim=matrix.shape[1], block=block, temporary=temporary)


def test_the_file_is_numpys_own_and_reads_back_by_blocks_and_rows(tmp_path):
    matrix = _unit(50, 12, 0)
    disk = _write(tmp_path / "m.npy", matrix, block=16)

    assert np.array_equal(np.load(tmp_path / "m.npy"), matrix.numpy())
    assert disk.shape == (50, 12)
    starts = [start for start, _ in disk.blocks()]
    assert starts == [0, 16, 32, 48]
    assert torch.equal(torch.cat([b for _, b in disk.blocks()]), matrix)
    assert torch.equal(gather(disk, [49, 0, 7, 7]), matrix[[49, 0, 7, 7]])
    assert torch.equal(torch.cat([b for _, b in iter_blocks(matrix, 16)]), matrix)


def test_a_write_that_fails_leaves_no_file(tmp_path):
    def broken():
        yield _unit(10, 4, 0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        DiskMatrix.write(tmp_path / "m.npy", broken(), rows=20, dim=4, block=8)
    with pytest.raises(ValueError, match="10 rows written, 20 expected"):
        DiskMatrix.write(tmp_path / "m.npy", iter([_unit(10, 4, 0)]), rows=20, dim=4, block=8)
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_file_is_refused(tmp_path):
    _write(tmp_path / "m.npy", _unit(20, 4, 0), block=8)
    data = (tmp_path / "m.npy").read_bytes()
    (tmp_path / "m.npy").write_bytes(data[:-4])
    with pytest.raises(ValueError, match="bytes, a \\(20, 4\\) matrix needs"):
        DiskMatrix(tmp_path / "m.npy", block=8)


def test_a_temporary_matrix_is_deleted_with_its_object(tmp_path):
    disk = _write(tmp_path / "m.npy", _unit(20, 4, 0), block=8, temporary=True)
    assert (tmp_path / "m.npy").exists()
    del disk
    gc.collect()
    assert not (tmp_path / "m.npy").exists()


def test_block_rows_fit_the_budget():
    # One row costs its 384 floats plus its scores against 1,024 queries.
    assert block_rows(1, 384) == 2**20 // (4 * (384 + 1024))
    assert block_rows(1, 384, queries=10) == 2**20 // (4 * (384 + 10))
    assert block_rows(0.0001, 384) == 1


@pytest.mark.parametrize("block", [1, 5, 64, 1000])
@pytest.mark.parametrize(("dim", "keep"), [(None, None), (8, None), (None, "even"), (8, "even")])
def test_block_wise_top_k_equals_the_in_memory_one(tmp_path, block, dim, keep):
    corpus, queries = _unit(300, 16, 1), _unit(40, 16, 2)
    rows = list(range(0, 300, 2)) if keep == "even" else None
    disk = _write(tmp_path / "m.npy", corpus, block=block)

    expected = exact_top_k(queries, corpus, 10, dim=dim, keep=rows)
    scores, indices = exact_top_k(queries, disk, 10, dim=dim, keep=rows)

    assert torch.equal(indices, expected[1])
    assert torch.allclose(scores, expected[0], atol=1e-6)
    if rows is not None:
        assert set(indices.flatten().tolist()) <= set(rows)
    if dim is None and rows is None:  # and both equal the plain brute-force top-k
        assert torch.equal(indices, top_k(queries, corpus, 10)[1])


def test_top_k_larger_than_the_corpus_returns_every_row(tmp_path):
    corpus, queries = _unit(9, 4, 3), _unit(3, 4, 4)
    scores, indices = exact_top_k(queries, _write(tmp_path / "m.npy", corpus, block=2), 50)
    assert indices.shape == (3, 9)
    assert sorted(indices[0].tolist()) == list(range(9))


def test_evaluate_over_a_corpus_beyond_the_budget_scores_as_in_memory(tmp_path, tiny_model, tiny_beir):
    from runner.data.beir import load_beir
    from runner.models import load_model
    from runner.spec import ModelSpec

    data = load_beir(tiny_beir)
    spec = ModelSpec(base=str(tiny_model), max_seq_length=32)
    model = load_model(spec, "cpu")
    metrics = ["recall@10", "ndcg@10", "map@100"]
    common = dict(queries=data.queries, qrels=data.split("test"), spec=spec, metrics=metrics, depth=100, batch_size=16)
    in_memory = evaluate(model, label="base", index=CorpusIndex(data.corpus), **common)
    # 40 passages x 32 dims x 4 bytes = 5 KiB: over a 4 KiB budget.
    bounded = CorpusIndex(data.corpus, memory_mb=0.004, spill=tmp_path / "spill")
    on_disk = evaluate(model, label="base", index=bounded, **common)

    assert isinstance(bounded.embeddings["base"], DiskMatrix)
    assert bounded.embeddings["base"].block < len(data.corpus)
    assert on_disk.metrics == pytest.approx(in_memory.metrics, abs=1e-6)
    # Encoded in other batches, the embeddings may differ in the last float bits (padding): same scores to 1e-5.
    for qid, docs in in_memory.run.items():
        assert on_disk.run[qid] == pytest.approx(docs, abs=1e-5)
    # A tuned model's matrix is temporary: gone once the index lets go of it.
    evaluate(model, label="tuned", index=bounded, **common)
    assert len(list((tmp_path / "spill").glob("*.npy"))) == 2
    bounded.embeddings.pop("tuned")
    gc.collect()
    assert len(list((tmp_path / "spill").glob("*.npy"))) == 1


def test_a_run_beyond_the_budget_mines_and_scores_as_one_in_memory(tmp_path, write_spec, caplog):
    """eval.memory_mb: mining and evaluation go through the disk matrix, with the same results and spec hash."""
    import logging

    from runner import store
    from runner.pipeline import run_spec
    from runner.spec import load_spec

    fast = {"train": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3}}
    negatives = {"mode": "hard", "per_query": 2, "mine_range": [2, 20]}
    output = {"dir": str(tmp_path / "out"), "embedding_cache": True}
    plain = run_spec(load_spec(write_spec(negatives=negatives, **fast)), tmp_path / "a.duckdb")
    caplog.set_level(logging.INFO, logger="runner")
    bounded_spec = write_spec(
        name="b.yaml", negatives=negatives, eval={"batch_size": 16, "memory_mb": 0.004}, output=output, **fast
    )
    bounded = run_spec(load_spec(bounded_spec), tmp_path / "b.duckdb")

    assert "exceed eval.memory_mb=0.004" in caplog.text
    assert bounded.metrics["base"] == pytest.approx(plain.metrics["base"], abs=1e-6)
    assert bounded.info["negatives"] == plain.info["negatives"]
    assert bounded.metrics["tuned"] == pytest.approx(plain.metrics["tuned"], abs=1e-4)
    assert (
        store.get_run(tmp_path / "b.duckdb", bounded.run_id)["spec_hash"]
        == load_spec(write_spec(name="c.yaml", negatives=negatives, output=output, **fast)).spec.spec_hash()
    )
    # The base model's matrix is the embedding cache: the next run reads it block by block; nothing else is left.
    assert [p.suffix for p in (tmp_path / "out" / "embeddings").iterdir()] == [".npy"]
    caplog.clear()
    again = run_spec(load_spec(bounded_spec), tmp_path / "c.duckdb")
    assert "read block by block from" in caplog.text
    assert again.metrics["base"] == bounded.metrics["base"]


def test_index_eval_over_a_disk_matrix_measures_as_in_memory(tmp_path):
    from runner.index_eval import evaluate_index
    from runner.spec import IndexEvalSpec

    corpus, queries = _unit(400, 16, 5), _unit(30, 16, 6)
    ids = [f"d{i}" for i in range(400)]
    qids = [f"q{i}" for i in range(30)]
    qrels = {q: {ids[(7 * i) % 400]: 1} for i, q in enumerate(qids)}
    common = dict(corpus_ids=ids, query_ids=qids, query_emb=queries, qrels=qrels, settings=IndexEvalSpec())
    in_memory = evaluate_index(corpus_emb=corpus, **common)
    on_disk = evaluate_index(corpus_emb=_write(tmp_path / "m.npy", corpus, block=64), **common)

    assert on_disk["passages"] == 400
    assert on_disk["exact"] == in_memory["exact"]
    assert on_disk["ann"] == in_memory["ann"]
    assert on_disk["recall_vs_exact@10"] == in_memory["recall_vs_exact@10"]
