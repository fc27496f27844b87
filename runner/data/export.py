"""What `embx prepare` writes: the training set as FlagEmbedding JSONL, the data as a BEIR folder, a data card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.data.types import Pair, RetrievalData


def write_training_jsonl(pairs: list[Pair], path: Path) -> None:
    """Training pairs as FlagEmbedding JSONL: one {query, pos: [positive], neg: [negatives]} per line."""
    with path.open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps({"query": p.query, "pos": [p.positive], "neg": list(p.negatives)}, ensure_ascii=False))
            f.write("\n")


def write_beir(data: RetrievalData, folder: Path) -> None:
    """The corpus (with metadata), queries and qrels per split, in the BEIR layout embx and mteb read."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for doc_id, text in data.corpus.items():
            row = {"_id": doc_id, "title": "", "text": text}
            if doc_id in data.meta:
                row["metadata"] = data.meta[doc_id]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as f:
        for qid, text in data.queries.items():
            f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    for split, qrels in data.qrels.items():
        with (folder / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, docs in qrels.items():
                f.writelines(f"{qid}\t{doc_id}\t{grade}\n" for doc_id, grade in docs.items())


def _histogram(lengths: list[int]) -> dict[str, Any]:
    """Token-length summary and a 10-bin histogram."""
    import numpy as np

    if not lengths:
        return {"count": 0}
    values = np.asarray(lengths)
    counts, edges = np.histogram(values, bins=10)
    return {
        "count": int(values.size),
        "mean": round(float(values.mean()), 1),
        "p50": int(np.percentile(values, 50)),
        "p95": int(np.percentile(values, 95)),
        "max": int(values.max()),
        "bins": [[int(edges[i]), int(edges[i + 1]), int(c)] for i, c in enumerate(counts)],
    }


def data_card(
    data: RetrievalData, pairs: list[Pair], checks: dict[str, Any], negatives: dict[str, Any], tokenizer
) -> dict[str, Any]:
    """Counts, token-length histograms, check results and everything skipped, for one prepared dataset."""

    def lengths(texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return {
        "source": data.source,
        "counts": {**data.stats(), "train_pairs": len(pairs)},
        "preparation": data.notes,
        "token_lengths": {
            "passages": _histogram(lengths(list(data.corpus.values()))),
            "queries": _histogram(lengths(list(data.queries.values()))),
        },
        "negatives": negatives,
        "checks": checks,
        "skipped": [{"item": s.item, "reason": s.reason} for s in data.skipped],
    }


def card_markdown(card: dict[str, Any]) -> str:
    """The data card as a short Markdown page."""
    lines = [f"# Data card: {card['source']}", "", "## Counts", ""]
    lines += [f"- {k}: {v}" for k, v in card["counts"].items()]
    if card.get("preparation"):
        lines += ["", "## Preparation", ""]
        lines += [f"- {k}: {json.dumps(v)}" for k, v in card["preparation"].items()]
    lines += ["", "## Token lengths", "", "| texts | count | mean | p50 | p95 | max |", "|---|---|---|---|---|---|"]
    for name, h in card["token_lengths"].items():
        lines.append(
            f"| {name} | {h['count']} | {h.get('mean', '-')} | {h.get('p50', '-')} | {h.get('p95', '-')} | "
            f"{h.get('max', '-')} |"
        )
    lines += ["", "## Negatives", "", f"`{json.dumps(card['negatives'])}`", "", "## Checks", ""]
    lines += [f"- {note}" for note in card["checks"].get("notes", [])] or ["- no finding"]
    lines += ["", f"## Skipped ({len(card['skipped'])})", ""]
    lines += [f"- `{s['item']}`: {s['reason']}" for s in card["skipped"]] or ["- nothing"]
    return "\n".join(lines) + "\n"
