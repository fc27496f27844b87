"""Approximate (Chroma HNSW) vs exact search on test splits: `embx eval-index` for several runs or specs at once.

    python bench/index_eval.py RUN_ID specs/medical.yaml bench/specs/financial_qa_10k.yaml --db results.duckdb
    # writes bench/results/index_eval_cpu.json

Each target is measured by embx's own ``runner.index.eval_index`` (a run: its saved model, and the figures are
also recorded with the run; a spec: its base model): the test queries and the whole corpus are encoded, the
corpus is written into a temporary embedded Chroma folder (default HNSW settings unless the spec's ``eval.index``
says otherwise), and the test split is scored through the index beside exact search. The machine is recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from machine import cpu_info  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", help="Run ids (or unique prefixes) and spec files.")
    parser.add_argument("--db", default="results.duckdb", help="Results store holding the runs.")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "index_eval_cpu.json")
    args = parser.parse_args()
    import chromadb

    from runner.index import eval_index

    result = {
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/index_eval.py " + " ".join(sys.argv[1:]),
        "machine": cpu_info(),
        "backend": f"chromadb {chromadb.__version__}",
        "targets": {},
    }
    for target in args.targets:
        figures, run_id = eval_index(args.db, target)
        result["targets"][target] = {"run_id": run_id, **figures}
        print(json.dumps({target: figures}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
