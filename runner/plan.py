"""`embx plan` (= `embx run --dry-run`): what a run would do and about how long it would take, before it starts.

The variants that would run (and those already done in the store), the data sizes after splitting, the steps
per epoch, and a time estimate per stage from throughput measured on this machine: a short probe (encoding a
few passages, two training steps) whose figures are cached under ``~/.cache/embx/throughput.json`` by model,
device, precision and batch shape, so a second plan answers at once.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import store
from runner.memo import Memo, content_key, model_key

if TYPE_CHECKING:
    from runner.spec import LoadedSpec, Spec

PROBE_TEXTS = 64
PROBE_STEPS = 2
PROBE_BATCH = 8
"""Examples per probe step: the rate per example hardly depends on the batch size on a CPU, and a GPU is fast."""


@dataclass
class PlannedRun:
    """One variant: done already, or to run with its sizes and estimated seconds per stage."""

    label: str
    repeat: int
    done: str | None = None
    pairs: int | None = None
    steps_per_epoch: int | None = None
    epochs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Plan:
    """What `embx run` would do."""

    experiment: str
    device: str
    sizes: dict[str, Any]
    runs: list[PlannedRun]
    throughput: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        """Estimated seconds of the runs still to do."""
        return sum(sum(r.seconds.values()) for r in self.runs if r.done is None)


def cache_file() -> Path:
    """Where probe figures are kept (``$XDG_CACHE_HOME/embx`` or ``~/.cache/embx``)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "embx" / "throughput.json"


def make_plan(loaded: LoadedSpec, db: str | Path, *, force: bool = False) -> Plan:
    """Plan every variant of a spec: sizes, steps, done or not, estimated seconds per stage.

    Loads the base model and the data (documents are chunked and given queries, except by an LLM) and probes
    throughput when no cached figure fits; trains nothing and writes nothing to the store.
    """
    from runner.ablate import expand
    from runner.device import describe_device, pick_device
    from runner.models import load_model
    from runner.training_set import TrainingSet

    spec, device = loaded.spec, pick_device()
    variants = expand(spec)
    started = time.perf_counter()
    model = load_model(spec.model, device)
    load_seconds = time.perf_counter() - started
    memo = Memo()
    out = Plan(spec.name, describe_device(device), {}, [], {})
    if spec.data.source == "documents" and spec.queries.generator == "llm":
        out.notes.append("queries come from an LLM: sizes are counted by `embx prepare`, which asks for them")
        training = None
    else:
        training = TrainingSet.load(spec, model=model, memo=memo)
        data, splits = training.data, spec.data.splits
        out.sizes = {"corpus": len(data.corpus), "train pairs": len(data.pairs(splits.train, None, spec.data.seed))}
        out.sizes[f"{splits.test} queries"] = len(data.split(splits.test))
        if splits.dev:
            out.sizes[f"{splits.dev} queries"] = len(data.split(splits.dev))
    probe = _throughput(spec, model, device=device, training=training)
    out.throughput = {**probe, "load_model_seconds": round(load_seconds, 1)}
    baseline_done = False
    for variant in variants:
        hashes = (variant.spec.spec_hash(), variant.spec.legacy_spec_hash())
        planned = PlannedRun(variant.label, variant.repeat, done=None if force else store.find_ok_run(db, *hashes))
        out.runs.append(planned)
        if planned.done or training is None:
            continue
        _estimate(planned, variant.spec, out.sizes, probe, load_seconds, with_baseline=not baseline_done)
        baseline_done = True
    return out


def _estimate(
    run: PlannedRun, spec: Spec, sizes: dict[str, Any], probe: dict[str, Any], load: float, *, with_baseline: bool
) -> None:
    """Fill a run's sizes and seconds per stage from the data sizes and the probed rates."""
    pairs = sizes["train pairs"] if spec.data.limit is None else min(spec.data.limit, sizes["train pairs"])
    run.pairs, run.epochs = pairs, spec.train.epochs
    run.steps_per_epoch = math.ceil(pairs / spec.train.batch_size)  # about: batches never hold a text twice
    per_example = _texts_per_example(spec)
    samples_per_s = probe["train_samples_per_s"] * probe["texts_per_example"] / per_example
    encode = probe["encode_texts_per_s"]
    corpus, test = sizes["corpus"], sizes.get(f"{spec.data.splits.test} queries", 0)
    dev = sizes.get(f"{spec.data.splits.dev} queries", 0) if spec.data.splits.dev else 0
    run.seconds["load_model"] = load
    if with_baseline:  # the base model's scores are shared by the variants of one experiment
        run.seconds["eval_base"] = (corpus + test + dev) / encode
    run.seconds["train"] = run.epochs * pairs / samples_per_s
    if dev:
        run.seconds["dev_eval"] = run.epochs * (corpus + dev) / encode
    run.seconds["eval_tuned"] = (corpus + test + dev) / encode


def _texts_per_example(spec: Spec) -> int:
    """Texts one training example encodes: query, positive and its negatives."""
    return 2 + (spec.negatives.per_query if spec.negatives.mode != "in-batch" else 0)


def _throughput(spec: Spec, model, *, device: str, training) -> dict[str, Any]:
    """Encoding and training rates for this model, device and batch shape: cached, else probed (a few seconds)."""
    from runner.device import describe_device, resolve_precision

    precision = resolve_precision(spec.train.precision, device)
    key = content_key(
        model_key(spec) or spec.model.base,
        describe_device(device),
        precision,
        spec.model.max_seq_length,
        min(spec.train.batch_size, PROBE_BATCH),
        _texts_per_example(spec),
    )
    path = cache_file()
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if key in cached:
        return {**cached[key], "cached": True}
    if training is None:
        return {"encode_texts_per_s": None, "train_samples_per_s": None, "cached": False}
    figures = _probe(spec, model, training=training, precision=precision)
    cached[key] = figures
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cached, indent=1))
    return {**figures, "cached": False}


def _probe(spec: Spec, model, *, training, precision: str) -> dict[str, Any]:
    """Time encoding PROBE_TEXTS passages and PROBE_STEPS training steps (weights are put back after)."""
    import torch
    from sentence_transformers.sentence_transformer import losses

    from runner.evaluate import encode
    from runner.models import weights_copy

    texts = list(training.data.corpus.values())[:PROBE_TEXTS]
    probe = {"task": "document", "normalize": True, "description": "probe", "precision": "auto"}
    encode(model, texts[:8], batch_size=spec.eval.batch_size, **probe)
    started = time.perf_counter()
    encode(model, texts, batch_size=spec.eval.batch_size, **probe)
    encode_rate = len(texts) / (time.perf_counter() - started)
    per_example = _texts_per_example(spec)
    corpus = list(training.data.corpus.values())
    batch = [
        [pair.query, pair.positive, *[corpus[(i + k) % len(corpus)] for k in range(1, per_example - 1)]]
        for i, pair in enumerate(training.pairs[: min(spec.train.batch_size, PROBE_BATCH)])
    ]
    saved = weights_copy(model)
    loss_fn = losses.MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model.train()
    seconds = 0.0
    for step in range(PROBE_STEPS + 1):  # the first step warms up and is not timed
        started = time.perf_counter()
        features = [model.tokenize([row[c] for row in batch]) for c in range(per_example)]
        features = [{k: v.to(model.device) if hasattr(v, "to") else v for k, v in f.items()} for f in features]
        with torch.autocast(model.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(features, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            seconds += time.perf_counter() - started
    model.eval()
    model.load_state_dict(saved)
    return {
        "encode_texts_per_s": round(encode_rate, 1),
        "train_samples_per_s": round(PROBE_STEPS * len(batch) / seconds, 2),
        "texts_per_example": per_example,
        "precision": precision,
    }
