"""Ratios and ranges across bench/speed.py result files: the derived figures bench/README.md quotes.

    python bench/speed_summary.py --out bench/results/speed_cpu_variants_summary.json

Reads the five CPU variant runs (``results/speed_cpu_variant_*.json``: the embx side of bench/speed.py with one
setting changed at a time) and every CPU speed file, and writes what bench/README.md computes from them: each
variant's training speed against the sentence-transformers trainer in fp32, what each change buys (the embx loop
without buckets over the trainer, length buckets, bf16 autocast), the share of padded tokens that are padding,
evaluation texts/s by precision (lowest and highest), the spread of tuned NDCG@10, and the range of the measured
peak matmul rates. Nothing is measured here: it only reads the committed result files (and their machines).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "trainer_fp32": "speed_cpu_variant_trainer_fp32.json",
    "embx_fp32_nobuckets": "speed_cpu_variant_embx_fp32_nobuckets.json",
    "embx_fp32": "speed_cpu_variant_embx_fp32.json",
    "trainer_bf16": "speed_cpu_variant_trainer_bf16.json",
    "embx_bf16": "speed_cpu_variant_embx_bf16.json",
}
CPU_SPEED_FILES = [*VARIANTS.values(), "speed_financial_cpu.json", "speed_financial_cpu_embx_jitter.json"]


def summarize(results: Path = RESULTS) -> dict[str, Any]:
    """The derived figures, from the result files in `results`."""
    runs = {name: json.loads((results / file).read_text()) for name, file in VARIANTS.items()}
    embx = {name: run["sides"]["embx"] for name, run in runs.items()}
    speed = {name: side["derived"]["train_samples_per_s"] for name, side in embx.items()}
    base = speed["trainer_fp32"]
    evals: dict[str, list[float]] = {}
    for side in embx.values():
        precision = "bf16" if side["train_precision"] == "bf16" else "fp32"  # eval.precision follows the run's
        evals.setdefault(precision, []).extend(side["derived"]["eval_texts_per_s"].values())
    ndcg = [side["metrics"]["tuned"]["ndcg@10"] for side in embx.values()]
    peaks = [
        json.loads((results / file).read_text())["peaks"]["bf16"]["flops"] / 1e12
        for file in CPU_SPEED_FILES
        if (results / file).exists()
    ]
    padding = {
        name: side["details"]["padding_efficiency"]
        for name, side in embx.items()
        if side.get("details", {}).get("padding_efficiency") is not None
    }
    return {
        "script": "bench/speed_summary.py",
        "files": {name: f"bench/results/{file}" for name, file in VARIANTS.items()},
        "machines": sorted({run["machine"]["device_name"] for run in runs.values()}),
        # These files predate the recorded AMX flag. Runs left at precision auto trained in bf16, which embx's
        # resolve_precision picks on CPU only where torch reports AMX tiles: the machine had AMX bf16.
        "amx_bf16_inferred": any(
            side["train_precision"] == "bf16" and not any("precision" in s for s in run["settings"]["embx_set"])
            for side, run in ((embx[name], runs[name]) for name in runs)
        ),
        "train_samples_per_s": {name: round(v, 2) for name, v in speed.items()},
        "vs_trainer_fp32": {name: round(v / base, 2) for name, v in speed.items()},
        "gains": {
            "embx_loop_without_buckets_over_trainer_fp32": round(speed["embx_fp32_nobuckets"] / base, 3),
            "length_buckets_fp32": round(speed["embx_fp32"] / speed["embx_fp32_nobuckets"], 2),
            "bf16_in_embx_loop": round(speed["embx_bf16"] / speed["embx_fp32"], 2),
            "bf16_in_trainer": round(speed["trainer_bf16"] / speed["trainer_fp32"], 2),
        },
        "real_token_share": padding,
        "padding_share": {name: round(1 - v, 4) for name, v in padding.items()},
        "eval_texts_per_s": {
            precision: {"min": round(min(values), 1), "max": round(max(values), 1), "evaluations": len(values)}
            for precision, values in sorted(evals.items())
        },
        "tuned_ndcg@10": {
            "min": round(min(ndcg), 4),
            "max": round(max(ndcg), 4),
            "spread": round(max(ndcg) - min(ndcg), 4),
        },
        "cpu_bf16_peak_tflops": {"min": round(min(peaks), 3), "max": round(max(peaks), 3), "files": len(peaks)},
    }


def main() -> None:
    """Write the summary (and print it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = summarize()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
