"""The demo-sizing runs (bench/specs/medical_demo_sizing.yaml) as one table: quality per epochs, rate, seed, device.

    python bench/demo_sizing_table.py --store amx=/tmp/sizing/amx.duckdb --store avx2=/tmp/sizing/avx2.duckdb \
        --out bench/results/demo_sizing_cpu.json
    python bench/demo_sizing_table.py --experiment medical-demo-one-epoch \
        --store amx=/tmp/one/amx.duckdb --store avx2=/tmp/one/avx2.duckdb \
        --store amx=/tmp/sizing/amx.duckdb:medical-demo-sizing \
        --store avx2=/tmp/sizing/avx2.duckdb:medical-demo-sizing \
        --out bench/results/demo_one_epoch_cpu.json

Each `--store LABEL=DB[:EXPERIMENT]` is one invocation of a sizing spec (as is: bf16 on the AMX CPU; or with
bench/main_job.py's AVX2 caps and fp32); EXPERIMENT defaults to `--experiment`. Every ok run is listed with its
test and dev NDCG@10, epochs run and best epoch; the training seconds are not comparable between runs (the
machine was shared), so timing is left to bench/main_job.py. Where one device and learning rate ran at two epoch
counts, `paired` compares them on the seeds both ran: each test query's NDCG@10 averaged over those seeds, then
runner.stats.paired_test (permutation p-value, bootstrap 95% interval) of fewer epochs against more.
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
    per_query: dict[tuple, dict[str, float]] = {}
    for item in args.store:
        label, where = item.split("=", 1)
        db, _, experiment = where.partition(":")
        experiment = experiment or args.experiment
        scores = store.load_experiment(db, experiment)["query_scores"]
        for listed in store.list_runs(db, experiment):
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
            key = (label, spec["train"]["learning_rate"], spec["train"]["epochs"], spec["train"]["seed"])
            per_query[key] = {
                q["query_id"]: q["value"]
                for q in scores
                if q["run_id"] == listed["run_id"] and q["stage"] == "tuned" and q["name"] == "ndcg@10"
            }
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
        "paired": paired(per_query),
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
    for row in result["paired"]:
        print(
            f"{row['device']} lr {row['learning_rate']:g}: {row['fewer']} vs {row['more']} epochs over seeds "
            f"{row['seeds']}: {row['mean_diff']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] p {row['p_value']}"
        )


def paired(per_query: dict[tuple, dict[str, float]]) -> list[dict]:
    """Fewer epochs against more, per device and learning rate, on the seeds both ran (see the module docstring)."""
    from runner.stats import paired_test

    out = []
    groups = sorted({(device, lr) for device, lr, _, _ in per_query})
    for device, lr in groups:
        epochs = sorted({e for d, r, e, _ in per_query if (d, r) == (device, lr)})
        for i, fewer in enumerate(epochs):
            for more in epochs[i + 1 :]:
                seeds = sorted(
                    {s for d, r, e, s in per_query if (d, r, e) == (device, lr, fewer)}
                    & {s for d, r, e, s in per_query if (d, r, e) == (device, lr, more)}
                )
                if not seeds:
                    continue
                runs = {e: [per_query[(device, lr, e, s)] for s in seeds] for e in (fewer, more)}
                queries = sorted(set.intersection(*(set(r) for e in runs for r in runs[e])))
                mean = {e: [sum(r[q] for r in runs[e]) / len(seeds) for q in queries] for e in runs}
                test = paired_test(mean[more], mean[fewer])
                out.append(
                    {
                        "device": device,
                        "learning_rate": lr,
                        "fewer": fewer,
                        "more": more,
                        "seeds": seeds,
                        "queries": len(queries),
                        **{k: round(v, 4) for k, v in test.items() if k != "n"},
                    }
                )
    return out


if __name__ == "__main__":
    main()
