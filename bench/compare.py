"""Side-by-side table of the plain sentence-transformers peer and an embx run on the same data and settings.

    python bench/compare.py --peer bench/results/peer_financial_cpu.json \
        --embx bench/results/embx_financial_cpu.json --out bench/results/compare_financial_cpu.json

`--embx` takes the JSON of `embx show RUN_ID --json` (one run: metrics, timings, info), not that of
`embx ls --json` (a list of runs with their test metrics only). The peer's file records its machine (CPU model
and AMX/bf16 flags, bench/machine.py); it is copied into the comparison.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = ["recall@1", "recall@10", "ndcg@10", "mrr@10", "map@100"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", type=Path, required=True)
    parser.add_argument("--embx", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    peer = json.loads(args.peer.read_text())
    run = json.loads(args.embx.read_text())
    if isinstance(run, list) or "timings" not in run:
        raise SystemExit(
            f"{args.embx}: not the output of `embx show RUN_ID --json` (`embx ls --json` lists runs without "
            "timings); write it with: embx show RUN_ID --db DB --json > FILE"
        )
    rows = []
    for name in METRICS:
        rows.append(
            {
                "metric": name,
                "peer_base": peer["base"].get(name),
                "peer_tuned": peer["tuned"].get(name),
                "embx_base": run["metrics"]["base"].get(name),
                "embx_tuned": run["metrics"]["tuned"].get(name),
            }
        )
    result = {
        "peer_device": peer["device"],
        "peer_machine": peer.get("machine"),
        "embx_device": run["device"],
        "peer_train_seconds": peer["train_seconds"],
        "embx_train_seconds": run["timings"]["train"],
        "embx_total_seconds": run["timings"]["total"],
        "embx_samples_per_s": run["info"]["train"]["samples_per_s"],
        "peer_samples_per_s": peer["train_samples_per_s"],
        "ndcg@10_tuned_diff": run["metrics"]["tuned"]["ndcg@10"] - peer["tuned"]["ndcg@10"],
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'metric':<10} {'peer base':>10} {'peer tuned':>11} {'embx base':>10} {'embx tuned':>11}")
    for r in rows:
        values = f"{r['peer_base']:>10.4f} {r['peer_tuned']:>11.4f} {r['embx_base']:>10.4f} {r['embx_tuned']:>11.4f}"
        print(f"{r['metric']:<10} {values}")
    print(f"tuned ndcg@10 embx - peer: {result['ndcg@10_tuned_diff']:+.4f}")
    print(f"train seconds: peer {result['peer_train_seconds']}, embx {result['embx_train_seconds']}")


if __name__ == "__main__":
    main()
