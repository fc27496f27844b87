"""What an ablation's variants cost, stage by stage, from the timings embx stores with each run.

    embx run bench/specs/financial_ablation.yaml --db /tmp/abl.duckdb --set output.dir=/tmp/abl_out
    python bench/ablation_cost.py --db /tmp/abl.duckdb --experiment financial-ablation \\
        --out bench/results/ablation_cost_cpu.json

The goal it checks: the variants after the reference cost no more than their trainings plus one baseline
evaluation, i.e. nothing but training and scoring the tuned model is repeated (the base model is evaluated once,
its corpus embeddings and mined negatives are reused).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from machine import cpu_info

from runner import store


def main() -> None:
    """Print and write the per-run stage timings and the totals of the variants after the reference."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    runs = sorted(
        (store.get_run(args.db, r["run_id"]) for r in store.list_runs(args.db, args.experiment)),
        key=lambda r: str(r["started_at"]),
    )
    rows = [{"variant": r["variant"], "run_id": r["run_id"], "timings": r["timings"]} for r in runs]
    variants = rows[1:]  # the first run is the reference, which evaluates the base model
    stages = sorted({k for r in variants for k in r["timings"]} - {"total"})
    totals = {k: round(sum(r["timings"].get(k, 0.0) for r in variants), 1) for k in [*stages, "total"]}
    baseline = rows[0]["timings"].get("eval_base", 0.0) if rows else 0.0
    budget = totals.get("train", 0.0) + baseline
    result = {
        "experiment": args.experiment,
        "devices": sorted({str(r["device"]) for r in runs}),  # as each run recorded it
        "machine": cpu_info(),  # where this script ran: the runs' machine when run beside them (bench/machine.py)
        "runs": rows,
        "variants_after_reference": len(variants),
        "variant_totals_seconds": totals,
        "reference_eval_base_seconds": round(baseline, 1),
        "budget_trainings_plus_one_baseline_seconds": round(budget, 1),
        "variants_total_over_budget_seconds": round(totals["total"] - budget, 1),
        "repeated_besides_training_and_tuned_eval_seconds": round(
            totals["total"] - totals.get("train", 0.0) - totals.get("eval_tuned", 0.0), 1
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for r in rows:
        print(r["variant"], {k: round(v, 1) for k, v in r["timings"].items()})
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
