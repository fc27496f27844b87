"""fp32 levers on a CPU: thread settings and batch shape, one at a time, for training steps and encoding.

    python bench/fp32_levers.py --avx2 --out bench/results/fp32_levers_avx2_emulated.json
    python bench/fp32_levers.py --steps 2 --out /tmp/levers.json          # a smoke run
    python bench/fp32_levers.py --only encode --precision bf16 --out bench/results/encode_batch_bf16_cpu.json

Issue #21 asks which settings make the fp32 path (CPUs without bf16 units) faster. Each setting runs in its own
Python process (thread counts are fixed when torch starts; peak memory is per process) on the bundled medical demo
and the bundled all-MiniLM-L6-v2 in fp32, the demo's shape: `max_seq_length` 256, every train pair with its
positive and 3 negatives (random demo passages: every demo passage is under 128 tokens, as the mined ones are).

- Training: embx's own loop pieces (runner.train.fast: tokenise once, length-bucketed no-duplicates batches,
  per-column padding, fused AdamW) and sentence-transformers' MultipleNegativesRankingLoss; one untimed warm-up
  step, then the same number of pairs (`--steps` x 32, full batches only) whatever the batch size, so each
  setting does the same work. Recorded: pairs/s, real tokens/s, padded tokens/s, peak RSS.
- Encoding: embx's encoder (runner.evaluate.encode: longest first, under `--precision` autocast, as evaluation
  and mining run it) of every demo passage and test query, or of the first 800 financial_qa_10k passages
  (../shared/data, longer texts); one untimed warm-up pass, then one timed pass. Recorded: texts/s.

Settings: torch's intra-op threads (1 or 2; torch's default is the core count), inter-op threads (1 or 2), and
the training batch in pairs (8, 16, 32; 64 forms no batch of distinct texts from the demo's 325 passages): a
token-budget batch would size batches by their tokens, which only pays
if throughput per token depends on the batch size. Quality does not enter: threads change no result, and the
batch shapes are compared for speed only (the demo trains at 32). `--avx2` caps torch, oneDNN and MKL at AVX2
(bench/machine.py AVX2_ONLY) as bench/main_job.py --avx2 does: an estimate of an AVX2-only CPU on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from index_scale import peak_rss_mb, run_child, write_result  # noqa: E402
from machine import AVX2_ONLY, cpu_info  # noqa: E402

DATA = ROOT / "data" / "medical-demo"
NEGATIVES = 3
TRAIN_SETTINGS = [
    {"threads": 2, "interop": 2, "batch": 32},  # torch's defaults on 2 cores, the demo's batch
    {"threads": 1, "interop": 2, "batch": 32},
    {"threads": 2, "interop": 1, "batch": 32},
    {"threads": 2, "interop": 2, "batch": 16},
    {"threads": 2, "interop": 2, "batch": 8},
]
ENCODE_SETTINGS = [
    {"threads": 2, "interop": 2, "batch": 32},
    {"threads": 1, "interop": 2, "batch": 32},
    {"threads": 2, "interop": 2, "batch": 128},
    {"threads": 2, "interop": 2, "batch": 64},  # embx's eval.batch_size on CPU until this bench
    {"threads": 2, "interop": 2, "batch": 16},
    {"threads": 2, "interop": 2, "batch": 16, "data": "financial"},
    {"threads": 2, "interop": 2, "batch": 32, "data": "financial"},
    {"threads": 2, "interop": 2, "batch": 64, "data": "financial"},
]
FINANCIAL = ROOT.parent / "shared" / "data" / "financial_qa_10k"
FINANCIAL_PASSAGES = 800


def _model_and_data():
    from runner.data.beir import load_beir
    from runner.models import load_model
    from runner.spec import ModelSpec

    model = load_model(ModelSpec(base="all-MiniLM-L6-v2", max_seq_length=256), "cpu")
    data = load_beir(DATA)
    return model, data


def train_child(threads: int, interop: int, batch: int, steps: int) -> dict:
    """Time `steps` x 32 pairs of training steps (after one warm-up step) at this setting."""
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(interop)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from runner.data.types import Pair
    from runner.train.fast import _optimizer, collate, per_column_forwards, plan_batches, tokenize_pairs

    model, data = _model_and_data()
    rng = random.Random(42)
    ids = sorted(data.corpus)
    pairs = []
    for qid, docs in sorted(data.qrels["train"].items()):
        for doc, grade in sorted(docs.items()):
            if grade > 0:
                others = rng.sample([d for d in ids if d not in docs], NEGATIVES)
                pairs.append(Pair(data.queries[qid], data.corpus[doc], negatives=[data.corpus[d] for d in others]))
    columns = tokenize_pairs(model, pairs, "", "")
    wanted = steps * 32
    plan_rng = random.Random(42)
    batches: list[list[int]] = []
    while sum(len(b) for b in batches) < wanted + batch:  # full batches only, over as many epochs' plans as needed
        full = [b for b in plan_batches(columns, batch, plan_rng, True) if len(b) == batch]
        if not full:  # 64 pairs x 4 distinct passages: more than the demo's 325 passages can fill without repeats
            raise SystemExit(f"batch {batch}: the planner forms no full batch of distinct texts on this data")
        batches += full
    loss_fn = MultipleNegativesRankingLoss(model)
    torch.manual_seed(42)
    optimizer = _optimizer(model, 5e-5, 0.01, "cpu")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    done = tokens = padded = 0
    started = 0.0
    for i, chosen in enumerate(batches):
        if i == 1:
            started = time.perf_counter()  # after the warm-up step
        features, n_tokens = collate(columns, chosen, model.tokenizer.pad_token_id or 0, 1)
        with per_column_forwards():
            loss = loss_fn(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 1:
            done += len(chosen)
            tokens += n_tokens
            padded += sum(f["input_ids"].numel() for f in features)
            if done >= wanted:
                break
    seconds = time.perf_counter() - started
    return {
        "pairs": done,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(done / seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "padded_tokens_per_s": round(padded / seconds, 1),
        "padding_efficiency": round(tokens / padded, 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads_in_use": torch.get_num_threads(),
    }


def encode_child(threads: int, interop: int, batch: int, precision: str, data: str = "demo") -> dict:
    """Time one pass of embx's encoder over `data`'s texts (after one warm-up pass)."""
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(interop)
    from runner.data.beir import load_beir
    from runner.evaluate import encode

    model, demo = _model_and_data()
    if data == "financial":
        texts = list(load_beir(FINANCIAL).corpus.values())[:FINANCIAL_PASSAGES]
    else:
        texts = list(demo.corpus.values()) + [demo.queries[q] for q in sorted(demo.qrels["test"])]

    def run() -> None:
        encode(model, texts, task="document", batch_size=batch, normalize=True, description=None, precision=precision)

    run()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    return {"texts": len(texts), "seconds": round(seconds, 3), "texts_per_s": round(len(texts) / seconds, 1)}


def main() -> None:
    """Run each setting in its own process, write the result file, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="the result file (required, except in a child process)")
    parser.add_argument("--steps", type=int, default=6, help="timed work per training setting, in 32-pair steps")
    parser.add_argument("--avx2", action="store_true", help="cap torch, oneDNN and MKL at AVX2 (see above)")
    parser.add_argument("--resume", action="store_true", help="keep the settings --out already holds, run the rest")
    parser.add_argument("--only", choices=["train", "encode"], help="run one part only")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="encoding precision (training is fp32)"
    )
    parser.add_argument("--child", choices=["train", "encode"], help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        setting = json.loads(args.setting)
        if args.child == "train":
            print(json.dumps(train_child(**setting, steps=args.steps)))
        else:
            print(json.dumps(encode_child(**setting, precision=args.precision)))
        return
    if args.out is None:
        parser.error("--out is required")
    if args.avx2:
        os.environ.update(AVX2_ONLY)  # the children inherit it
    result: dict = {
        "command": "python bench/fp32_levers.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": cpu_info(),
        "emulated": {"as": "AVX2-only CPU, fp32", "env": AVX2_ONLY} if args.avx2 else None,
        "precision": {"train": "fp32", "encode": args.precision},
        "data": "data/medical-demo (bundled)",
        "train": [],
        "encode": [],
    }
    if args.resume and args.out.is_file():
        kept = json.loads(args.out.read_text())
        result["train"], result["encode"] = kept["train"], kept["encode"]
        result["resumed"] = {"from": kept["date"], "command": kept["command"]}
    for setting in TRAIN_SETTINGS if args.only != "encode" else []:
        if any(all(r[k] == v for k, v in setting.items()) for r in result["train"]):
            continue
        row = run_child(
            __file__, "--child", "train", "--setting", json.dumps(setting), "--steps", str(args.steps), timeout=1800
        )
        result["train"].append({**setting, **row})
        print("train", setting, row, flush=True)
        write_result(args.out, result)
    for setting in ENCODE_SETTINGS if args.only != "train" else []:
        setting = {"data": "demo", **setting}
        if any(all(r.get(k, "demo") == v for k, v in setting.items()) for r in result["encode"]):
            continue
        row = run_child(
            __file__, "--child", "encode", "--setting", json.dumps(setting), "--precision", args.precision, timeout=1800
        )
        result["encode"].append({**setting, **row})
        print("encode", setting, row, flush=True)
        write_result(args.out, result)
    print("| threads | interop | batch (pairs) | pairs/s | real tokens/s | padded tokens/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in result["train"]:
        print(
            f"| {r['threads']} | {r['interop']} | {r['batch']} | {r['pairs_per_s']} | {r['tokens_per_s']} | "
            f"{r['padded_tokens_per_s']} | {r['peak_rss_mb']} |"
        )
    print("| data | threads | interop | batch (texts) | texts/s |")
    print("|---|---|---|---|---|")
    for r in result["encode"]:
        print(f"| {r.get('data', 'demo')} | {r['threads']} | {r['interop']} | {r['batch']} | {r['texts_per_s']} |")


if __name__ == "__main__":
    main()
