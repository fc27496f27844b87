"""The FlagEmbedding backend: BAAI's own encoder-only embedder fine-tuning (runner, model and trainer classes).

embx writes the run's training pairs (negatives included) as FlagEmbedding JSONL ({query, pos, neg}), maps the
spec onto FlagEmbedding's three argument classes, parses them with the same ``HfArgumentParser`` its command
line uses (so types, choices and value checks are FlagEmbedding's own), and trains in-process with
:class:`EncoderOnlyEmbedderRunner`. The trained transformer is put back into the run's SentenceTransformer with
the pooling it was trained with, so embx evaluates it exactly like a model of the other backend.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from runner.device import resolve_precision
from runner.models import weights_copy
from runner.spec.external import DEFAULT_POOLING, parse_arguments, spec_values

# The argument checks live with the spec (its validators run them); re-exported here, where they were first.
from runner.spec.external import MANAGED as MANAGED
from runner.spec.external import _argv as _argv
from runner.spec.external import argument_names as argument_names
from runner.spec.external import check_arguments as check_arguments
from runner.train.base import (
    DevEval,
    LogHook,
    TrainOutcome,
    cross_device,
    ddp_backend,
    dist_env,
    log_callback,
    pin_mixed_precision,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from runner.data.types import Pair
    from runner.spec import Spec

log = logging.getLogger(__name__)


def _shared_base(model: SentenceTransformer, folder: Path, *, rank: int) -> Path:
    """The base transformer and tokenizer that FlagEmbedding loads, written for this rank.

    Once a process group is up, transformers 5 writes ``save_pretrained`` files on rank 0 only: rank 0 then writes
    one copy that every rank waits for and loads. Without one, each rank writes its own.
    """
    import torch.distributed as dist

    shared = dist.is_available() and dist.is_initialized()
    if not shared:
        folder = folder.with_name(f"{folder.name}-rank{rank}")
    if rank == 0 or not shared:
        model[0].auto_model.save_pretrained(str(folder))
        model.tokenizer.save_pretrained(str(folder))
    if shared:
        dist.barrier()
    return folder


def _write_jsonl(pairs: list[Pair], path: Path) -> int:
    """Write pairs as FlagEmbedding training JSONL; returns the train_group_size they support.

    Pairs with teacher scores (distillation) also get FlagEmbedding's ``pos_scores`` and ``neg_scores``.
    """
    width = min((len(p.negatives) for p in pairs), default=0)
    with path.open("w", encoding="utf-8") as f:
        for p in pairs:
            row: dict = {"query": p.query, "pos": [p.positive], "neg": list(p.negatives[:width])}
            if p.teacher_scores is not None:
                row |= {"pos_scores": p.teacher_scores[:1], "neg_scores": p.teacher_scores[1 : 1 + width]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 1 + width


def _check_modules(model: SentenceTransformer) -> None:
    """FlagEmbedding trains a transformer with pooling: refuse models whose modules it would ignore."""
    kinds = [type(module).__name__ for module in model]
    extra = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if extra:
        raise ValueError(
            f"train.backend flagembedding trains a transformer with pooling only; this model also has "
            f"{', '.join(extra)} module(s), which it would not train: use train.backend: sentence-transformers"
        )


class FlagEmbeddingBackend:
    """Fine-tuning with FlagEmbedding's EncoderOnlyEmbedderRunner (its model, loss and trainer)."""

    name = "flagembedding"

    def train(
        self,
        model: SentenceTransformer,
        pairs: list[Pair],
        spec: Spec,
        dev: DevEval | None,
        workdir: Path,
        *,
        on_log: LogHook | None = None,
    ) -> TrainOutcome:
        """Fine-tune `model` on `pairs`; see :class:`runner.train.TrainBackend`."""
        from FlagEmbedding.finetune.embedder.encoder_only.base import EncoderOnlyEmbedderRunner
        from transformers.trainer_callback import PrinterCallback

        from runner.models import pooling_of, set_pooling

        _check_modules(model)
        cfg = spec.train
        device = model.device.type
        precision = resolve_precision(cfg.precision, device)
        pooling = spec.model.pooling or pooling_of(model) or "mean"
        notes = []
        if pooling != DEFAULT_POOLING:
            origin = "as model.pooling asks" if spec.model.pooling else "the model's own pooling"
            notes.append(
                f"FlagEmbedding trains with {pooling} pooling ({origin}), not its default {DEFAULT_POOLING}: "
                "set model.pooling to change it"
            )
            log.warning(notes[-1])

        rank, _, world = dist_env()
        base_dir = _shared_base(model, workdir / "flagembedding-base", rank=rank)
        workdir = workdir / f"flagembedding-rank{rank}"  # each training process prepares its own files
        workdir.mkdir(parents=True, exist_ok=True)
        out_dir = workdir / "output"
        group_size = _write_jsonl(pairs, workdir / "train.jsonl")
        steps_per_epoch = max(1, math.ceil(len(pairs) / (cfg.batch_size * world)))
        values = {
            "model_name_or_path": str(base_dir),
            "train_data": [str(workdir / "train.jsonl")],
            "cache_path": str(workdir / "cache"),
            "train_group_size": group_size,
            **spec_values(model=spec.model, train=spec.train),
            "sentence_pooling_method": pooling,
            "output_dir": str(out_dir),
            "bf16": precision == "bf16",
            "fp16": precision == "fp16",
            "use_cpu": device == "cpu",
            "negatives_cross_device": cross_device(spec),
            "ddp_backend": ddp_backend(spec, device),
            "logging_steps": max(1, steps_per_epoch // 10),
            **cfg.flagembedding,
        }
        pin_mixed_precision(precision)
        model_args, data_args, training_args = parse_arguments(values)
        with _quiet():
            runner = EncoderOnlyEmbedderRunner(model_args=model_args, data_args=data_args, training_args=training_args)
        # One copy of the weights: the run's SentenceTransformer now wraps the transformer FlagEmbedding trains,
        # so the dev split is scored on the live weights with embx's own evaluation.
        model[0].model = runner.model.model
        set_pooling(model, pooling)

        log_rows: list[tuple[int, float, str, float]] = []
        tracker = _EpochDev(model, runner.model, dev, spec, log_rows, on_log=on_log)
        trainer = runner.trainer
        trainer.remove_callback(PrinterCallback)
        for callback in (log_callback(log_rows, None, on_log), tracker.callback()):
            trainer.add_callback(callback)
        trained = [0]  # queries of the batches FlagEmbedding's model saw in this process

        def count(module, args, kwargs):
            queries = kwargs.get("queries", args[0] if args else None)
            for features in queries if isinstance(queries, list) else [queries]:
                trained[0] += len(features["attention_mask"])

        hook = runner.model.register_forward_pre_hook(count, with_kwargs=True)
        started = time.perf_counter()
        try:
            with _quiet():
                trainer.train()
        finally:
            hook.remove()
        seconds = time.perf_counter() - started
        tracker.restore_best()
        state = trainer.state
        epochs_run = math.ceil(state.epoch or 0)
        tuned = model.float().eval()
        return TrainOutcome(
            model=tuned,
            log=log_rows,
            epochs_run=epochs_run,
            best_epoch=tracker.best_epoch if tracker.patience is not None else epochs_run,
            seconds=seconds,
            eval_seconds=tracker.seconds,
            samples=trained[0] * world,  # the distributed sampler gives every process as many pairs
            steps=state.global_step,
            precision=precision,
            notes=notes,
            details={
                "pooling": pooling,
                "train_group_size": group_size,
                "temperature": 1.0 / cfg.scale,
                "knowledge_distillation": bool(data_args.knowledge_distillation),  # as FlagEmbedding parsed it
            },
        )


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence FlagEmbedding's start-up banner, the datasets progress bar and a per-batch tokenizer warning.

    Its real warnings and errors still come through; embx's own log and progress bar report the training.
    """
    import datasets

    runner_log = logging.getLogger("FlagEmbedding.abc.finetune.embedder.AbsRunner")
    level, bars = runner_log.level, datasets.is_progress_bar_enabled()
    runner_log.setLevel(logging.ERROR)  # "Process rank: ..." and a dump of every argument
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`max_length` is ignored when `padding`")
            yield
    finally:
        runner_log.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


class _EpochDev:
    """Scores the dev split after every epoch, keeps the best epoch's weights and stops after `patience`."""

    def __init__(
        self, st_model, fe_model, dev: DevEval | None, spec: Spec, log_rows: list, *, on_log: LogHook | None = None
    ) -> None:
        self.st_model, self.fe_model, self.dev, self.log_rows, self.on_log = st_model, fe_model, dev, log_rows, on_log
        stopping = spec.train.early_stopping
        self.metric = stopping.metric if stopping else spec.eval.main
        self.patience = stopping.patience if stopping and dev else None
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict | None = None
        self.seconds = 0.0

    def callback(self):
        """A TrainerCallback calling :meth:`epoch_end`."""
        from transformers import TrainerCallback

        tracker = self

        class EpochDev(TrainerCallback):
            def on_epoch_end(self, args, state, control, **kwargs):
                tracker.epoch_end(round(state.epoch or 0), state.global_step, control)

        return EpochDev()

    def epoch_end(self, epoch: int, step: int, control) -> None:
        """Score dev, remember the best weights, and ask the trainer to stop when patience runs out."""
        if self.dev is None:
            return
        started = time.perf_counter()
        scores = self.dev(self.st_model)
        self.seconds += time.perf_counter() - started
        rows = [(step, float(epoch), f"dev_{k}", float(v)) for k, v in scores.items()]
        self.log_rows += rows
        if self.on_log is not None:
            self.on_log(rows)
        value = scores[self.metric]
        log.info("epoch %d: dev %s = %.4f", epoch, self.metric, value)
        if self.best is None or value > self.best:
            self.best, self.best_epoch = value, epoch
            if self.patience is not None:
                self.best_state = weights_copy(self.fe_model)
        elif self.patience is not None and epoch - self.best_epoch >= self.patience:
            log.info("early stopping: no dev improvement for %d epochs", self.patience)
            control.should_training_stop = True

    def restore_best(self) -> None:
        """Load the best epoch's weights back (when early stopping kept a copy)."""
        if self.best_state is not None:
            self.fe_model.load_state_dict(self.best_state)
