"""The forgetting guard's table from a store: alpha | domain dev | guard | drop | kept, and test for the chosen model.

    embx run bench/specs/financial_merge.yaml --db /tmp/merge.duckdb
    python bench/merge_table.py /tmp/merge.duckdb --out bench/results/merge_financial_cpu.json

Writes the JSON (with the machine) and prints a Markdown table.
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
    """Read the newest ok run with a merge section and write its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from runner import store

    runs = [r for r in store.list_runs(args.db) if r["status"] == "ok"]
    run = next(r for r in (store.get_run(args.db, r["run_id"]) for r in runs) if r["info"].get("merge"))
    merge, info = run["info"]["merge"], run["info"]
    by_split = run["metrics_by_split"]
    result = {
        "command": "embx run bench/specs/financial_merge.yaml",
        "run_id": run["run_id"],
        "machine": cpu_info(),
        "precision": info["train"]["precision"],
        "train": {k: info["train"].get(k) for k in ("samples", "samples_per_s", "epochs_run")},
        "timings": run["timings"],
        "chosen_alpha": merge["chosen_alpha"],
        "warning": merge["warning"],
        "alphas": merge["alphas"],
        "test": by_split.get("test", {}).get("native"),
        "dev": by_split.get("dev", {}).get("native"),
        "guard_sets": {k: v.get("native") for k, v in by_split.items() if k.startswith("set:")},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    guards = sorted(merge["alphas"][0]["guard"])
    print("| alpha | domain dev ndcg@10 | " + " | ".join(f"guard {g} ndcg@10 | drop" for g in guards) + " | kept |")
    print("|---|---|" + "---|---|" * len(guards) + "---|")
    dev_base = (result["dev"] or {}).get("base", {}).get("ndcg@10")
    base_cells = " | ".join(f"{result['guard_sets'][f'set:{g}']['base']['ndcg@10']:.4f} | 0.0%" for g in guards)
    print(f"| 0 (base) | {dev_base:.4f} | {base_cells} | reference |")
    for row in merge["alphas"]:
        cells = " | ".join(f"{row['guard'][g]:.4f} | {row['drop'][g]:.1%}" for g in guards)
        chosen = "**chosen**" if row["alpha"] == merge["chosen_alpha"] else ("ok" if row["ok"] else "too much")
        print(f"| {row['alpha']} | {row['dev']:.4f} | {cells} | {chosen} |")
    for name, stages in result["guard_sets"].items():
        print(f"{name} (guard) ndcg@10: base {stages['base']['ndcg@10']:.4f}, chosen {stages['tuned']['ndcg@10']:.4f}")
    test = result["test"] or {}
    print(f"test ndcg@10: base {test.get('base', {}).get('ndcg@10')} -> chosen {test.get('tuned', {}).get('ndcg@10')}")


if __name__ == "__main__":
    main()
