"""The recipes ablation as a table: each variant's tuned test scores against the reference, with the report's test.

    embx run bench/specs/medical_recipes.yaml --db /tmp/recipes.duckdb
    python bench/recipes_table.py /tmp/recipes.duckdb --out bench/results/recipes_medical_cpu.json

Reads the experiment through the report's own analysis (paired permutation test and bootstrap interval against
the reference variant, per-query test scores), adds each run's Matryoshka scores (sources dense@d), training
time and samples/s, writes the JSON with the machine and prints a Markdown table.
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
    """Analyse the experiment and write its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--experiment", default="medical-recipes")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--command", default="embx run bench/specs/medical_recipes.yaml", help="The command that filled the store."
    )
    args = parser.parse_args()
    from runner import store
    from runner.report import analyse
    from runner.stats import paired_test

    data = store.load_experiment(args.db, args.experiment)
    section = analyse(data)
    main_metric = section["main"]
    dims: dict[str, dict[str, float]] = {}
    for row in data["metrics"]:
        if row["split"] == "test" and row["source"].startswith("dense@") and row["name"] == main_metric:
            dims.setdefault(row["run_id"], {})[f"{row['source']} {row['stage']}"] = row["value"]
    tuned_main = {
        row["run_id"]: row["value"]
        for row in data["metrics"]
        if row["split"] == "test"
        and row["source"] == "native"
        and row["stage"] == "tuned"
        and row["name"] == main_metric
    }
    variants = []
    for v in section["variants"]:
        if v.status != "ok":
            variants.append({"label": v.label, "status": v.status, "error": v.error})
            continue
        run = v.runs[0]
        train = (run.get("info") or {}).get("train") or {}
        common = sorted(set(v.per_query.get("base", {})) & set(v.per_query.get("tuned", {})))
        vs_base = paired_test([v.per_query["base"][q] for q in common], [v.per_query["tuned"][q] for q in common])
        variants.append(
            {
                "label": v.label,
                "status": v.status,
                "run_id": run["run_id"],
                "tuned": v.tuned,
                "base": v.base,
                "test_vs_reference": v.test,
                "test_vs_base": vs_base,
                "conclusion": v.conclusion,
                "matryoshka": dims.get(run["run_id"], {}),
                "repeats": [
                    {
                        "run_id": r["run_id"],
                        "seed": json.loads(r["spec_json"])["train"]["seed"],
                        "tuned": tuned_main.get(r["run_id"]),
                    }
                    for r in v.runs
                ],
                "train_seconds": (run.get("timings") or {}).get("train"),
                "samples_per_s": train.get("samples_per_s"),
                "best_epoch": train.get("best_epoch"),
                "lora": train.get("lora"),
                "loop": train.get("loop"),
                "train_pairs": ((run.get("info") or {}).get("data") or {}).get("train_pairs"),
            }
        )
    result = {
        "command": args.command,
        "machine": cpu_info(),
        "main": main_metric,
        "variants": variants,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| variant | tuned {main_metric} | vs base (p) | vs reference | p | 95% CI | train s | samples/s |")
    print("|---|---|---|---|---|---|---|---|")
    for v in variants:
        if v["status"] != "ok":
            print(f"| {v['label']} | {v['status']} | | | | | | |")
            continue
        t = v["test_vs_reference"] or {}
        ci = f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]" if t else "-"
        diff = f"{t['mean_diff']:+.4f}" if t else "reference"
        p = f"{t['p_value']:.3g}" if t else "-"
        b = v["test_vs_base"]
        print(
            f"| {v['label']} | {v['tuned'].get(main_metric, 0):.4f} | {b['mean_diff']:+.4f} ({b['p_value']:.3g}) |"
            f" {diff} | {p} | {ci} | {v['train_seconds']} | {v['samples_per_s']} |"
        )
    for v in variants:
        if v.get("matryoshka"):
            print(v["label"], json.dumps(v["matryoshka"]))


if __name__ == "__main__":
    main()
