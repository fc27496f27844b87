"""embx's default recipe (`recipe: auto`, a spec of name and data) against the plain sentence-transformers script.

One invocation, each dataset in turn, both arms on the same training pairs, corpus and test queries:

    python bench/recipe_vs_plain.py --out bench/results/recipe_vs_plain_cpu.json

- plain: bench/peer_st.py (SentenceTransformerTrainer, MNRL over in-batch negatives, no-duplicates batches,
  lr 2e-5, warm-up 0.1) with embx's epoch budget (3) and batch size (32), keeping its last epoch;
- auto: `embx run` of a spec that names only the data (the recipe is printed in the log and recorded).

CPU-sized: the large sets are cut to `--train` training pairs (qrels rows drawn at random), `--dev` and `--test`
queries (with all their judgements) and a corpus of at most `--corpus` passages (every judged passage of the kept
queries, then random others); the bundled demo is used whole. Both tuned models and the base model are then scored
by one evaluator (embx's, fp32) on the same test queries, so the paired permutation test and bootstrap interval of
auto - plain are per query. Dev scores (base and auto's tuned model) come from embx's run: the "never worse than
the base model on dev" check.

`--seeds 1 2 3` trains every arm once per seed and averages each query's score over the seeds before the paired
tests (the expected difference of the recipes, not one draw of each); `--train 100 500 2000 --nested` makes a row
per training size on the same dev and test queries.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import cpu_info  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DATASETS = {
    "demo": ROOT / "data" / "medical-demo",
    "medquad": SHARED / "medquad",
    "nfcorpus": SHARED / "nfcorpus",
    "financial_qa_10k": SHARED / "financial_qa_10k",
}
PLAIN = {"epochs": 3, "batch_size": 32, "lr": 2e-5}
"""The plain script's settings: embx's epoch budget and batch size, the script's own learning rate."""


def _rows(path: Path) -> list[tuple[str, str, int]]:
    with path.open() as f:
        return [(r["query-id"], r["corpus-id"], int(float(r["score"]))) for r in csv.DictReader(f, delimiter="\t")]


def subset(
    source: Path, target: Path, *, train: int, dev: int, test: int, corpus: int, seed: int, nested: bool = False
) -> dict:
    """Write a CPU-sized BEIR folder cut from `source` (see the module docstring); returns its sizes.

    With `nested`, the training pairs are the first `train` of one seeded shuffle (so smaller sets are subsets of
    larger ones) and the dev and test queries are drawn by their own seeded generator, the same at every `train`:
    a comparison across training sizes then scores on the same queries.
    """
    rng = random.Random(seed)
    kept: dict[str, list[tuple[str, str, int]]] = {}
    positives = [r for r in _rows(source / "qrels" / "train.tsv") if r[2] > 0]
    if nested:
        shuffled = sorted(positives)
        random.Random(f"{seed}-train").shuffle(shuffled)
        kept["train"] = sorted(shuffled[:train])
        rng = random.Random(f"{seed}-eval")
    else:
        kept["train"] = sorted(rng.sample(positives, min(train, len(positives))))
    for split, count in (("dev", dev), ("test", test)):
        rows = _rows(source / "qrels" / f"{split}.tsv")
        qids = sorted({r[0] for r in rows})
        chosen = set(rng.sample(qids, min(count, len(qids))))
        kept[split] = [r for r in rows if r[0] in chosen]
    docs = {}
    with (source / "corpus.jsonl").open() as f:
        for line in f:
            docs[json.loads(line)["_id"]] = line
    judged = {r[1] for rows in kept.values() for r in rows}
    others = sorted(set(docs) - judged)
    fill = rng.sample(others, max(0, min(len(others), corpus - len(judged))))
    keep_docs = judged | set(fill)
    qids = {r[0] for rows in kept.values() for r in rows}
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    with (target / "corpus.jsonl").open("w") as f:
        f.writelines(docs[d] for d in sorted(keep_docs))
    with (source / "queries.jsonl").open() as f, (target / "queries.jsonl").open("w") as out:
        out.writelines(line for line in f if json.loads(line)["_id"] in qids)
    for split, rows in kept.items():
        with (target / "qrels" / f"{split}.tsv").open("w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t{s}\n" for q, d, s in rows)
    return {
        "train_pairs": len(kept["train"]),
        "dev_queries": len({r[0] for r in kept["dev"]}),
        "test_queries": len({r[0] for r in kept["test"]}),
        "corpus": len(keep_docs),
    }


def _run(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=log.parent)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(command)}; see {log}")
    return round(time.perf_counter() - started, 1)


def _embx(*args: str) -> list[str]:
    return [sys.executable, "-m", "runner.cli", *args]


def per_query_ndcg(models: dict[str, str], folder: Path) -> dict[str, dict[str, float]]:
    """Test NDCG@10 per query of each model, by embx's evaluator in fp32 (one corpus, one query set)."""
    from runner.data.beir import load_beir
    from runner.evaluate import CorpusIndex, evaluate
    from runner.models import load_model
    from runner.spec import ModelSpec

    data = load_beir(folder, ["test"])
    out = {}
    for name, location in models.items():
        spec = ModelSpec(base=location)
        model = load_model(spec, "cpu")
        result = evaluate(
            model,
            label=None,
            index=CorpusIndex(data.corpus),
            queries=data.queries,
            qrels=data.qrels["test"],
            spec=spec,
            metrics=["ndcg@10"],
            depth=100,
            batch_size=64,
            precision="fp32",
        )
        out[name] = {q: m["ndcg@10"] for q, m in result.per_query.items()}
    return out


def _train(
    name: str, folder: Path, work: Path, *, arms: list[str], seed: int | None, resume: bool = False
) -> tuple[dict, dict, dict]:
    """The plain script and each of embx's `arms`, trained once (seed None: each one's default seed, 42).

    With `resume`, a model an earlier invocation finished in `work` (the plain script's result file written after
    its model, an arm's store holding an ok run of the same spec) is used again, not retrained; its seconds are
    recorded as "reused".

    Returns:
        (model folders by arm, plain included; embx's runs as `embx show --json` gives them; seconds by command)

    """
    work.mkdir(parents=True, exist_ok=True)
    peer_json, peer_model = work / "plain.json", work / "plain-model"
    seeded = ["--seed", str(seed)] if seed is not None else []
    plain_seconds = "reused" if resume and peer_json.exists() else None
    plain_seconds = plain_seconds or _run(
        [
            sys.executable,
            str(ROOT / "bench" / "peer_st.py"),
            str(folder),
            "--out",
            str(peer_json),
            "--save-model",
            str(peer_model),
            "--epochs",
            str(PLAIN["epochs"]),
            "--batch-size",
            str(PLAIN["batch_size"]),
            "--lr",
            str(PLAIN["lr"]),
            *seeded,
        ],
        work / "plain.log",
    )
    runs, seconds = {}, {"plain_command": plain_seconds}
    for arm in arms:
        spec, db = work / f"{arm}.yaml", work / f"{arm}.duckdb"
        text = f"name: recipe-{name}-{arm}\ndata:\n  path: {folder}\n" + ARMS[arm]
        sets = ["--set", f"output.dir={work / 'runs'}"] + (["--set", f"train.seed={seed}"] if seed is not None else [])
        done = resume and spec.exists() and spec.read_text() == text and db.exists()
        listed = _json(_embx("ls", "--db", str(db), "--json")) if done else []
        if listed and listed[0]["status"] == "ok":
            seconds[f"{arm}_command"] = "reused"
        else:
            db.unlink(missing_ok=True)
            spec.write_text(text)
            seconds[f"{arm}_command"] = _run(_embx("run", str(spec), "--db", str(db), *sets), work / f"{arm}.log")
            listed = _json(_embx("ls", "--db", str(db), "--json"))
        runs[arm] = _json(_embx("show", listed[0]["run_id"], "--db", str(db), "--json"))
    models = {"plain": str(peer_model)} | {arm: run["info"]["saved_model"]["path"] for arm, run in runs.items()}
    return models, runs, seconds


def compare(
    name: str, folder: Path, work: Path, *, arms: list[str], seeds: list[int] | None = None, resume: bool = False
) -> dict:
    """The plain script and embx's `arms` on one dataset folder; returns its row.

    With `seeds`, every arm (the plain script too) is trained once per seed (its own folder under `work`), each
    query's NDCG@10 is averaged over the seeds, and the paired tests compare those averages: the recipes' expected
    difference, not one draw of each.
    """
    from runner.stats import paired_test

    trained = []
    for seed in seeds or [None]:
        where = work if seed is None else work / f"seed{seed}"
        models, runs, seconds = _train(name, folder, where, arms=arms, seed=seed, resume=resume)
        scores = per_query_ndcg(({"base": "all-MiniLM-L6-v2"} if not trained else {}) | models, folder)
        trained.append((runs, scores, seconds))

    def each(values: list) -> Any:  # one value per seed, or the one value without seeds
        return values if seeds else values[0]

    base = trained[0][1]["base"]
    qids = sorted(base)
    column = {"base": [base[q] for q in qids]}
    for arm in ["plain", *arms]:
        column[arm] = [sum(scores[arm][q] for _, scores, _ in trained) / len(trained) for q in qids]
    mean = {arm: round(sum(values) / len(values), 4) for arm, values in column.items()}
    row: dict = {"dataset": name, "test_ndcg@10": mean}
    if seeds:
        row["seeds"] = seeds
        row["test_ndcg@10_by_seed"] = {
            arm: [round(sum(scores[arm].values()) / len(scores[arm]), 4) for _, scores, _ in trained]
            for arm in ["plain", *arms]
        }
    for arm in arms:
        vs_plain = paired_test(column["plain"], column[arm])
        arm_runs = [runs[arm] for runs, _, _ in trained]
        devs = [run["metrics_by_split"]["dev"]["native"] for run in arm_runs]
        info = arm_runs[0]["info"]
        row[arm] = {
            "minus_plain": round(vs_plain["mean_diff"], 4),
            "ci": [round(vs_plain["ci_low"], 4), round(vs_plain["ci_high"], 4)],
            "p": round(vs_plain["p_value"], 4),
            "goal_met": vs_plain["mean_diff"] >= 0.02,
            "dev_ndcg@10": each(
                [{"base": round(d["base"]["ndcg@10"], 4), "tuned": round(d["tuned"]["ndcg@10"], 4)} for d in devs]
            ),
            "dev_not_worse": all(d["tuned"]["ndcg@10"] >= d["base"]["ndcg@10"] for d in devs),
            "recipe": {field: choice["value"] for field, choice in info.get("recipe", {}).items()},
            "learning_rate": info["train"].get("learning_rate"),
            "lr_probe": info.get("lr_probe"),
            "epochs_run": each([run["info"]["train"]["epochs_run"] for run in arm_runs]),
            "best_epoch": each([run["info"]["train"]["best_epoch"] for run in arm_runs]),
        }
    for arm in sorted(set(arms) - {"auto"}) if "auto" in arms else ():  # each arm's delta to the default recipe
        gain = paired_test(column["auto"], column[arm])
        row[f"{arm}_minus_auto"] = {
            "delta": round(gain["mean_diff"], 4),
            "ci": [round(gain["ci_low"], 4), round(gain["ci_high"], 4)],
            "p": round(gain["p_value"], 4),
        }
    row["seconds"] = each([seconds for _, _, seconds in trained])
    return row


ARMS = {
    "auto": "",
    "probe": "train:\n  lr_probe: {}\n",
    "adapter": "train:\n  query_adapter: {}\n",
    "long": "train:\n  epochs: 10\n",
    "symmetric": "train:\n  directions: [query_to_doc, doc_to_query]\n  partition_mode: per_direction\n",
    "gte": "train:\n  directions: [query_to_doc, query_to_query, doc_to_query, doc_to_doc]\n",
    "hardness": "train:\n  hardness_mode: hard_negatives\n  hardness_strength: 5\n",
    "forward": "train:\n  directions: [query_to_doc]\n",
}
"""embx's arms: the spec that names only the data, the same with the learning-rate probe (train.lr_probe), and
the same with a query-side adapter over the frozen base model instead of fine-tuning (train.query_adapter), and
the same allowed 10 epochs instead of the recipe's 3 (early stopping still ends it at the first epoch that does not
improve dev); and three losses over the same mined negatives: the symmetric InfoNCE (each passage must also find
its query: directions query_to_doc and doc_to_query, one softmax each), GTE's improved contrastive loss (the other
queries and passages join the softmax) and EmbeddingGemma's hardness weighting of the mined negatives (strength 5).
`recipe: auto` has trained the symmetric loss since these arms measured it, so auto is now the symmetric arm and
hardness weights negatives over it; forward is the recipe before (query_to_doc alone), as auto was measured in the
result files before recipe_arms_*."""


def _json(command: list[str]):
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    """Cut the datasets, run both arms on each, write the result file and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument(
        "--train", type=int, nargs="+", default=[1000], help="training pairs of each large set (several: a row each)"
    )
    parser.add_argument("--dev", type=int, default=100)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--corpus", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--nested", action="store_true", help="nested training sets, dev and test the same at every --train"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="train every arm once per seed; scores averaged per query"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/embx-recipe-vs-plain"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arms", nargs="+", default=["auto"], choices=list(ARMS), help="embx's arms (see ARMS)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="use again the models an earlier invocation with the same --workdir and cut arguments finished",
    )
    args = parser.parse_args()
    rows, sizes = [], {}
    for name in args.datasets:
        for train in args.train if name != "demo" else [None]:  # the demo is used whole
            folder, key, work = DATASETS[name], name, args.workdir / name
            if train is not None:
                if len(args.train) > 1:  # a comparison across training sizes: a row for each
                    key, work = f"{name}-n{train}", work / str(train)
                cut = work / "data"
                sizes[key] = subset(
                    folder,
                    cut,
                    train=train,
                    dev=args.dev,
                    test=args.test,
                    corpus=args.corpus,
                    seed=args.seed,
                    nested=args.nested,
                )
                folder = cut
            rows.append(compare(key, folder.resolve(), work, arms=args.arms, seeds=args.seeds, resume=args.resume))
            print(json.dumps(rows[-1]), flush=True)
            result = {
                "command": "python bench/recipe_vs_plain.py " + " ".join(sys.argv[1:]),
                "machine": cpu_info(),
                "plain_settings": PLAIN,
                "sizes": sizes,
                "rows": rows,
                "complete": len(rows) == sum(1 if n == "demo" else len(args.train) for n in args.datasets),
            }
            tmp = args.out.with_suffix(".partial")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            tmp.replace(args.out)  # after every row, whole: an interrupted invocation keeps the rows it finished
    arms = args.arms
    print("| data | base | plain script | " + " | ".join(f"embx {a} | {a} - plain [95% CI], p" for a in arms) + " |")
    print("|---|---|---|" + "---|---|" * len(arms))
    for r in rows:
        t = r["test_ndcg@10"]
        cells = [
            f"{t[a]} | {r[a]['minus_plain']:+.4f} [{r[a]['ci'][0]:+.4f}, {r[a]['ci'][1]:+.4f}], {r[a]['p']}"
            for a in arms
        ]
        print(f"| {r['dataset']} | {t['base']} | {t['plain']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
