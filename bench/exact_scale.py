"""The cost curve of embx's exact search, the one evaluation and hard-negative mining use, from 10k to 1M passages.

    python bench/exact_scale.py                       # 10k, 100k, 1M; bench/results/exact_scale_cpu.json
    python bench/exact_scale.py --sizes 10000 100000 --memory-mb 256

Two ways per size, each in its own process (its peak memory is its own):
- in memory (``eval.memory_mb: null``): the whole (n, 384) float32 matrix as one tensor, searched by
  :func:`runner.evaluate.exact_top_k` (1,024 queries at a time against all of it);
- on disk (``eval.memory_mb: M``): the matrix written a block at a time into a
  :class:`runner.matrix.DiskMatrix` (what :class:`runner.evaluate.CorpusIndex` does with each encoded block),
  then searched block by block with the running top-k merge.
Both search 1,000 queries for their top 100 (``eval.depth``'s default; mining asks for ``mine_range``'s upper end,
at most that) and must return the same top 100: the script records the largest score difference, the share of rows
in common and the share in the same place (exact float ties can come in either order). Measured: seconds to write
the matrix (on disk), seconds to search, and the peak resident memory of the process above what it held after
importing torch (the peak minus the baseline). The vectors are index_scale.py's synthetic passages (384-dimensional
unit vectors around 1,000 centres, generated in batches from a seed); encoding them with a real model is the larger
cost (see index_scale.py's encode rate, which holds here too). The load average is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

from index_scale import _batches, peak_rss_mb, run_child, write_result  # noqa: E402
from machine import cpu_info  # noqa: E402

QUERIES = 1000
K = 100


def _queries(seed: int):
    import numpy as np
    import torch

    first = next(_batches(QUERIES, seed + 7))[1]
    q = first + 0.3 * np.random.default_rng(seed + 1).standard_normal(first.shape).astype(np.float32)
    return torch.from_numpy(q / np.linalg.norm(q, axis=1, keepdims=True))


def run(n: int, memory_mb: float | None, folder: Path, seed: int = 0, device: str = "cpu") -> dict:
    """Search n synthetic passages in memory (memory_mb None) or on disk (a fresh process), on `device`.

    On a GPU the queries (and the in-memory matrix) live on it and each block read from disk is copied to it.
    """
    import numpy as np
    import torch

    from runner.evaluate import exact_top_k
    from runner.matrix import DiskMatrix, block_rows

    torch.set_num_threads(os.cpu_count() or 1)
    queries = _queries(seed).to(device)
    baseline = peak_rss_mb()
    out: dict = {"passages": n, "memory_mb": memory_mb, "device": device, "baseline_rss_mb": round(baseline, 1)}
    started = time.perf_counter()
    if memory_mb is None:
        corpus = torch.empty((n, queries.shape[1]))  # filled in place, as embx's encode fills its output
        for start, x in _batches(n, seed):
            corpus[start : start + len(x)] = torch.from_numpy(x)
        corpus = corpus.to(device)
    else:
        rows = block_rows(memory_mb, queries.shape[1])
        parts = (torch.from_numpy(x) for _, x in _batches(n, seed))
        corpus = DiskMatrix.write(folder / "m.npy", parts, rows=n, dim=queries.shape[1], block=rows)
        out["block_rows"] = rows
        out["file_mb"] = round((folder / "m.npy").stat().st_size / 2**20, 1)
    out["write_seconds"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    scores, indices = exact_top_k(queries, corpus, K)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out["search_seconds"] = round(time.perf_counter() - started, 2)
    out["queries_per_s"] = round(QUERIES / out["search_seconds"], 1)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["peak_above_baseline_mb"] = round(peak_rss_mb() - baseline, 1)
    way = "memory" if memory_mb is None else "disk"
    np.save(folder / f"rows-{way}.npy", indices.numpy())
    np.save(folder / f"scores-{way}.npy", scores.numpy())
    return out


def _child(*args: str, timeout: float) -> dict:
    return run_child(__file__, *args, timeout=timeout)


def one_size(n: int, memory_mb: float, *, timeout: float, device: str = "cpu") -> dict:
    """Both ways for one size; checks that they return the same top 100."""
    import numpy as np

    folder = Path(tempfile.mkdtemp(prefix="embx-exact-scale-"))
    try:
        in_memory = _child("--run", str(n), "none", str(folder), "--device", device, timeout=timeout)
        on_disk = _child("--run", str(n), str(memory_mb), str(folder), "--device", device, timeout=timeout)
        rows = [np.load(folder / f"rows-{way}.npy") for way in ("memory", "disk")]
        scores = [np.load(folder / f"scores-{way}.npy") for way in ("memory", "disk")]
        common = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(*rows)])
        return {
            "passages": n,
            "in_memory": in_memory,
            "on_disk": on_disk,
            # Equal scores exactly tied can come in either order, or swap at the 100th place.
            "max_score_difference": float(np.abs(scores[0] - scores[1]).max()),
            "rows_in_common": round(float(common), 6),
            "rows_in_same_order": round(float((rows[0] == rows[1]).mean()), 6),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--memory-mb", type=float, default=256, help="eval.memory_mb of the on-disk way.")
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds allowed per size and way.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the queries and scores live.")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "exact_scale_cpu.json")
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        n, memory, folder = args.run
        memory_mb = None if memory == "none" else float(memory)
        print(json.dumps(run(int(n), memory_mb, Path(folder), device=args.device)))
        return
    load_start = os.getloadavg()
    rows = []
    for n in args.sizes:
        row = one_size(n, args.memory_mb, timeout=args.timeout, device=args.device)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "command": "python bench/exact_scale.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": cpu_info(),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "queries": QUERIES,
        "k": K,
        "memory_mb": args.memory_mb,
        "device": args.device,
        "sizes": rows,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
