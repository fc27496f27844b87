"""The cost curve of embx's vector database (Chroma, embedded, HNSW) from 10k to 1M passages.

    python bench/index_scale.py                                  # 10k, 100k, 1M; bench/results/index_scale_cpu.json
    python bench/index_scale.py --sizes 10000 100000 --timeout 1800

The search part uses synthetic passages: 384-dimensional unit vectors (all-MiniLM-L6-v2's dimension) drawn around
1,000 random centres (a mixture, as real embeddings cluster by topic), generated in batches from a seed, so no
corpus is ever held whole. Each size runs in its own process (its peak memory is its own) and writes through
embx's backend (runner.vectordb, the code path of `embx index`) into a fresh embedded folder, 5,000 points a
write. Measured: index time (all writes, HNSW built as points arrive), peak resident memory of the process, size
on disk, single-query latency p50/p95 over 200 queries (perturbed corpus points), and the recall of the HNSW
top 10 against the exact top 10 (brute force over the regenerated batches). Chroma's default HNSW settings
(M 16, ef_construction 100) build the index; queries are measured with ef_search 100 (the default) and 400.

The real model's encode rate is measured separately: the bundled all-MiniLM-L6-v2 on the bundled medical corpus
(325 passages), fp32, batch 64, the median of 3 passes after a warm-up. Encoding, not the index, is the cost of
`embx index` on a CPU: at that rate 1M passages take hours to encode and minutes to index. The load average of
the machine (shared with other work) is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from machine import cpu_info  # noqa: E402

DIM = 384
CENTRES = 1000
BATCH = 5000
QUERIES = 200
K = 10
EF_SEARCH = (100, 400)
"""HNSW ef_search values measured: Chroma's default, and a wider search for recall."""


def _batches(n: int, seed: int):
    """(start, unit vectors) batches of the synthetic corpus: the same for the same n and seed."""
    import numpy as np

    centres = np.random.default_rng(seed).standard_normal((CENTRES, DIM)).astype(np.float32)
    for start in range(0, n, BATCH):
        rng = np.random.default_rng([seed, start])
        size = min(BATCH, n - start)
        x = centres[rng.integers(0, CENTRES, size)] + 0.6 * rng.standard_normal((size, DIM)).astype(np.float32)
        yield start, x / np.linalg.norm(x, axis=1, keepdims=True)


def _queries(seed: int):
    """QUERIES perturbed copies of the first corpus points (unit vectors)."""
    import numpy as np

    first = next(_batches(QUERIES, seed))[1]
    q = first + 0.3 * np.random.default_rng(seed + 1).standard_normal(first.shape).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def build(n: int, folder: Path, seed: int = 0) -> dict:
    """Index n synthetic passages into `folder` and measure it at ef_search 100 (run in its own process).

    Chroma reads ef_search when a process opens the collection: the other values are measured by
    :func:`measure` in fresh processes after the configuration is changed here.
    """
    from runner.vectordb import open_collection

    index = open_collection(folder, "scale", create=True)
    started = time.perf_counter()
    for start, x in _batches(n, seed):
        ids = [f"p{start + i}" for i in range(len(x))]
        index.upsert(ids, x, [""] * len(ids), [{"n": start + i} for i in range(len(x))])
    index_seconds = time.perf_counter() - started
    out = {
        "passages": n,
        "points": index.count(),
        "index_seconds": round(index_seconds, 1),
        "points_per_s": round(n / index_seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "size_mb": round(index.size_bytes() / 1e6, 1),
    }
    return out


def measure(n: int, folder: Path, ef: int, seed: int = 0) -> dict:
    """Latency p50/p95 and recall vs exact of the top 10 at HNSW ef_search `ef` (a fresh process)."""
    import numpy as np

    from runner.vectordb import open_collection

    index = open_collection(folder, "scale")
    index.collection.modify(configuration={"hnsw": {"ef_search": ef}})
    index = open_collection(folder, "scale")
    q = _queries(seed)
    latencies, ann = _search(index, q)
    exact = _exact(q, n, seed)
    return {
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 2),
        "recall_vs_exact@10": round(statistics.mean(len(a & set(e.tolist())) / K for a, e in zip(ann, exact)), 4),
    }


def _search(index, q) -> tuple[list[float], list[set[int]]]:
    """Single-query latencies (ms) and the top-10 ids of each query."""
    latencies, ann = [], []
    for row in range(len(q)):
        began = time.perf_counter()
        hits = index.search(q[row : row + 1], K)[0]
        latencies.append((time.perf_counter() - began) * 1000)
        ann.append({int(h.id[1:]) for h in hits})
    return latencies, ann


def _exact(q, n: int, seed: int):
    """The exact top-10 ids of each query: brute force over the regenerated corpus batches."""
    import numpy as np

    best = np.full((len(q), K), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(q), K), dtype=np.int64)
    for start, x in _batches(n, seed):
        both = np.concatenate([best, q @ x.T], axis=1)
        ids = np.concatenate([best_ids, np.arange(start, start + len(x))[None, :].repeat(len(q), 0)], axis=1)
        top = np.argsort(-both, axis=1)[:, :K]
        best, best_ids = np.take_along_axis(both, top, 1), np.take_along_axis(ids, top, 1)
    return best_ids


def encode_rate(repeats: int = 3) -> dict:
    """The bundled all-MiniLM-L6-v2's encode rate on the bundled medical corpus (fp32, CPU)."""
    import torch

    from runner.models import load_model
    from runner.spec import ModelSpec

    texts = []
    for line in (ROOT / "data" / "medical-demo" / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        texts.append((doc.get("title", "") + " " + doc["text"]).strip())
    model = load_model(ModelSpec(base="all-MiniLM-L6-v2", max_seq_length=256), device="cpu")
    model.encode(texts[:128], batch_size=64, show_progress_bar=False)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.encode(texts, batch_size=64, show_progress_bar=False)
        seconds.append(time.perf_counter() - started)
    rate = len(texts) / statistics.median(seconds)
    return {
        "model": "all-MiniLM-L6-v2 (bundled), fp32, max_seq_length 256, batch 64",
        "passages": len(texts),
        "torch_threads": torch.get_num_threads(),
        "passages_per_s": round(rate, 1),
        "hours_for_1m_passages": round(1e6 / rate / 3600, 2),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (exact_scale.py and train_scale.py share it)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(out: Path, result: dict) -> None:
    """Write a bench's result file (indented JSON, its folder made) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def run_child(script: str, *args: str, timeout: float) -> dict:
    """Run `script` with `args` in a fresh Python process and return the JSON of its last output line.

    Each bench step runs in its own process so its peak memory is its own (index_scale.py, exact_scale.py and
    vectordb_choice.py share this).

    Raises:
        RuntimeError: The process failed or printed nothing (its last error line, at most 500 characters).

    """
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError((proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][:500])
    return json.loads(lines[-1])


def _child(*args: str, timeout: float) -> dict:
    return run_child(__file__, *args, timeout=timeout)


def one_size(n: int, *, timeout: float) -> dict:
    """Build in one process, measure each ef_search in a fresh one; the folder is removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="embx-index-scale-"))
    try:
        out = _child("--build", str(n), str(folder), timeout=timeout)
        for ef in EF_SEARCH:
            out[f"ef_search_{ef}"] = _child("--measure", str(n), str(folder), str(ef), timeout=timeout)
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds allowed per size and step.")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "index_scale_cpu.json")
    parser.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        print(json.dumps(build(int(args.build[0]), Path(args.build[1]))))
        return
    if args.measure:
        print(json.dumps(measure(int(args.measure[0]), Path(args.measure[1]), int(args.measure[2]))))
        return
    import chromadb

    result = {
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/index_scale.py " + " ".join(sys.argv[1:]),
        "machine": cpu_info(),
        "backend": f"chromadb {chromadb.__version__}, embedded, HNSW M 16, ef_construction 100, ip",
        "synthetic": {"dim": DIM, "centres": CENTRES, "queries": QUERIES, "k": K, "write_batch": BATCH},
        "sizes": [],
        "not_run": [],
        "load_average_1_5_15_min": {"start": [round(x, 2) for x in os.getloadavg()]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        try:
            done = one_size(n, timeout=args.timeout)
            result["sizes"].append(done)
        except subprocess.TimeoutExpired:
            done = {"passages": n, "why": f"a step took over the {args.timeout:.0f} s allowed"}
            result["not_run"].append(done)
        except RuntimeError as exc:
            done = {"passages": n, "why": str(exc)}
            result["not_run"].append(done)
        print(json.dumps(done), flush=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    result["encode_rate"] = encode_rate()
    result["load_average_1_5_15_min"]["end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["encode_rate"]))


if __name__ == "__main__":
    main()
