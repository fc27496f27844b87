"""The selection table of a store's selection runs, with each candidate's timings and the machine.

    embx select bench/specs/financial_select.yaml --db /tmp/select.duckdb
    python bench/select_table.py /tmp/select.duckdb --experiment financial-select \
        --out bench/results/select_financial_cpu.json

Writes the JSON and prints the Markdown tables (the same cells `embx select` and the report show).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import cpu_info  # noqa: E402


def _total(run: dict) -> float:
    return float((run.get("timings") or {}).get("total", 0.0))


def main() -> None:
    """Read the experiment's selection runs and write their table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from runner import store
    from runner.selection import selection_cells, selection_table

    data = store.load_experiment(args.db, args.experiment)
    table = selection_table(data)
    runs = {r["run_id"]: r for r in data["runs"]}
    result = {
        "command": f"embx select (experiment {args.experiment})",
        "machine": cpu_info(),
        "queries": table.queries,
        "main": table.main,
        "leader": table.leader,
        "recommended": table.recommended,
        "recommendation": table.recommendation,
        "rule": table.rule,
        "bm25": table.bm25,
        "candidates_total_seconds": round(sum(_total(runs[r.run_id]) for r in table.rows), 1),
        "candidates": [
            {
                "label": row.label,
                "status": row.status,
                "run_id": row.run_id,
                "metrics": row.metrics,
                "interval": row.interval,
                "vs_leader": row.vs_leader,
                "profile": row.profile,
                "timings": runs[row.run_id].get("timings"),
                "device": runs[row.run_id].get("device"),
            }
            for row in table.rows
        ],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for head, rows in selection_cells(table, others=4).values():
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for cells in rows:
            print("| " + " | ".join(cells) + " |")
        print()
    for row in table.rows:
        timings = runs[row.run_id].get("timings") or {}
        print(f"{row.label}: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"recommended: {table.recommended} ({table.recommendation})")


if __name__ == "__main__":
    main()
