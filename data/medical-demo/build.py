#!/usr/bin/env python3
"""Assemble the medical-demo BEIR folder from the hand-written files in source/.

Deterministic, standard library only. Run from anywhere:

    python data/medical-demo/build.py

Source format, read in file-name order:
  source/passages/*.txt
    == topic | Topic name        starts a topic (condition)
    -- aspect | Passage title    starts the passage "topic-aspect"; its text is the next line
  source/queries/*.txt
    passage-id | query text                  one query with one positive passage
    passage-id,passage-id | query text       ... with two positives
  Lines starting with "#" are comments.
Writes corpus.jsonl, queries.jsonl and qrels/{train,dev,test}.tsv next to this script.
Query ids are "q-<first positive>-<n>". Queries are split by query and per topic (the topic of
the first positive): within a topic they are ordered by md5 of the query id and placed on a circle
that starts at an md5-derived offset, cut at 65% / 77%, so the split is deterministic and every
split draws from most topics (about 65% train, 12% dev, 23% test).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLITS = (("train", 0.65), ("dev", 0.77), ("test", 1.0))


def md5_unit(text: str) -> float:
    """Map text to a number in [0, 1) via its md5 digest."""
    return int(hashlib.md5(text.encode("utf-8")).hexdigest()[:12], 16) / float(16**12)


def parse(passage_files, query_files):
    """Read topics, passages and queries from the source files."""
    topics, passages, queries = {}, [], []
    topic = None
    for path in passage_files:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if not line or line.startswith("#"):
                continue
            if line.startswith("== "):
                tid, name = (s.strip() for s in line[3:].split("|", 1))
                if tid in topics:
                    sys.exit(f"duplicate topic {tid}")
                topics[tid] = name
                topic = tid
            elif line.startswith("-- ") and topic is not None:
                aspect, title = (s.strip() for s in line[3:].split("|", 1))
                text = lines[i].strip()
                i += 1
                passages.append({"_id": f"{topic}-{aspect}", "title": title, "text": text, "topic": topic})
            else:
                sys.exit(f"{path.name}: cannot parse line {i}: {line[:60]}")
    topic_of = {p["_id"]: p["topic"] for p in passages}
    seen = {}
    for path in query_files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            ids, sep, text = line.partition("|")
            pos = [s.strip() for s in ids.split(",") if s.strip()]
            if not sep or not pos or not text.strip():
                sys.exit(f"{path.name}:{n}: cannot parse query line")
            if pos[0] not in topic_of:
                sys.exit(f"{path.name}:{n}: unknown passage {pos[0]}")
            seen[pos[0]] = seen.get(pos[0], 0) + 1
            queries.append(
                {"_id": f"q-{pos[0]}-{seen[pos[0]]}", "text": text.strip(), "topic": topic_of[pos[0]], "pos": pos}
            )
    return topics, passages, queries


def validate(passages, queries):
    """Check ids, positives, passage length (40-110 words, 2-5 sentences) and duplicate queries."""
    ids = [p["_id"] for p in passages]
    assert len(ids) == len(set(ids)), "duplicate passage id"
    known = set(ids)
    problems = []
    for p in passages:
        words = len(p["text"].split())
        sents = len([s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", p["text"]) if s])
        if not 40 <= words <= 110 or not 2 <= sents <= 5:
            problems.append(f"{p['_id']}: {words} words, {sents} sentences")
    for q in queries:
        for pid in q["pos"]:
            if pid not in known:
                problems.append(f"{q['_id']}: unknown positive {pid}")
    texts = [q["text"].lower() for q in queries]
    if len(texts) != len(set(texts)):
        problems.append("duplicate query text")
    if problems:
        sys.exit("validation failed:\n  " + "\n  ".join(problems))


def assign_splits(queries):
    """Set q["split"] per query, stratified by topic and ordered by md5 of the query id."""
    by_topic = {}
    for q in queries:
        by_topic.setdefault(q["topic"], []).append(q)
    for topic, qs in by_topic.items():
        qs.sort(key=lambda q: hashlib.md5(q["_id"].encode()).hexdigest())
        offset = md5_unit("split:" + topic)
        for rank, q in enumerate(qs):
            u = (offset + (rank + 0.5) / len(qs)) % 1.0
            q["split"] = next(name for name, cut in SPLITS if u < cut)


def main():
    """Build the BEIR files and print counts."""
    topics, passages, queries = parse(
        sorted((HERE / "source" / "passages").glob("*.txt")), sorted((HERE / "source" / "queries").glob("*.txt"))
    )
    validate(passages, queries)
    assign_splits(queries)
    with open(HERE / "corpus.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for p in passages:
            f.write(json.dumps({"_id": p["_id"], "title": p["title"], "text": p["text"]}, ensure_ascii=False) + "\n")
    with open(HERE / "queries.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for q in queries:
            f.write(json.dumps({"_id": q["_id"], "text": q["text"]}, ensure_ascii=False) + "\n")
    (HERE / "qrels").mkdir(exist_ok=True)
    counts = {}
    for name, _ in SPLITS:
        rows = [(q["_id"], pid) for q in queries if q["split"] == name for pid in q["pos"]]
        with open(HERE / "qrels" / f"{name}.tsv", "w", encoding="utf-8", newline="\n") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, pid in rows:
                f.write(f"{qid}\t{pid}\t1\n")
        split_qs = [q for q in queries if q["split"] == name]
        counts[name] = (len(split_qs), len(rows), len({q["topic"] for q in split_qs}))
    multi = sum(1 for q in queries if len(q["pos"]) > 1)
    print(f"topics {len(topics)}  passages {len(passages)}  queries {len(queries)} ({multi} with 2+ positives)")
    for name, (nq, nrel, nt) in counts.items():
        print(f"  {name:5s}: {nq} queries, {nrel} qrels, {nt}/{len(topics)} topics")


if __name__ == "__main__":
    main()
