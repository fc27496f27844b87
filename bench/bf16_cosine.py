"""How far bf16 autocast moves embeddings from fp32 ones: embx's own encoder, the same texts, both precisions.

    python bench/bf16_cosine.py --out bench/results/bf16_cosine_medical_cpu.json

Encodes every passage and every query of a BEIR folder (default: the bundled data/medical-demo) with the bundled
all-MiniLM-L6-v2 (max_seq_length 256) through ``runner.evaluate.encode``, once with ``precision=fp32`` and once
with ``precision=bf16`` (autocast over the fp32 weights, as ``eval.precision: auto`` does on CPUs with AMX), and
records the cosine of each text's two embeddings (min, mean, 1st percentile, count below 0.9999) and how many
test queries keep the same top-1 and top-10 passages. The machine (CPU model, AMX/bf16 flags) is recorded with
it: on a CPU without AMX, bf16 is emulated (slow) but the numbers are comparable. Timings are recorded but not
quoted: on a shared machine they say little.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from machine import cpu_info  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Encode in fp32 and bf16, compare, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, nargs="?", default=ROOT / "data" / "medical-demo", help="BEIR folder")
    parser.add_argument("--limit", type=int, default=None, help="first N passages and first N queries only")
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    from runner.data.beir import load_beir
    from runner.evaluate import encode, top_k
    from runner.models import load_model
    from runner.spec import ModelSpec

    data = load_beir(args.data)
    doc_ids = sorted(data.corpus)[: args.limit]
    query_ids = sorted(data.queries)[: args.limit]
    docs = [data.corpus[d] for d in doc_ids]
    queries = [data.queries[q] for q in query_ids]
    test = [q for q in query_ids if q in data.qrels.get("test", {})]
    model = load_model(ModelSpec(base="all-MiniLM-L6-v2", max_seq_length=args.max_seq_length), device="cpu")

    emb: dict[str, dict[str, torch.Tensor]] = {}
    seconds: dict[str, float] = {}
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        emb[precision] = {
            "passages": encode(
                model,
                docs,
                task="document",
                batch_size=args.batch_size,
                normalize=True,
                description=f"{precision} passages",
                precision=precision,
            ),
            "queries": encode(
                model,
                queries,
                task="query",
                batch_size=args.batch_size,
                normalize=True,
                description=f"{precision} queries",
                precision=precision,
            ),
        }
        seconds[precision] = round(time.perf_counter() - start, 2)

    def stats(kind: str) -> dict[str, float | int]:
        cos = (emb["fp32"][kind] * emb["bf16"][kind]).sum(dim=1).clamp(max=1.0)
        return {
            "texts": len(cos),
            "min": round(cos.min().item(), 6),
            "mean": round(cos.mean().item(), 6),
            "p01": round(torch.quantile(cos, 0.01).item(), 6),
            "below_0.9999": int((cos < 0.9999).sum().item()),
        }

    rows = [query_ids.index(q) for q in test]
    tops = {}
    for precision in ("fp32", "bf16"):
        _, idx = top_k(emb[precision]["queries"][rows], emb[precision]["passages"], k=min(10, len(docs)))
        tops[precision] = idx.tolist()
    same_top1 = sum(a[0] == b[0] for a, b in zip(tops["fp32"], tops["bf16"]))
    same_top10 = sum(set(a) == set(b) for a, b in zip(tops["fp32"], tops["bf16"]))

    result = {
        "script": "bench/bf16_cosine.py",
        "command": "python bench/bf16_cosine.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**cpu_info(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "data": str(args.data.resolve().relative_to(ROOT) if args.data.resolve().is_relative_to(ROOT) else args.data),
        "model": "all-MiniLM-L6-v2 (bundled), fp32 weights",
        "max_seq_length": args.max_seq_length,
        "batch_size": args.batch_size,
        "cosine_bf16_vs_fp32": {"passages": stats("passages"), "queries": stats("queries")},
        "test_queries": len(test),
        "same_top1": same_top1,
        "same_top10_set": same_top10,
        "encode_seconds": seconds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
