"""How much the embx loop's batches repeat between epochs, and how much of their padded tokens are real.

    python bench/batch_overlap.py ../shared/data/financial_qa_10k --out bench/results/batch_overlap_financial.json

Plans two epochs of batches with embx's own planner (``runner.train.fast.plan_batches``, seeded like a run) over
the first ``--train-limit`` training pairs (as bench/speed.py takes them), tokenised once with the bundled
all-MiniLM-L6-v2 tokenizer, for three batchings: random (``train.length_buckets: false``), length-sorted windows
with the exact length (``LENGTH_JITTER`` 0, the loop before the jitter) and with the jitter embx uses now. For
each it records the share of in-batch neighbours (pairs that share a batch in epoch 1) that share a batch again
in epoch 2, and the share of padded tokens that are real (query and positive columns, each padded to its longest
text in the batch, as ``collate`` does on CPU). No model runs: it takes seconds and its figures do not depend on
the machine (which is recorded anyway).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from machine import cpu_info  # noqa: E402
from peer_st import read_beir  # noqa: E402


def recurrence(first: list[list[int]], second: list[list[int]]) -> float:
    """Share of (pair, neighbour) links of epoch `first` that are also in one batch in epoch `second`."""
    where = {i: b for b, batch in enumerate(second) for i in batch}
    links = again = 0
    for batch in first:
        for i in batch:
            for j in batch:
                if i != j:
                    links += 1
                    again += where.get(i) == where.get(j)
    return again / links if links else 0.0


def real_share(columns, batches: list[list[int]]) -> float:
    """Real tokens over padded tokens, each column padded to its longest text in the batch."""
    real = padded = 0
    for batch in batches:
        lengths = [columns.lengths(i) for i in batch]
        for col in range(len(lengths[0])):
            sizes = [row[col] for row in lengths]
            real += sum(sizes)
            padded += max(sizes) * len(sizes)
    return real / padded if padded else 0.0


def main(argv: list[str] | None = None) -> int:
    """Plan two epochs per batching, measure, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="BEIR folder")
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from runner.data.types import Pair
    from runner.models import load_model
    from runner.spec import ModelSpec
    from runner.train import fast

    corpus, queries, qrels = read_beir(args.data)
    train = qrels("train")
    pairs = [Pair(queries[q], corpus[d]) for q in sorted(train) for d in sorted(train[q])][: args.train_limit]
    model = load_model(ModelSpec(base="all-MiniLM-L6-v2", max_seq_length=args.max_seq_length), device="cpu")
    columns = fast.tokenize_pairs(model, pairs, "", "")

    jitter = fast.LENGTH_JITTER
    variants = {
        "random (length_buckets: false)": (False, jitter),
        "length-sorted, exact length (jitter 0)": (True, 0.0),
        f"length-sorted, jitter {jitter} (embx now)": (True, jitter),
    }
    rows = {}
    try:
        for name, (buckets, factor) in variants.items():
            fast.LENGTH_JITTER = factor
            rng = random.Random(args.seed)
            epochs = [fast.plan_batches(columns, args.batch_size, rng, buckets) for _ in range(2)]
            rows[name] = {
                "length_buckets": buckets,
                "length_jitter": factor if buckets else None,
                "neighbours_recurring": round(recurrence(*epochs), 4),
                "real_token_share": round(sum(real_share(columns, e) for e in epochs) / len(epochs), 4),
            }
    finally:
        fast.LENGTH_JITTER = jitter

    result = {
        "script": "bench/batch_overlap.py",
        "command": "python bench/batch_overlap.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": cpu_info(),
        "data": args.data.name,
        "pairs": len(pairs),
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "bucket_window_batches": fast.BUCKET_WINDOW,
        "seed": args.seed,
        "batchings": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
