"""CPU encode speed of a model in torch fp32 against its ONNX export (int8 or fp32), with the export's parity figures.

    python bench/export_speed.py                              # the bundled all-MiniLM-L6-v2, no training
    python bench/export_speed.py --run RUN_ID --db results.duckdb   # a run's saved model, through embx export
    # writes bench/results/export_speed_cpu.json
    python bench/export_speed.py --format onnx --out bench/results/export_speed_onnx_fp32_cpu.json

Needs the `onnx` extra (its own environment: pip install torch==2.13.0 -e ".[test,onnx]"). Trains nothing. The
model is exported (`--format`: onnx-int8, the default, or fp32 onnx) in a temporary folder (with a run: by
``embx export``'s own ``export_run``, parity checked and recorded; without one: the bundled model through the same
writer), then the passages of a BEIR folder (default: the bundled data/medical-demo, 325 passages) are encoded with
both, one after the other in this process: a warm-up pass, then the median of ``--repeats`` timed passes. The
parity figures compare the two on the test queries over the whole corpus: cosine of each text's embeddings, NDCG@10
of both rankings and the overlap of their top 10s. The machine (bench/machine.py) is recorded with the threads used.
"""

from __future__ import annotations

import argparse
import json
import statistics
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

from machine import cpu_info  # noqa: E402


def read_beir(folder: Path) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    corpus, queries, qrels = {}, {}, {}
    for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        corpus[doc["_id"]] = (doc.get("title", "") + " " + doc["text"]).strip()
    for line in (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        queries[q["_id"]] = q["text"]
    for line in (folder / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        qid, did, grade = line.split("\t")
        if int(grade) > 0:
            qrels.setdefault(qid, {})[did] = int(grade)
    return corpus, {q: queries[q] for q in qrels}, qrels


def timed(model, texts: list[str], *, batch_size: int, repeats: int) -> tuple[list[float], object]:
    model.encode(texts[: batch_size * 2], batch_size=batch_size, show_progress_bar=False)  # warm-up
    seconds, emb = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        emb = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        seconds.append(time.perf_counter() - started)
    return seconds, emb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="Run id (with --db): export its saved model")
    parser.add_argument("--db", default="results.duckdb")
    parser.add_argument("--data", default=str(ROOT / "data" / "medical-demo"))
    parser.add_argument("--format", choices=["onnx-int8", "onnx"], default="onnx-int8")
    parser.add_argument("--int8-config", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--note", default="", help="What else ran on the machine, etc.")
    parser.add_argument("--out", default=str(HERE / "results" / "export_speed_cpu.json"))
    args = parser.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from runner import export
    from runner.models import resolve_model

    corpus, queries, qrels = read_beir(Path(args.data))
    spec = None
    with tempfile.TemporaryDirectory(prefix="embx-export-bench-") as tmp:
        out = Path(tmp) / "export"
        if args.run:
            from runner import store
            from runner.spec import ModelSpec

            run = store.get_run(args.db, args.run)
            source = export.saved_model_path(run)
            spec = ModelSpec.model_validate(json.loads(run["spec_json"])["model"])
            result = export.export_run(args.db, args.run, output=out, format=args.format, quantization=args.int8_config)
            load, store_parity = result.load, result.parity
        else:
            source = Path(resolve_model("all-MiniLM-L6-v2").location)
            load = export._write(
                args.format, source=source, folder=out, quantization=export.int8_config(args.int8_config)
            )
            store_parity = None
        qp, pp = (spec.query_prefix, spec.passage_prefix) if spec else ("", "")
        passages = [pp + t for t in corpus.values()]
        torch_model = SentenceTransformer(str(source), device="cpu", model_kwargs={"dtype": torch.float32})
        if spec:
            torch_model.max_seq_length = spec.max_seq_length
        onnx_model = export.load_exported(out, load)
        torch_s, torch_emb = timed(torch_model, passages, batch_size=args.batch_size, repeats=args.repeats)
        onnx_s, onnx_emb = timed(onnx_model, passages, batch_size=args.batch_size, repeats=args.repeats)
        q_texts = [qp + t for t in queries.values()]
        q_ref = export._embed(torch_model, q_texts, [])
        q_new = export._embed(onnx_model, q_texts, [])
        ranking = export._compare_rankings(
            (q_ref, np.asarray(torch_emb)),
            (q_new, np.asarray(onnx_emb)),
            qids=list(queries),
            dids=list(corpus),
            qrels=qrels,
            normalize=True,
        )
        cos_p = np.sum(export._unit(np.asarray(torch_emb)) * export._unit(np.asarray(onnx_emb)), axis=1)
        cos_q = np.sum(export._unit(q_ref) * export._unit(q_new), axis=1)
        size = {p.name: p.stat().st_size for p in (out / "onnx").glob("*.onnx") if p.name in load["file_name"]}

    t_med, o_med = statistics.median(torch_s), statistics.median(onnx_s)
    key = args.format.replace("-", "_")  # onnx_int8 (the original file's keys) or onnx (fp32)
    record = {
        "what": f"CPU encode of the corpus: torch fp32 vs ONNX {'int8' if key == 'onnx_int8' else 'fp32'} export "
        f"(embx export --format {args.format})",
        "model": f"run {args.run}" if args.run else "bundled all-MiniLM-L6-v2 (no run: no training)",
        "data": f"{args.data} ({len(corpus)} passages, {len(queries)} test queries)",
        "format": args.format,
        ("int8_file" if key == "onnx_int8" else "onnx_file"): load["file_name"],
        ("int8_file_bytes" if key == "onnx_int8" else "onnx_file_bytes"): size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "torch_fp32_seconds": [round(s, 3) for s in torch_s],
        f"{key}_seconds": [round(s, 3) for s in onnx_s],
        "torch_fp32_passages_per_s": round(len(passages) / t_med, 1),
        f"{key}_passages_per_s": round(len(passages) / o_med, 1),
        "speedup": round(t_med / o_med, 2),
        "parity": {
            "min_cosine_passages": round(float(cos_p.min()), 6),
            "mean_cosine_passages": round(float(cos_p.mean()), 6),
            "min_cosine_queries": round(float(cos_q.min()), 6),
            **ranking,
        },
        "passes_embx_int8_criterion": ranking["ndcg@10_delta"] >= -export.INT8_MAX_NDCG_DELTA
        and ranking["top10_overlap"] >= export.INT8_MIN_OVERLAP,
        "export_parity": store_parity,
        "machine": cpu_info(),
        "note": args.note,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: record[k] for k in ("torch_fp32_passages_per_s", f"{key}_passages_per_s", "speedup")}))
    print(json.dumps(record["parity"]))


if __name__ == "__main__":
    main()
