"""Training and evaluation speed: the plain sentence-transformers peer and embx, side by side, in one invocation.

    python bench/speed.py ../shared/data/financial_qa_10k --out bench/results/speed_financial_cpu.json
    python bench/speed.py DATA --device cuda --model DIR --out bench/results/speed_financial_h100.json \
        --embx-set train.compile=true          # a variant of embx's spec (repeatable, dotted keys)
    python bench/speed.py DATA --device cpu --train-limit 64 --corpus-limit 300 --batch-size 16 \
        --max-seq-length 64 --out /tmp/speed_smoke.json    # a smoke run

The parent process reads the BEIR folder DATA once and writes the workload (training pairs, test queries, corpus,
qrels, settings) to a temporary file; then it runs each side in its own Python subprocess (``--side peer``, then
``--side embx``), so peak memory is per side and neither side warms caches for the other. Both sides get exactly
the same pairs, corpus, seed (42) and settings. The parent merges the side results, computes throughput, model
FLOP utilisation (MFU) and the ratios embx / peer, and writes ``--out`` (JSON) and a Markdown table beside it
(same name, ``.md``), which it also prints. The JSON is rewritten after each side, so a run cut short keeps what
finished.

Sides:

- peer: the plain recipe of bench/peer_st.py: SentenceTransformer, SentenceTransformerTrainer with
  MultipleNegativesRankingLoss and the NO_DUPLICATES batch sampler (warmup_ratio 0.1, seed 42, bf16 on CUDA,
  save_strategy no, logging_steps 10, report_to none), evaluated with sentence-transformers'
  InformationRetrievalEvaluator.
- embx: embx's library code as ``embx run`` calls it (not the CLI): a ``runner.spec.Spec`` built from a dict
  (``--embx-set KEY=VALUE`` applied before validation), ``runner.models.load_model``,
  ``runner.train.get_backend(spec.train.backend).train(...)`` and ``runner.evaluate.evaluate`` over a
  ``CorpusIndex``; the spec decides precision and evaluation batch size.

Data: training pairs are, for each query of qrels/train sorted by id, each positive document sorted by id (as
bench/peer_st.py), the first ``--train-limit`` of them if given. The test is qrels/test over the whole corpus, or
with ``--corpus-limit N`` over every test positive plus the first N other documents, and with ``--query-limit N``
for the first N test queries only (smoke runs).

What is measured, per side (seconds by ``time.perf_counter``, CUDA synchronised before a clock is read):

- import seconds: importing torch, sentence-transformers and the side's training/eval modules;
- wall seconds: from before the model is loaded to the end of the tuned evaluation (load, base evaluation,
  training, tuned evaluation); process seconds: the whole subprocess as the parent sees it (interpreter start
  and imports included);
- train seconds: the whole training call (trainer or backend set-up, dataset, tokenisation and the loop), the
  time a user waits; the loop alone (``trainer.train()``, or the backend's TrainOutcome.seconds) is recorded too;
- training samples = pairs x epochs; samples/s and tokens/s over train seconds, where tokens are the real
  (non-padding) tokens of every training text, query and positive, tokenised once with the model's tokenizer,
  truncated to max_seq_length with special tokens included, x epochs (the same count for both sides);
- eval texts/s = (test queries + corpus documents encoded) / seconds of the whole evaluation (encoding,
  ranking, metrics), for the base and the tuned model separately;
- peak memory: CUDA ``torch.cuda.max_memory_allocated`` (whole side, and training alone); CPU
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` in MiB (whole side);
- NDCG@10, Recall@10 (also Recall@1, MRR@10, MAP@100) of the base and the tuned model on the test split.

MFU of training = model FLOPs / train seconds / the device's peak FLOP/s, with

    model FLOPs = epochs x (6 x N x T + 12 x layers x hidden x sum(L^2))

where N is the transformer's non-embedding parameter count, T the real training tokens of one epoch and L each
training text's real length: 6 N T is the forward (2 N T) and backward (4 N T) matrix products of the weights,
and 12 x layers x hidden x L^2 the forward (QK^T and AV: 4 x hidden x L^2 per layer) and backward (twice that)
of attention over a sequence of L tokens. Embedding look-ups, the loss and padding are not counted (padding is
work the model does but not useful work). Eval MFU likewise uses 2 N T + 4 x layers x hidden x sum(L^2) per
evaluation, against the device's best peak (the half-precision one on CUDA, the higher measured one on CPU).

Peak FLOP/s: on CUDA, dense bf16/fp16 tensor-core peaks from a table by device name (H100 SXM 989e12,
H100 PCIe 756e12, H200 989e12, A100 312e12, L4 121e12); a device not in the table, or fp32 training, gets a
measured peak (the best of timed matmuls). On CPU the peak is measured: 2048x2048 matmuls in fp32 and in bf16
with torch's thread count, timed for about a second each, best rate; each side's MFU uses the peak of the dtype
it trained in (embx: TrainOutcome.precision; peer: fp32 on CPU, bf16 on CUDA). The JSON records each peak and
how it was obtained, and under ``machine`` the CPU model, core count and AMX/bf16 flags (bench/machine.py): bf16
autocast, and so embx's precision: auto, pays off on CPU only with AMX.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):  # peer_st (bench/) and the working tree's runner package
    if _path not in sys.path:
        sys.path.insert(0, _path)

from machine import AVX2_ONLY, cpu_info  # noqa: E402
from peer_st import peer_evaluator, peer_trainer, read_beir  # noqa: E402

SEED = 42
SIDES = ("peer", "embx")
METRICS = ["recall@1", "recall@10", "ndcg@10", "mrr@10", "map@100"]
GPU_PEAKS: list[tuple[str, float]] = [
    # (regular expression on torch.cuda.get_device_name, dense bf16/fp16 tensor-core FLOP/s)
    (r"H100.*PCIe", 756e12),
    (r"H100 (80GB HBM3|SXM)", 989e12),
    (r"H200", 989e12),
    (r"A100", 312e12),
    (r"\bL4\b", 121e12),
]
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def log(message: str) -> None:
    """Print one progress line, flushed (the sides' lines interleave with the parent's)."""
    print(f"[speed] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ workload


def build_workload(
    data: Path, train_limit: int | None, corpus_limit: int | None, query_limit: int | None = None
) -> dict[str, Any]:
    """Training pairs, test queries, corpus and qrels, the same for both sides.

    Args:
        data: BEIR folder (corpus.jsonl, queries.jsonl, qrels/{train,test}.tsv).
        train_limit: Keep the first this many pairs (None: all).
        corpus_limit: Keep every test positive plus the first this many other documents (None: the whole corpus).
        query_limit: Keep the first this many test queries by id (None: all).

    Returns:
        ``pairs`` ([query, positive, query id, doc id]), ``queries`` (test query id -> text), ``corpus``
        (doc id -> text) and ``qrels`` (test query id -> sorted positive doc ids).

    """
    corpus, queries, qrels = read_beir(data)
    train = qrels("train")
    pairs = [[queries[q], corpus[d], q, d] for q in sorted(train) for d in sorted(train[q])]
    if train_limit is not None:
        pairs = pairs[:train_limit]
    test = qrels("test")
    if query_limit is not None:
        test = {q: test[q] for q in sorted(test)[:query_limit]}
    if corpus_limit is not None:
        positives = set().union(*test.values())
        others = [d for d in corpus if d not in positives][:corpus_limit]
        keep = positives | set(others)
        corpus = {d: text for d, text in corpus.items() if d in keep}
    return {
        "pairs": pairs,
        "queries": {q: queries[q] for q in sorted(test)},
        "corpus": corpus,
        "qrels": {q: sorted(docs) for q, docs in sorted(test.items())},
    }


def count_tokens(model_dir: str, texts: list[str], max_seq_length: int) -> dict[str, int]:
    """Real tokens of `texts` with the model's tokenizer (truncated to max_seq_length, special tokens included).

    Returns:
        ``tokens`` (sum of lengths), ``squares`` (sum of squared lengths, for attention FLOPs), ``texts``.

    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths: list[int] = []
    for start in range(0, len(texts), 4096):
        encoded = tokenizer(texts[start : start + 4096], truncation=True, max_length=max_seq_length)
        lengths += [len(ids) for ids in encoded["input_ids"]]
    return {"tokens": sum(lengths), "squares": sum(n * n for n in lengths), "texts": len(lengths)}


# ------------------------------------------------------------------------------------------------ machine


def machine_info(device: str) -> dict[str, Any]:
    """Device name, CPU (model, count, AMX/bf16 flags: see bench/machine.py), thread count, Python and platform."""
    import torch

    cpu = cpu_info()
    info: dict[str, Any] = {
        "device": device,
        "cpu": cpu["cpu"],
        "cpu_count": cpu["cpu_count"],
        "amx_bf16": cpu["amx_bf16"],
        "avx512_bf16": cpu["avx512_bf16"],
        "cpu_flags": cpu["flags"],
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
        info["device_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        amx = {True: "AMX bf16", False: "no AMX", None: "AMX unknown"}[cpu["amx_bf16"]]
        info["device_name"] = f"{info['cpu']} ({amx}, {info['torch_threads']} torch threads)"
    return info


def git_state() -> dict[str, Any]:
    """Commit and count of changed files of the working tree (empty where there is no git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": head.stdout.strip(), "changed_files": len(status.stdout.splitlines())}


def sync(device: str) -> None:
    """Wait for queued CUDA work before a clock is read."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def measure_matmul(device: str, dtype: str, size: int, seconds: float = 1.0) -> float:
    """Best FLOP/s of square matmuls of `size` in `dtype` on `device`, over three timed windows."""
    import torch

    torch_dtype = getattr(torch, DTYPES[dtype])
    a = torch.randn(size, size, device=device).to(torch_dtype)
    b = torch.randn(size, size, device=device).to(torch_dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = 0.0
    for _ in range(3):
        reps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 3:
            for _ in range(10 if device == "cuda" else 1):
                a @ b
                reps += 1
            sync(device)
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - started))
    return best


def peak_flops(device: str, dtype: str, device_name: str) -> dict[str, Any]:
    """The device's peak FLOP/s for `dtype` (fp32, bf16, fp16) and how it was obtained."""
    if device == "cuda" and dtype in ("bf16", "fp16"):
        for pattern, flops in GPU_PEAKS:
            if re.search(pattern, device_name):
                return {"flops": flops, "how": f"table: dense {dtype} tensor-core peak of {device_name}"}
    size = 8192 if device == "cuda" else 2048
    return {
        "flops": measure_matmul(device, dtype, size),
        "how": f"measured: best rate of {size}x{size} {dtype} matmuls on {device}",
    }


# ------------------------------------------------------------------------------------------------ sides


def embx_spec_dict(settings: dict[str, Any]) -> dict[str, Any]:
    """The embx spec (as a plain mapping) for the benchmark settings, with ``--embx-set`` overrides applied."""
    from runner.spec import apply_override, parse_override

    spec: dict[str, Any] = {
        "name": "speed",
        "model": {"base": settings["model"], "max_seq_length": settings["max_seq_length"]},
        "data": {
            "source": "beir",
            "path": settings["data"],
            "splits": {"train": "train", "dev": None, "test": "test"},
        },
        "negatives": {"mode": "in-batch"},
        "train": {
            "epochs": settings["epochs"],
            "batch_size": settings["batch_size"],
            "learning_rate": settings["lr"],
            "warmup_ratio": 0.1,
            "seed": SEED,
            "early_stopping": None,
        },
        "output": {"embedding_cache": False},
    }
    for item in settings["embx_set"]:
        keys, value = parse_override(item)
        apply_override(spec, keys, value)
    return spec


def model_shape(model: Any) -> dict[str, Any]:
    """Parameter counts (all, non-embedding), layers, hidden size and weight dtype of a SentenceTransformer."""
    config = next(m.config for m in model.modules() if hasattr(getattr(m, "config", None), "hidden_size"))
    params = list(model.named_parameters())
    return {
        "params": sum(p.numel() for _, p in params),
        "params_non_embedding": sum(p.numel() for n, p in params if "embeddings" not in n.split(".")),
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "param_dtype": str(params[0][1].dtype).removeprefix("torch."),
    }


def memory(device: str) -> dict[str, Any]:
    """Peak memory of this process so far, in MiB."""
    out: dict[str, Any] = {"rss_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device == "cuda":
        import torch

        out["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["cuda_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    out["peak_mib"] = out.get("cuda_peak_allocated_mib", out["rss_peak_mib"])
    out["peak_kind"] = "torch.cuda.max_memory_allocated" if device == "cuda" else "ru_maxrss"
    return out


def versions() -> dict[str, str]:
    """Versions of the libraries imported by this process."""
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "sentence_transformers", "tokenizers", "datasets", "accelerate"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "?")
    return out


def run_peer(work: dict[str, Any], device: str) -> dict[str, Any]:
    """The plain sentence-transformers recipe (bench/peer_st.py): load, evaluate, train, evaluate."""
    s = work["settings"]
    started = time.perf_counter()
    # Imported up front (peer_trainer and peer_evaluator import them again for free), so the train and eval
    # seconds do not include importing them, as on the embx side.
    import datasets  # noqa: F401
    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer  # noqa: F401
    from sentence_transformers.sentence_transformer import evaluation, losses  # noqa: F401

    out: dict[str, Any] = {"import_seconds": time.perf_counter() - started}
    bf16 = device == "cuda"
    start = time.perf_counter()
    model = SentenceTransformer(s["model"], device=device)
    model.max_seq_length = s["max_seq_length"]
    out["model"] = model_shape(model)
    if out["model"]["param_dtype"] != "float32":  # a half-precision checkpoint must train on fp32 weights
        log(f"peer: weights loaded as {out['model']['param_dtype']}; cast to float32")
        model.float()
    sync(device)
    out["load_seconds"] = time.perf_counter() - start
    evaluator = peer_evaluator(
        work["queries"], work["corpus"], {q: set(docs) for q, docs in work["qrels"].items()}, s["eval_batch_size"]
    )

    def pick(m: dict[str, float]) -> dict[str, float]:
        return {k.removeprefix("test_cosine_"): float(v) for k, v in m.items() if k.startswith("test_cosine_")}

    def timed_eval(label: str) -> None:
        log(f"peer: evaluating the {label} model")
        t = time.perf_counter()
        out.setdefault("metrics", {})[label] = pick(evaluator(model))
        sync(device)
        out.setdefault("eval_seconds", {})[label] = time.perf_counter() - t

    timed_eval("base")
    pairs = work["pairs"]
    log(f"peer: training on {len(pairs)} pairs ({'bf16' if bf16 else 'fp32'})")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="speed-peer-") as output_dir:
        t = time.perf_counter()
        trainer = peer_trainer(model, pairs, output_dir, s["epochs"], s["batch_size"], s["lr"], bf16, device)
        loop = time.perf_counter()
        trainer.train()
        sync(device)
        out["train_loop_seconds"] = time.perf_counter() - loop
        out["train_seconds"] = time.perf_counter() - t
    out["train_precision"] = "bf16" if bf16 else "fp32"
    out["steps"] = trainer.state.global_step
    if device == "cuda":
        out["train_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    timed_eval("tuned")
    out["wall_seconds"] = time.perf_counter() - start
    return out


def run_embx(work: dict[str, Any], device: str) -> dict[str, Any]:
    """embx's library code as ``embx run`` uses it: spec, load_model, backend.train, evaluate.

    The libraries the peer imports up front (datasets, the trainer, the losses) are imported here too, so neither
    side's train seconds include importing them (the backend imports them lazily).
    """
    s = work["settings"]
    started = time.perf_counter()
    import datasets  # noqa: F401
    import torch
    from sentence_transformers import SentenceTransformerTrainer  # noqa: F401
    from sentence_transformers.sentence_transformer import losses  # noqa: F401

    from runner.data.types import Pair
    from runner.evaluate import CorpusIndex, evaluate
    from runner.models import load_model
    from runner.spec import Spec
    from runner.train import get_backend

    out: dict[str, Any] = {"import_seconds": time.perf_counter() - started}
    spec = Spec.model_validate(embx_spec_dict(s))
    out["spec"] = spec.model_dump(mode="json")
    start = time.perf_counter()
    model = load_model(spec.model, device=device)
    out["model"] = model_shape(model)
    sync(device)
    out["load_seconds"] = time.perf_counter() - start
    index = CorpusIndex(work["corpus"])
    qrels = {q: dict.fromkeys(docs, 1) for q, docs in work["qrels"].items()}
    # The spec decides evaluation precision where this version of embx has the setting.
    out["eval_precision"] = spec.eval.precision
    out["eval_batch_size"] = spec.eval.batch_size

    def timed_eval(label: str, m: Any) -> None:
        log(f"embx: evaluating the {label} model")
        t = time.perf_counter()
        result = evaluate(
            m,
            label=label,
            index=index,
            queries=work["queries"],
            qrels=qrels,
            spec=spec.model,
            metrics=spec.eval.metrics,
            depth=spec.eval.depth,
            batch_size=spec.eval.batch_size,
            precision=spec.eval.precision,
        )
        sync(device)
        out.setdefault("eval_seconds", {})[label] = time.perf_counter() - t
        out.setdefault("metrics", {})[label] = {k: float(v) for k, v in result.metrics.items()}

    timed_eval("base", model)
    pairs = [Pair(q, p, query_id=qid, positive_id=did) for q, p, qid, did in work["pairs"]]
    backend = get_backend(spec.train.backend)
    log(f"embx: training on {len(pairs)} pairs (backend {spec.train.backend}, precision {spec.train.precision})")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="speed-embx-") as workdir:
        t = time.perf_counter()
        outcome = backend.train(model, pairs, spec, None, Path(workdir))
        sync(device)
        out["train_seconds"] = time.perf_counter() - t
    out["train_loop_seconds"] = outcome.seconds
    out["train_precision"] = outcome.precision
    out["steps"] = outcome.steps
    out["samples_reported"] = outcome.samples
    out["details"] = outcome.details
    out["notes"] = outcome.notes
    if device == "cuda":
        out["train_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    index.embeddings.pop("tuned", None)
    timed_eval("tuned", outcome.model)
    out["wall_seconds"] = time.perf_counter() - start
    return out


def side_main(name: str, workload: Path, out_path: Path) -> int:
    """Entry point of a side subprocess: run the side, write its JSON (an error too), return the exit code."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("runner").setLevel(logging.INFO)
    work = json.loads(workload.read_text())
    device = work["settings"]["device"]
    result: dict[str, Any] = {"side": name}
    try:
        result.update((run_peer if name == "peer" else run_embx)(work, device))
        result["ok"] = True
        code = 0
    except Exception as exc:  # the parent records the failure and goes on with the other side
        traceback.print_exc()
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        code = 1
    result["memory"] = memory(device)
    result["versions"] = versions()
    out_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return code


def run_side(name: str, workload: Path, folder: Path) -> dict[str, Any]:
    """Run one side in its own Python process; its result, with the process's wall time."""
    out_path = folder / f"{name}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--side", name, "--workload", str(workload)]
    command += ["--side-out", str(out_path)]
    log(f"--- side {name}")
    started = time.perf_counter()
    code = subprocess.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False).returncode
    seconds = time.perf_counter() - started
    result = json.loads(out_path.read_text()) if out_path.exists() else {"side": name, "ok": False}
    if code != 0 and result.get("ok", False) is not False:
        result["ok"] = False
    if code != 0:
        result.setdefault("error", f"exit code {code}")
    result["process_seconds"] = seconds
    log(f"side {name}: {'ok' if result.get('ok') else 'FAILED: ' + str(result.get('error'))} in {seconds:.1f} s")
    return result


# ------------------------------------------------------------------------------------------------ merging


def train_flops(shape: dict[str, Any], counts: dict[str, int], epochs: float) -> float:
    """Model FLOPs of training (see the module docstring)."""
    attention = 12 * shape["layers"] * shape["hidden"] * counts["squares"]
    return epochs * (6 * shape["params_non_embedding"] * counts["tokens"] + attention)


def eval_flops(shape: dict[str, Any], counts: dict[str, int]) -> float:
    """Model FLOPs of one evaluation's encoding (forward only)."""
    attention = 4 * shape["layers"] * shape["hidden"] * counts["squares"]
    return 2 * shape["params_non_embedding"] * counts["tokens"] + attention


def derive(side: dict[str, Any], workload: dict[str, Any], peaks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Throughput and MFU of a finished side."""
    if not side.get("ok"):
        return {}
    train_s = side["train_seconds"]
    samples = workload["samples"]
    flops = train_flops(side["model"], workload["train_counts"], workload["epochs"])
    out: dict[str, Any] = {
        "train_samples_per_s": samples / train_s,
        "train_tokens_per_s": workload["train_counts"]["tokens"] * workload["epochs"] / train_s,
        "train_loop_samples_per_s": samples / side["train_loop_seconds"],
        "train_flops": flops,
        "eval_texts_per_s": {k: workload["eval_texts"] / v for k, v in side["eval_seconds"].items()},
        "eval_tokens_per_s": {k: workload["eval_counts"]["tokens"] / v for k, v in side["eval_seconds"].items()},
    }
    peak = peaks.get(side["train_precision"])
    if peak:
        out["train_mfu"] = flops / train_s / peak["flops"]
        out["train_peak_flops"] = peak["flops"]
    best = max((p["flops"] for p in peaks.values()), default=None)
    if best:
        per_eval = eval_flops(side["model"], workload["eval_counts"])
        out["eval_mfu_vs_best_peak"] = {k: per_eval / v / best for k, v in side["eval_seconds"].items()}
    return out


def ratios(peer: dict[str, Any], embx: dict[str, Any]) -> dict[str, Any]:
    """embx / peer for speeds, times and memory; embx - peer for metrics."""
    if not (peer.get("ok") and embx.get("ok")):
        return {}
    p, e = peer["derived"], embx["derived"]
    out: dict[str, Any] = {
        "train_samples_per_s": e["train_samples_per_s"] / p["train_samples_per_s"],
        "train_tokens_per_s": e["train_tokens_per_s"] / p["train_tokens_per_s"],
        "eval_texts_per_s_base": e["eval_texts_per_s"]["base"] / p["eval_texts_per_s"]["base"],
        "eval_texts_per_s_tuned": e["eval_texts_per_s"]["tuned"] / p["eval_texts_per_s"]["tuned"],
        "train_seconds": embx["train_seconds"] / peer["train_seconds"],
        "wall_seconds": embx["wall_seconds"] / peer["wall_seconds"],
        "process_seconds": embx["process_seconds"] / peer["process_seconds"],
        "peak_memory": embx["memory"]["peak_mib"] / peer["memory"]["peak_mib"],
    }
    if "train_mfu" in p and "train_mfu" in e:
        out["train_mfu"] = e["train_mfu"] / p["train_mfu"]
    for stage in ("base", "tuned"):
        for metric in ("ndcg@10", "recall@10"):
            out[f"{metric}_{stage}_diff"] = embx["metrics"][stage][metric] - peer["metrics"][stage][metric]
    return out


def needed_peaks(device: str, sides: dict[str, dict[str, Any]], *, emulated: bool = False) -> set[str]:
    """Dtypes whose peak is needed: those the sides trained in (and fp32 and bf16 on CPU, for the record).

    Under `--avx2` only the sides' own: capped at AVX2, a bf16 matmul runs in software and takes minutes.
    """
    wanted = {s["train_precision"] for s in sides.values() if s.get("ok")}
    return wanted | ({"fp32", "bf16"} if device == "cpu" and not emulated else set())


def markdown(result: dict[str, Any]) -> str:
    """The short Markdown table of a result."""
    sides = result["sides"]
    peer, embx = sides.get("peer", {}), sides.get("embx", {})
    r = result.get("ratios", {})

    def value(side: dict[str, Any], path: str, fmt: str) -> str:
        node: Any = side
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                return "-"
            node = node[key]
        return format(node, fmt) if isinstance(node, (int, float)) else str(node)

    def ratio(key: str, fmt: str = ".2f", suffix: str = "x") -> str:
        return format(r[key], fmt) + suffix if key in r else "-"

    rows = [
        ("train samples/s", "derived.train_samples_per_s", ".1f", ratio("train_samples_per_s")),
        ("train tokens/s", "derived.train_tokens_per_s", ",.0f", ratio("train_tokens_per_s")),
        ("train MFU", "derived.train_mfu", ".2%", ratio("train_mfu")),
        ("train precision", "train_precision", "", ""),
        ("train seconds (whole call)", "train_seconds", ".1f", ratio("train_seconds")),
        ("peak memory MiB", "memory.peak_mib", ",.0f", ratio("peak_memory")),
        ("eval texts/s, base", "derived.eval_texts_per_s.base", ".1f", ratio("eval_texts_per_s_base")),
        ("eval texts/s, tuned", "derived.eval_texts_per_s.tuned", ".1f", ratio("eval_texts_per_s_tuned")),
        ("wall seconds (load to end)", "wall_seconds", ".1f", ratio("wall_seconds")),
        ("process seconds (with imports)", "process_seconds", ".1f", ratio("process_seconds")),
        ("NDCG@10 base", "metrics.base.ndcg@10", ".4f", ratio("ndcg@10_base_diff", "+.4f", "")),
        ("NDCG@10 tuned", "metrics.tuned.ndcg@10", ".4f", ratio("ndcg@10_tuned_diff", "+.4f", "")),
        ("Recall@10 base", "metrics.base.recall@10", ".4f", ratio("recall@10_base_diff", "+.4f", "")),
        ("Recall@10 tuned", "metrics.tuned.recall@10", ".4f", ratio("recall@10_tuned_diff", "+.4f", "")),
    ]
    s, w, m = result["settings"], result["workload"], result["machine"]
    lines = [
        f"### Speed: peer (plain sentence-transformers) vs embx on {m['device_name']}, {result['date'][:10]}",
        "",
        f"{w['pairs']} training pairs x {s['epochs']} epoch(s), batch {s['batch_size']}, max_seq_length "
        f"{s['max_seq_length']}, lr {s['lr']}; test {w['test_queries']} queries over {w['corpus_docs']} passages, "
        f"peer eval batch {s['eval_batch_size']}"
        + (f"; embx with {', '.join(s['embx_set'])}" if s["embx_set"] else "")
        + "."
        + (
            f" Estimate of an {result['emulated']['as']}: kernel libraries capped by "
            + ", ".join(f"{k}={v}" for k, v in result["emulated"]["env"].items())
            + "."
            if result.get("emulated")
            else ""
        ),
        "",
        "| measure | peer | embx | embx / peer |",
        "|---|---|---|---|",
    ]
    for label, path, fmt, rel in rows:
        lines.append(f"| {label} | {value(peer, path, fmt)} | {value(embx, path, fmt)} | {rel or ''} |")
    lines.append("")
    for name, side in sides.items():
        if not side.get("ok"):
            lines.append(f"Side {name} FAILED: {side.get('error')}")
    for dtype, peak in result.get("peaks", {}).items():
        lines.append(f"- peak {dtype}: {peak['flops'] / 1e12:.3g} TFLOP/s ({peak['how']})")
    v = result.get("versions", {})
    lines.append(f"- versions: {', '.join(f'{k} {v[k]}' for k in v)}")
    lines.append(
        "- NDCG/Recall last column: embx - peer; train MFU counts 6 N T + 12 layers hidden sum(L^2) "
        "FLOPs over the whole training call; peak memory: torch.cuda.max_memory_allocated on CUDA, "
        "ru_maxrss on CPU"
    )
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    """Write the JSON and the Markdown table beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(result))


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, nargs="?", help="BEIR folder")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--train-limit", type=int, default=None, help="first N training pairs")
    parser.add_argument("--corpus-limit", type=int, default=None, help="test positives + first N other passages")
    parser.add_argument("--query-limit", type=int, default=None, help="first N test queries (smoke runs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        default=32,
        help="the peer's InformationRetrievalEvaluator batch (its default 32); embx uses its spec's eval.batch_size "
        "(by device unless --embx-set eval.batch_size=N)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/speed_<device>.json)")
    parser.add_argument("--sides", default="peer,embx", help="comma-separated: peer, embx")
    parser.add_argument(
        "--embx-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override of embx's spec, dotted key (repeatable), e.g. train.compile=true",
    )
    parser.add_argument(
        "--avx2",
        action="store_true",
        help="estimate a CPU without AMX or AVX-512: both sides run with torch, oneDNN and MKL capped at AVX2 "
        "(bench/machine.py AVX2_ONLY) and embx in fp32, as precision: auto resolves there",
    )
    parser.add_argument(
        "--finish",
        type=Path,
        help="complete a result file whose sides finished but whose peaks, MFU and ratios did not (written back "
        "to it); the sides are not rerun",
    )
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--workload", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side is None and args.data is None and args.finish is None:
        parser.error("DATA (a BEIR folder) is required")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not sides or any(s not in SIDES for s in sides):
        parser.error(f"--sides takes a comma-separated subset of {', '.join(SIDES)}")
    args.sides = sides
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (parent), or one side of it (``--side``)."""
    args = parse_args(argv)
    if args.side is not None:
        return side_main(args.side, args.workload, args.side_out)
    if args.finish is not None:
        result = json.loads(args.finish.read_text())
        if result.get("emulated"):
            os.environ.update(result["emulated"]["env"])  # the peaks are measured under the same caps
        result["finished"] = {"by": "bench/speed.py --finish", "date": datetime.now(timezone.utc).isoformat()}
        return finish(result, args.finish)

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.model is None:
        from runner.models import resolve_model

        args.model = resolve_model("all-MiniLM-L6-v2").location
    out = args.out or ROOT / "bench" / "results" / f"speed_{device}.json"
    if args.avx2:  # the sides are subprocesses: they inherit the caps
        os.environ.update(AVX2_ONLY)
        args.embx_set = ["train.precision=fp32", "eval.precision=fp32", *args.embx_set]
    settings = {
        "data": str(args.data.resolve()),
        "model": str(Path(args.model).resolve()),
        "device": device,
        "train_limit": args.train_limit,
        "corpus_limit": args.corpus_limit,
        "query_limit": args.query_limit,
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "epochs": args.epochs,
        "lr": args.lr,
        "eval_batch_size": args.eval_batch_size,
        "seed": SEED,
        "embx_set": args.embx_set,
        "sides": args.sides,
    }
    if "embx" in args.sides:  # a bad --embx-set fails here, before any side runs
        from runner.spec import Spec

        try:
            Spec.model_validate(embx_spec_dict(settings))
        except Exception as exc:  # pydantic's ValidationError, or a --embx-set that does not parse
            raise SystemExit(f"the embx spec (with --embx-set) is invalid:\n{exc}") from None

    log(f"reading {args.data}")
    work = build_workload(args.data, args.train_limit, args.corpus_limit, args.query_limit)
    pairs = work["pairs"]
    train_counts = count_tokens(settings["model"], [t for p in pairs for t in p[:2]], args.max_seq_length)
    eval_texts = [*work["queries"].values(), *work["corpus"].values()]
    eval_counts = count_tokens(settings["model"], eval_texts, args.max_seq_length)
    workload = {
        "pairs": len(pairs),
        "epochs": args.epochs,
        "samples": len(pairs) * args.epochs,
        "train_counts": train_counts,
        "test_queries": len(work["queries"]),
        "corpus_docs": len(work["corpus"]),
        "eval_texts": len(eval_texts),
        "eval_counts": eval_counts,
    }
    log(
        f"{len(pairs)} pairs ({train_counts['tokens']:,} tokens), test {len(work['queries'])} queries over "
        f"{len(work['corpus'])} passages, device {device}"
    )
    result: dict[str, Any] = {
        "script": "bench/speed.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "emulated": {"as": "AVX2-only CPU, fp32", "env": AVX2_ONLY} if args.avx2 else None,
        "git": git_state(),
        "settings": settings,
        "workload": workload,
        "flops_formula": "train: epochs * (6 * N_non_embedding * tokens + 12 * layers * hidden * sum(L^2)); "
        "eval: 2 * N_non_embedding * tokens + 4 * layers * hidden * sum(L^2); real (non-padding) tokens",
        "sides": {},
    }
    with tempfile.TemporaryDirectory(prefix="speed-") as folder:
        path = Path(folder) / "workload.json"
        path.write_text(json.dumps({**work, "settings": settings}))
        for name in args.sides:
            side = result["sides"][name] = run_side(name, path, Path(folder))
            side["derived"] = derive(side, workload, {})  # MFU comes once the peaks are known
            write(result, out)  # a run cut short keeps the sides that finished

    return finish(result, out)


def finish(result: dict[str, Any], out: Path) -> int:
    """Measure the peaks, derive MFU and the ratios, write the JSON and the Markdown table (also `--finish`)."""
    device = result["settings"]["device"]
    log("measuring the device's peak FLOP/s")
    result["peaks"] = {
        dtype: peak_flops(device, dtype, result["machine"]["device_name"])
        for dtype in sorted(needed_peaks(device, result["sides"], emulated=bool(result.get("emulated"))))
    }
    for side in result["sides"].values():
        side["derived"] = derive(side, result["workload"], result["peaks"])
    first_ok = next((s for s in result["sides"].values() if s.get("ok")), None)
    result["versions"] = first_ok["versions"] if first_ok else {}
    if {"peer", "embx"} <= set(result["sides"]):
        result["ratios"] = ratios(result["sides"]["peer"], result["sides"]["embx"])
    write(result, out)
    table = markdown(result)
    print(table, flush=True)
    log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0 if all(s.get("ok") for s in result["sides"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
