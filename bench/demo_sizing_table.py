"""The demo-sizing runs (bench/specs/medical_demo_sizing.yaml) as one table: quality per epochs, rate, seed, device.

    python bench/demo_sizing_table.py --store amx=/tmp/sizing/amx.duckdb --store avx2=/tmp/sizing/avx2.duckdb \
        --out bench/results/demo_sizing_cpu.json

Each `--store LABEL=DB` is one invocation of the spec (as is: bf16 on the AMX CPU; or with bench/main_job.py's AVX2
caps and fp32). Every ok run is listed with its test and dev NDCG@10, epochs run and best epoch; the training
seconds are not comparable between runs (the machine was shared), so timing is left to bench/main_job.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import cpu_info  # noqa: E402


def main() -> None:
    """Read the stores, write the result file, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", required=True, help="LABEL=path of a results store")
    parser.add_argument("--experiment", default="medical-demo-sizing")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from runner import store

    rows = []
    for item in args.store:
        label, db = item.split("=", 1)
        for listed in store.list_runs(db, args.experiment):
            if listed["status"] != "ok":
                continue
            run = store.get_run(db, listed["run_id"])
            spec = json.loads(run["spec_json"]) if isinstance(run["spec_json"], str) else run["spec_json"]
            train = run["info"]["train"]
            dev = run["metrics_by_split"]["dev"]["native"]
            rows.append(
                {
                    "device": label,
                    "epochs": spec["train"]["epochs"],
                    "learning_rate": spec["train"]["learning_rate"],
                    "seed": spec["train"]["seed"],
                    "precision": train["precision"],
                    "epochs_run": train["epochs_run"],
                    "best_epoch": train["best_epoch"],
                    "dev_ndcg@10": round(dev["tuned"]["ndcg@10"], 4),
                    "test_ndcg@10": round(run["metrics"]["tuned"]["ndcg@10"], 4),
                    "base_test_ndcg@10": round(run["metrics"]["base"]["ndcg@10"], 4),
                }
            )
    rows.sort(key=lambda r: (r["device"], r["epochs"], r["learning_rate"], r["seed"]))
    means: dict[str, list[float]] = {}
    for r in rows:
        key = f"{r['device']} epochs {r['epochs']} lr {r['learning_rate']:g}"
        means.setdefault(key, []).append(r["test_ndcg@10"])
    result = {
        "command": "python bench/demo_sizing_table.py " + " ".join(sys.argv[1:]),
        "machine": cpu_info(),
        "rows": rows,
        "mean_test_ndcg@10": {k: round(sum(v) / len(v), 4) for k, v in means.items()},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| device | epochs | lr | seed | precision | epochs run (best) | dev NDCG@10 | test NDCG@10 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['device']} | {r['epochs']} | {r['learning_rate']:g} | {r['seed']} | {r['precision']} | "
            f"{r['epochs_run']} ({r['best_epoch']}) | {r['dev_ndcg@10']} | {r['test_ndcg@10']} |"
        )
    for key, value in result["mean_test_ndcg@10"].items():
        print(f"mean {key}: {value}")


if __name__ == "__main__":
    main()
