"""The GPU check's one table: peer vs embx speed and quality, then the exact-search scaling points, from $OUT.

    python bench/gpu/table.py OUT_DIR [--speed NAME]    # NAME: speed_check.sh's SPEED_NAME

Reads ``OUT_DIR/NAME.json`` (bench/speed.py), ``OUT_DIR/NAME_compile.json`` when present, and
``OUT_DIR/exact_scale.json`` (bench/exact_scale.py) when present, and prints one Markdown table with the issue's
goals beside the ratios. Exits 1 when the speed file is missing (the check did not get that far).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GOALS = {"train_samples_per_s": 5.0, "eval_texts_per_s_tuned": 3.0}
"""Issue #21's GPU goals: embx / peer ratios of training samples/s and evaluation texts/s."""


def _figures(side: dict) -> dict[str, float | None]:
    derived = side.get("derived", {})
    return {
        "train_samples_per_s": derived.get("train_samples_per_s"),
        "eval_texts_per_s_tuned": derived.get("eval_texts_per_s", {}).get("tuned"),
        "ndcg@10_tuned": side.get("metrics", {}).get("tuned", {}).get("ndcg@10"),
    }


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def speed_rows(path: Path, label: str) -> list[str]:
    """Table rows of one bench/speed.py result: throughput, ratios against the goals, quality."""
    data = json.loads(path.read_text())
    sides, ratios = data.get("sides", {}), data.get("ratios", {})
    peer, embx = _figures(sides.get("peer", {})), _figures(sides.get("embx", {}))
    rows = []
    for key, title in (
        ("train_samples_per_s", "training samples/s"),
        ("eval_texts_per_s_tuned", "evaluation texts/s (tuned)"),
        ("ndcg@10_tuned", "test NDCG@10 (tuned)"),
    ):
        if key.startswith("ndcg"):
            diff = ratios.get("ndcg@10_tuned_diff")
            verdict = "n/a" if diff is None else f"diff {diff:+.4f} ({'ok' if abs(diff) <= 0.005 else 'over 0.005'})"
        elif ratios.get(key) is None:
            verdict = "n/a"
        else:
            ratio, goal = ratios[key], GOALS[key]
            verdict = f"{ratio:.2f}x (goal {goal:g}x: {'met' if ratio >= goal else 'missed'})"
        rows.append(f"| {label} | {title} | {_cell(peer[key])} | {_cell(embx[key])} | {verdict} |")
    return rows


def scale_rows(path: Path) -> list[str]:
    """Table rows of bench/exact_scale.py: search seconds and memory, in memory vs on disk, per size."""
    data = json.loads(path.read_text())
    rows = []
    for size in data.get("sizes", []):
        mem, disk = size["in_memory"], size["on_disk"]
        rows.append(
            f"| exact search, {size['passages']:,} passages ({data.get('device', 'cpu')}) | search s / peak MB "
            f"| {mem['search_seconds']} / {mem.get('cuda_peak_mb', mem['peak_above_baseline_mb'])} "
            f"| {disk['search_seconds']} / {disk.get('cuda_peak_mb', disk['peak_above_baseline_mb'])} "
            f"| rows in common {size['rows_in_common']} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--speed", default="speed_financial_h100")
    args = parser.parse_args()
    speed = args.out / f"{args.speed}.json"
    if not speed.exists():
        print(f"no {speed}: the speed step did not finish", file=sys.stderr)
        sys.exit(1)
    lines = ["| part | figure | peer / in memory | embx / on disk | ratio, check |", "|---|---|---|---|---|"]
    lines += speed_rows(speed, "speed")
    compiled = args.out / f"{args.speed}_compile.json"
    if compiled.exists():
        lines += speed_rows(compiled, "speed, train.compile")
    scale = args.out / "exact_scale.json"
    if scale.exists():
        lines += scale_rows(scale)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
