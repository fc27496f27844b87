"""One training process of a torchrun job: ``python -m torch.distributed.run ... -m runner.train.worker JOB``.

Every rank loads the base model and the pairs from the job folder and runs the spec's backend; the trainer
(transformers' Trainer under both backends) sets up DistributedDataParallel from torchrun's environment. The
dev split is scored on rank 0 and the metrics are broadcast, so early stopping decides the same on every rank.
Rank 0 saves the tuned model and the outcome; a failing rank writes its traceback to ``error-rank<R>.txt``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger("runner.train.worker")


def _dev_scorer(job: Path, spec, rank: int):
    """Dev scoring for the trainer: the run's own dev evaluator, run on rank 0 and broadcast to every rank.

    Where the trainer itself calls the scorer on rank 0 only and shares the metrics (sentence-transformers 6),
    the scorer does not broadcast: the other ranks are then serving rank 0's encode calls, not calling it.
    """
    if not (job / "dev.json").exists():
        return None
    import torch.distributed as dist

    from runner.scoring import RetrievalEvaluator
    from runner.train.sentence_transformers import scores_dev_on_rank_zero_only

    shared_by_trainer = scores_dev_on_rank_zero_only(spec)

    evaluator = RetrievalEvaluator.from_json(json.loads((job / "dev.json").read_text())) if rank == 0 else None

    def score(model) -> dict[str, float]:
        metrics = evaluator.metrics(model) if evaluator is not None else None
        if dist.is_available() and dist.is_initialized() and not shared_by_trainer:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics

    return score


def _gather(obj):
    """Every rank's `obj`, in rank order (just [obj] without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def train(job: Path) -> None:
    """Run this rank's part of the job; rank 0 writes ``tuned/`` and ``outcome.json``."""
    import torch

    from runner.data.types import Pair
    from runner.models import load_model
    from runner.spec import Spec
    from runner.train import get_backend
    from runner.train.base import dist_env

    rank, local_rank, world = dist_env()
    if os.environ.get("EMBX_FAULT_RANK") == str(rank):
        os.kill(os.getpid(), signal.SIGKILL)  # a drill: this rank dies as if killed by the OOM killer
    spec = Spec.model_validate_json((job / "spec.json").read_text())
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    model = load_model(spec.model, device, location=str(job / "base"))
    with (job / "pairs.jsonl").open(encoding="utf-8") as f:
        pairs = [Pair(**json.loads(line)) for line in f]
    backend = get_backend(spec.train.backend)
    outcome = backend.train(model, pairs, spec, _dev_scorer(job, spec, rank), job / "work")
    ranks = _gather({"rank": rank, "steps": outcome.steps, "device": str(outcome.model.device)})
    if rank != 0:
        return
    outcome.model.save(str(job / "tuned"))
    record = asdict(outcome)
    record.pop("model")
    record.pop("adapter")  # LoRA adapters are folded into the saved model; the adapter alone is not sent back
    per_device = spec.train.batch_size
    record["details"] = {
        **record["details"],
        "world_size": world,
        "per_device_batch": per_device,
        "global_batch": per_device * world,
        "cross_device_negatives": spec.train.cross_device_negatives and world > 1,
        "ranks": ranks,
    }
    tmp = job / "outcome.json.tmp"
    tmp.write_text(json.dumps(record))
    tmp.rename(job / "outcome.json")


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``runner.train.worker JOB``."""
    args = sys.argv[1:] if argv is None else argv
    job = Path(args[0])
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("runner").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        train(job)
    except BaseException as exc:
        (job / f"error-rank{rank}.txt").write_text(
            "".join(traceback.format_exception(exc)) + f"{type(exc).__name__}: {exc}\n"
        )
        raise
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Tear the process group down before the interpreter does.

    Left to interpreter exit, gloo's threads can abort the process ("terminate called without an active
    exception", SIGABRT) after its work is done: torchrun then reports the rank failed and the other node's agent
    waits for it until its rendezvous times out.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
