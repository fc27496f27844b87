"""The cost curve of training: time and peak memory against the number of training pairs, on the CPU.

    python bench/train_scale.py                                   # 1k, 2k, 4k, 8k MedQuAD pairs
    python bench/train_scale.py --sizes 1000 2000 --out /tmp/t.json
    python bench/train_scale.py --sizes 1000 4000 --checkpointing both --out bench/results/train_memory_cpu.json

Each size trains in its own process (its peak memory is its own) with embx's sentence-transformers backend and its
own loop, as `embx run` does: the bundled all-MiniLM-L6-v2, MedQuAD's train pairs (../shared/data/medquad, the
first N in qrels order), in-batch negatives, one epoch, batch 32, `max_seq_length` 128, `precision: auto`, no dev
split. Measured per size: the seconds `train` took (tokenising, batching, the steps), samples/s, and the peak
resident memory of the process above what it held after loading the model, and the padded tokens of the largest
batch (all columns), which sets the activation memory the backward pass keeps. `--checkpointing on` trains with
`train.gradient_checkpointing`; `both` runs each size without and with it. Evaluation and mining grow with the
corpus, not with the pairs: bench/exact_scale.py gives their search cost from 10k to 1M passages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from index_scale import peak_rss_mb, run_child, write_result  # noqa: E402
from machine import cpu_info  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "medquad"
SETTINGS = {"epochs": 1, "batch_size": 32, "max_seq_length": 128, "negatives": "in-batch", "precision": "auto"}


def child(n: int, data: Path, checkpointing: bool = False) -> dict:
    """Train on the first `n` train pairs of `data` in this process; the figures as a dict."""
    from runner.data.beir import load_beir
    from runner.data.types import Pair
    from runner.models import load_model
    from runner.spec import Spec
    from runner.train import get_backend

    loaded = load_beir(data, ["train"])
    pairs = [
        Pair(loaded.queries[qid], loaded.corpus[doc])
        for qid, docs in loaded.qrels["train"].items()
        for doc, grade in docs.items()
        if grade > 0 and qid in loaded.queries and doc in loaded.corpus
    ][:n]
    if len(pairs) < n:
        raise SystemExit(f"{data} has {len(pairs)} train pairs, fewer than {n}")
    spec = Spec.model_validate(
        {
            "name": f"train-scale-{n}",
            "model": {"base": "all-MiniLM-L6-v2", "max_seq_length": SETTINGS["max_seq_length"]},
            "data": {"path": str(data), "splits": {"dev": None}},
            "negatives": {"mode": SETTINGS["negatives"]},
            "train": {
                "epochs": SETTINGS["epochs"],
                "batch_size": SETTINGS["batch_size"],
                "precision": SETTINGS["precision"],
                "early_stopping": None,
                "gradient_checkpointing": checkpointing,
            },
        }
    )
    model = load_model(spec.model, "cpu")
    baseline = peak_rss_mb()
    with tempfile.TemporaryDirectory(prefix="embx-train-scale-") as work:
        started = time.perf_counter()
        outcome = get_backend("sentence-transformers").train(model, pairs, spec, None, Path(work))
        seconds = time.perf_counter() - started
    return {
        "pairs": n,
        "samples": outcome.samples,
        "seconds": round(seconds, 1),
        "samples_per_s": round(outcome.samples / seconds, 2),
        "peak_mb_above_model": round(peak_rss_mb() - baseline, 1),
        "precision": outcome.precision,
        "steps": outcome.steps,
        "gradient_checkpointing": checkpointing,
        "largest_batch_tokens": outcome.details.get("largest_batch_tokens"),
    }


def compare(rows: list[dict]) -> dict:
    """Derived figures: per size, what checkpointing saves and costs; per mode, how the peak grows with the pairs."""
    by = {(r["pairs"], r["gradient_checkpointing"]): r for r in rows}
    saved = [
        {
            "pairs": n,
            "peak_mb_saved": round(off["peak_mb_above_model"] - on["peak_mb_above_model"], 1),
            "time_ratio": round(on["seconds"] / off["seconds"], 2),
        }
        for (n, mode), off in by.items()
        if not mode and (on := by.get((n, True)))
    ]
    growth = {}
    for mode in (False, True):
        sizes = sorted(n for n, m in by if m == mode)
        if len(sizes) > 1:
            first, last = by[sizes[0], mode], by[sizes[-1], mode]
            growth["on" if mode else "off"] = {
                "from_pairs": sizes[0],
                "to_pairs": sizes[-1],
                "peak_mb_growth": round(last["peak_mb_above_model"] - first["peak_mb_above_model"], 1),
            }
    return {"checkpointing": saved, "peak_growth": growth}


def main() -> None:
    """Parse arguments; run each size in its own process; write the result file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "train_scale_cpu.json")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="off")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.child_checkpointing)))
        return
    load_start = os.getloadavg()[0]
    rows = []
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    for n in args.sizes:
        for checkpointing in modes:
            flags = ["--child-checkpointing"] if checkpointing else []
            row = run_child(__file__, "--child", str(n), "--data", str(args.data), *flags, timeout=3600)
            print(json.dumps(row), flush=True)
            rows.append(row)
    first = rows[0]
    for row in rows:
        # linear growth: time per 1,000 pairs stays put, and so does memory (batches are a fixed size)
        row["seconds_per_1000_pairs"] = round(row["seconds"] / row["pairs"] * 1000, 1)
        row["time_vs_smallest"] = round(row["seconds"] / first["seconds"], 2)
    result = {
        "command": " ".join(["python bench/train_scale.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": cpu_info(),
        "load_average": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "data": str(args.data.name),
        "settings": SETTINGS,
        "sizes": rows,
        **compare(rows),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
