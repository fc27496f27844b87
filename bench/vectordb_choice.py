"""Choosing the embedded vector database (issue #17): Chroma, Qdrant local mode, LanceDB and Milvus Lite, measured.

    python bench/vectordb_choice.py                        # 10k and 100k; bench/results/vectordb_choice_cpu.json
    python bench/vectordb_choice.py --sizes 10000 --only qdrant lancedb

The candidates are not embx dependencies: ``pip install qdrant-client lancedb pymilvus milvus-lite`` (pymilvus
3.0.2 has no ``milvus_lite`` extra, so milvus-lite is named itself). A candidate that is missing is recorded with
its import error.

Every candidate's embedded mode indexes the same synthetic corpus as index_scale.py (384-dimensional unit vectors
around 1,000 centres, generated in batches from a seed), each candidate and size in its own process (its peak memory
is its own), in a fresh folder: writes of 5,000 points (id, vector, payload ``{"n": i}``), then whatever index
build the candidate needs before it answers queries. Measured per candidate: index seconds (writes plus any index
build), peak resident memory of the process, size on disk (all files in its folder), single-query latency p50/p95
over 200 queries (perturbed corpus points), recall of the top 10 against the exact top 10 (brute force over the
regenerated batches), a filtered query (``n >= half the corpus``: do all hits satisfy it), and whether a second
process can open the same folder and query it while the first still holds it open (tested: the candidate's process
spawns a second one that opens the folder and runs one query). Each candidate's default settings are used: what
embx would get by switching. The package versions and installed sizes (summed from each distribution's RECORD) are
recorded, and any error is recorded as it was raised. The load average is recorded at the start and the end.

Candidates: chroma (through runner.vectordb, the code path of ``embx index``: HNSW, M 16, ef_construction 100,
ef_search 100); qdrant (``QdrantClient(path=...)``, no index options in local mode); lancedb (no index: a flat
scan), lancedb_ivf_pq and lancedb_ivf_hnsw_sq (its default index parameters, built after the writes); milvus
(pymilvus ``MilvusClient("file.db")`` served in-process by milvus-lite; HNSW, its defaults).
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
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from index_scale import BATCH, CENTRES, DIM, QUERIES, K, _batches, _exact, _queries, run_child  # noqa: E402
from machine import cpu_info  # noqa: E402

CANDIDATES = ("chroma", "qdrant", "lancedb", "lancedb_ivf_pq", "lancedb_ivf_hnsw_sq", "milvus")
PACKAGES = {
    "chroma": ["chromadb"],
    "qdrant": ["qdrant-client", "portalocker"],
    "lancedb": ["lancedb", "lance-namespace", "lance-namespace-urllib3-client"],
    "milvus": ["pymilvus", "milvus-lite", "faiss-cpu"],
}
"""The distributions each candidate adds (its own and what it pulled in beyond embx's environment)."""
NAME = "scale"


def _package(name: str) -> dict:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return {"name": name, "error": "not installed"}
    size = 0
    for file in dist.files or []:
        path = Path(dist.locate_file(file))
        if path.is_file():
            size += path.stat().st_size
    return {"name": name, "version": dist.version, "installed_mb": round(size / 1e6, 1)}


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _by_suffix(folder: Path) -> dict[str, float]:
    """MB on disk per file suffix (what the folder holds: data, index, log)."""
    sizes: dict[str, int] = {}
    for path in folder.rglob("*"):
        if path.is_file():
            sizes[path.suffix or path.name] = sizes.get(path.suffix or path.name, 0) + path.stat().st_size
    return {k: round(v / 1e6, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])}


class Chroma:
    settings = "embx's runner.vectordb: Chroma PersistentClient, HNSW M 16, ef_construction 100, ef_search 100, ip"

    def __init__(self, folder: Path, create: bool) -> None:
        from runner.vectordb import open_collection

        self.index = open_collection(folder, NAME, create=create)

    def write(self, start: int, x) -> None:
        ids = [f"p{start + i}" for i in range(len(x))]
        self.index.upsert(ids, x, [""] * len(ids), [{"n": start + i} for i in range(len(x))])

    def finish(self) -> None:
        pass

    def search(self, q, where_from: int | None = None) -> list[tuple[int, int]]:
        where = {"n": {"$gte": where_from}} if where_from is not None else None
        return [(int(h.id[1:]), int(h.meta["n"])) for h in self.index.search(q[None, :], K, where)[0]]


class Qdrant:
    settings = "qdrant-client local mode (QdrantClient(path=...)), dot product; local mode has no index options"

    def __init__(self, folder: Path, create: bool) -> None:
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(path=str(folder))
        if create:
            self.client.create_collection(
                NAME, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT)
            )

    def write(self, start: int, x) -> None:
        ids = list(range(start, start + len(x)))
        batch = self.models.Batch(ids=ids, vectors=x.tolist(), payloads=[{"n": i} for i in ids])
        self.client.upsert(NAME, points=batch, wait=True)

    def finish(self) -> None:
        pass

    def search(self, q, where_from: int | None = None) -> list[tuple[int, int]]:
        m = self.models
        flt = None
        if where_from is not None:
            flt = m.Filter(must=[m.FieldCondition(key="n", range=m.Range(gte=where_from))])
        points = self.client.query_points(NAME, query=q.tolist(), limit=K, query_filter=flt, with_payload=True).points
        return [(int(p.id), int(p.payload["n"])) for p in points]


class Lance:
    index_type: str | None = None
    settings = "lancedb embedded (lancedb.connect(folder)), dot distance, no vector index: a flat scan"

    def __init__(self, folder: Path, create: bool) -> None:
        import lancedb

        self.db = lancedb.connect(str(folder))
        self.table = None if create else self.db.open_table(NAME)

    def write(self, start: int, x) -> None:
        import pyarrow as pa

        ids = pa.array(range(start, start + len(x)), pa.int64())
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), DIM)
        data = pa.table({"id": ids, "vector": vectors, "n": ids})
        if self.table is None:
            self.table = self.db.create_table(NAME, data=data)
        else:
            self.table.add(data)

    def finish(self) -> None:
        if self.index_type:
            self.table.create_index(metric="dot", index_type=self.index_type)

    def search(self, q, where_from: int | None = None) -> list[tuple[int, int]]:
        query = self.table.search(q).distance_type("dot").limit(K).select(["id", "n"])
        if where_from is not None:
            query = query.where(f"n >= {where_from}", prefilter=True)
        return [(int(r["id"]), int(r["n"])) for r in query.to_list()]


class LanceIvfPq(Lance):
    index_type = "IVF_PQ"
    settings = "lancedb embedded, dot distance, IVF_PQ index built after the writes (create_index defaults)"


class LanceIvfHnswSq(Lance):
    index_type = "IVF_HNSW_SQ"
    settings = "lancedb embedded, dot distance, IVF_HNSW_SQ index built after the writes (create_index defaults)"


class Milvus:
    settings = "pymilvus MilvusClient('file.db') served in-process by milvus-lite, HNSW (its defaults), IP"

    def __init__(self, folder: Path, create: bool) -> None:
        from pymilvus import DataType, MilvusClient

        self.client = MilvusClient(str(folder / "milvus.db"))
        if create:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
            schema.add_field("n", DataType.INT64)
            params = self.client.prepare_index_params()
            params.add_index(field_name="vector", index_type="HNSW", metric_type="IP")
            self.client.create_collection(NAME, schema=schema, index_params=params)
        else:
            self.client.load_collection(NAME)

    def write(self, start: int, x) -> None:
        rows = [{"id": start + i, "vector": v, "n": start + i} for i, v in enumerate(x.tolist())]
        self.client.insert(NAME, rows)

    def finish(self) -> None:
        self.client.flush(NAME)
        self.client.load_collection(NAME)

    def search(self, q, where_from: int | None = None) -> list[tuple[int, int]]:
        flt = f"n >= {where_from}" if where_from is not None else ""
        hits = self.client.search(NAME, data=[q.tolist()], limit=K, filter=flt, output_fields=["n"])[0]
        return [(int(h["id"]), int(h["entity"]["n"])) for h in hits]


OPEN = {
    "chroma": Chroma,
    "qdrant": Qdrant,
    "lancedb": Lance,
    "lancedb_ivf_pq": LanceIvfPq,
    "lancedb_ivf_hnsw_sq": LanceIvfHnswSq,
    "milvus": Milvus,
}


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]


def run(candidate: str, n: int, folder: Path, write_budget: float, seed: int = 0) -> dict:
    """Index, measure, and test a second process on `folder` while this one holds it open (its own process).

    Writing stops once it has taken `write_budget` seconds with batches left: the result then holds the
    error, the points written and their rate, and nothing is measured on the partial corpus.
    """
    import numpy as np

    out: dict = {"candidate": candidate, "passages": n, "settings": OPEN[candidate].settings}
    db = OPEN[candidate](folder, create=True)
    started = time.perf_counter()
    for start, x in _batches(n, seed):
        elapsed = time.perf_counter() - started
        if elapsed > write_budget:
            out["error"] = (
                f"writes stopped at the {write_budget:.0f} s write budget: {start} of {n} points written in "
                f"{elapsed:.1f} s ({start / elapsed:.1f} points/s)"
            )
            out["points_written"], out["write_seconds"] = start, round(elapsed, 1)
            out["points_per_s"] = round(start / elapsed, 1)
            return out
        db.write(start, x)
    out["write_seconds"] = round(time.perf_counter() - started, 1)
    db.finish()
    index_seconds = time.perf_counter() - started
    out["index_seconds"] = round(index_seconds, 1)
    out["points_per_s"] = round(n / index_seconds, 1)
    out["size_mb"] = round(_folder_bytes(folder) / 1e6, 1)
    out["mb_on_disk_by_file_type"] = _by_suffix(folder)
    q = _queries(seed)
    db.search(q[0])  # a warm-up: first-query loading is not a query's latency
    latencies, ann = [], []
    for row in range(len(q)):
        began = time.perf_counter()
        hits = db.search(q[row])
        latencies.append((time.perf_counter() - began) * 1000)
        ann.append({i for i, _ in hits})
    out["latency_ms_p50"] = round(statistics.median(latencies), 2)
    out["latency_ms_p95"] = round(float(np.percentile(latencies, 95)), 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    exact = _exact(q, n, seed)
    out["recall_vs_exact@10"] = round(statistics.mean(len(a & set(e.tolist())) / K for a, e in zip(ann, exact)), 4)
    try:
        half = n // 2
        hits = db.search(q[0], where_from=half)
        out["filter"] = {"query": f"n >= {half}", "hits": len(hits), "all_match": all(m >= half for _, m in hits)}
    except Exception as exc:  # noqa: BLE001 - recorded as the candidate's answer
        out["filter"] = {"query": f"n >= {n // 2}", "error": _error(exc)}
    proc = subprocess.run(
        [sys.executable, __file__, "--peek", candidate, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        out["second_process_while_open"] = json.loads(lines[-1])
    else:
        tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        out["second_process_while_open"] = {"ok": False, "error": tail[:500]}
    return out


def peek(candidate: str, folder: Path, seed: int = 0) -> dict:
    """Open `folder` from a second process and run one query (the first still holds it open).

    A library that logs the cause and raises a generic error (pymilvus over milvus-lite) has the logged
    exception appended.
    """
    import logging

    logged: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.exc_info[1] is not None:
                logged.append(_error(record.exc_info[1]))

    logging.getLogger().addHandler(Keep(level=logging.ERROR))
    try:
        db = OPEN[candidate](folder, create=False)
        hits = db.search(_queries(seed)[0])
        return {"ok": len(hits) == K, "hits": len(hits)}
    except Exception as exc:  # noqa: BLE001 - the error is the answer
        return {"ok": False, "error": "; cause logged: ".join([_error(exc), *logged])}


def _child(*args: str, timeout: float) -> dict:
    return run_child(__file__, *args, timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--only", nargs="+", choices=CANDIDATES, default=list(CANDIDATES))
    parser.add_argument("--timeout", type=float, default=900, help="Seconds allowed per candidate and size.")
    parser.add_argument(
        "--write-budget", type=float, default=300, help="Seconds of writing after which a candidate is stopped."
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "vectordb_choice_cpu.json")
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--peek", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run(args.run[0], int(args.run[1]), Path(args.run[2]), args.write_budget)), flush=True)
        return
    if args.peek:
        print(json.dumps(peek(args.peek[0], Path(args.peek[1]))), flush=True)
        return
    result = {
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/vectordb_choice.py " + " ".join(sys.argv[1:]),
        "machine": cpu_info(),
        "python": sys.version.split()[0],
        "packages": {c: [_package(p) for p in names] for c, names in PACKAGES.items()},
        "write_budget_s": args.write_budget,
        "synthetic": {"dim": DIM, "centres": CENTRES, "queries": QUERIES, "k": K, "write_batch": BATCH},
        "results": [],
        "failed": [],
        "load_average_1_5_15_min": {"start": [round(x, 2) for x in os.getloadavg()]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        for candidate in args.only:
            folder = Path(tempfile.mkdtemp(prefix=f"embx-vdb-{candidate}-"))
            began = time.perf_counter()
            try:
                done = _child(
                    "--run",
                    candidate,
                    str(n),
                    str(folder),
                    "--write-budget",
                    str(args.write_budget),
                    timeout=args.timeout,
                )
                result["failed" if "error" in done else "results"].append(done)
            except subprocess.TimeoutExpired:
                done = {"candidate": candidate, "passages": n, "error": f"over the {args.timeout:.0f} s allowed"}
                result["failed"].append(done)
            except RuntimeError as exc:
                done = {"candidate": candidate, "passages": n, "error": str(exc)}
                result["failed"].append(done)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            done["wall_seconds"] = round(time.perf_counter() - began, 1)
            print(json.dumps(done), flush=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    result["load_average_1_5_15_min"]["end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
