"""The sentence-transformers backend: MNRL over sentence-transformers modules, with per-epoch dev evaluation.

Training runs in embx's own loop (:mod:`runner.train.fast`) in one process, or in SentenceTransformerTrainer
(``train.loop: trainer``, and always under torchrun).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from runner.device import resolve_precision
from runner.spec.external import warmup_argument
from runner.spec.train import trainer_report_to
from runner.train.base import (
    DEV_NAME,
    DevEval,
    LogHook,
    TrainOutcome,
    cross_device,
    ddp_backend,
    dist_env,
    log_callback,
    pin_mixed_precision,
)
from runner.train.lora import add_lora, fold_lora, snapshot_adapter
from runner.train.losses import build_loss

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from runner.data.types import Pair
    from runner.spec import Spec

log = logging.getLogger(__name__)


def _dataset(pairs: list[Pair], query_prefix: str, passage_prefix: str):
    """Columns anchor, positive[, negative_1..n], prefixes applied: the layout MNRL expects.

    Then `label`, the teacher's scores of the positive and each negative, when the pairs have them (distillation).
    """
    from datasets import Dataset

    columns: dict[str, list] = {
        "anchor": [query_prefix + p.query for p in pairs],
        "positive": [passage_prefix + p.positive for p in pairs],
    }
    width = min((len(p.negatives) for p in pairs), default=0)
    for i in range(width):
        columns[f"negative_{i + 1}"] = [passage_prefix + p.negatives[i] for p in pairs]
    if pairs and all(p.teacher_scores is not None for p in pairs):
        columns["label"] = [p.teacher_scores[: 1 + width] for p in pairs]
    return Dataset.from_dict(columns)


def rows_of(features) -> int:
    """Texts in one tokenised column (a feature dict), i.e. the pairs of the batch it belongs to."""
    if "attention_mask" in features:
        return len(features["attention_mask"])
    return len(next(iter(features.values())))


class SentenceTransformersBackend:
    """Fine-tuning with sentence-transformers' modules and loss, in embx's loop or SentenceTransformerTrainer."""

    name = "sentence-transformers"

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
        from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
        from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
        from sentence_transformers.base.sampler import BatchSamplers
        from transformers import EarlyStoppingCallback
        from transformers.trainer_callback import PrinterCallback

        cfg = spec.train
        device = model.device.type
        precision = resolve_precision(cfg.precision, device)
        stopping = cfg.early_stopping
        dev_metric = stopping.metric if stopping else spec.eval.main

        class DevEvaluator(BaseEvaluator):
            """Scores the dev split with embx's own retrieval and metrics (the same code as the test)."""

            def __init__(self) -> None:
                super().__init__()
                self.name = DEV_NAME
                self.primary_metric = dev_metric
                self.seconds = 0.0

            def __call__(self, model, output_path=None, epoch=-1, steps=-1):
                started = time.perf_counter()
                metrics = dev(model)
                self.seconds += time.perf_counter() - started
                return self.prefix_name_to_metrics(metrics, self.name)

        lora = add_lora(model, cfg.lora) if cfg.lora is not None else None
        loss = build_loss(model, spec, gather=cross_device(spec))

        evaluate = dev is not None
        world = dist_env()[2]
        if cfg.loop == "embx" or (cfg.loop == "auto" and world == 1):
            from runner.train.fast import train_loop

            outcome = train_loop(
                model,
                loss_fn=loss,
                pairs=pairs,
                spec=spec,
                dev=dev if evaluate else None,
                precision=precision,
                on_log=on_log,
            )
            return _with_lora(outcome, lora=lora)
        steps_per_epoch = max(1, math.ceil(len(pairs) / (cfg.batch_size * world)))
        keep_best = evaluate and stopping is not None
        pin_mixed_precision(precision)
        args = SentenceTransformerTrainingArguments(
            output_dir=str(workdir / "checkpoints"),
            num_train_epochs=cfg.epochs,
            per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            **{warmup_argument(): cfg.warmup_ratio},  # warmup_steps below 1 on transformers 5 (a ratio)
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            data_seed=cfg.seed,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            use_cpu=device == "cpu",
            ddp_backend=ddp_backend(spec, device),
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            eval_strategy="epoch" if evaluate else "no",
            save_strategy="epoch" if keep_best else "no",
            save_total_limit=1,
            save_only_model=True,
            load_best_model_at_end=keep_best,
            metric_for_best_model=f"eval_{DEV_NAME}_{dev_metric}" if keep_best else None,
            greater_is_better=True,
            logging_steps=max(1, steps_per_epoch // 10),
            report_to=trainer_report_to(cfg.report_to),  # embx logs its own trackers through on_log
            disable_tqdm=True,
            dataloader_num_workers=0,
            gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        )
        log_rows: list[tuple[int, float, str, float]] = []
        callbacks = [log_callback(log_rows, dev_metric if evaluate else None, on_log)]
        if keep_best:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=stopping.patience))
        evaluator = DevEvaluator() if evaluate else None
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=_dataset(pairs, spec.model.query_prefix, spec.model.passage_prefix),
            loss=loss,
            evaluator=evaluator,
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # our callback keeps the log; no dict dumps on stdout
        trained = [0]  # rows of the batches the loss saw in this process

        def count(module, args):
            trained[0] += rows_of(args[0][0])

        hook = loss.register_forward_pre_hook(count)
        started = time.perf_counter()
        try:
            trainer.train()
        finally:
            hook.remove()
            if cfg.gradient_checkpointing:  # the trainer leaves it on: the saved model evaluates and ships without
                model[0].auto_model.gradient_checkpointing_disable()
        seconds = time.perf_counter() - started
        state = trainer.state
        epochs_run = math.ceil(state.epoch or 0)
        best_epoch = epochs_run
        if keep_best and state.best_model_checkpoint:
            best_step = int(Path(state.best_model_checkpoint).name.split("-")[-1])
            best_epoch = math.ceil(best_step / steps_per_epoch)
        tuned = trainer.model.float().eval()
        outcome = TrainOutcome(
            model=tuned,
            log=log_rows,
            epochs_run=epochs_run,
            best_epoch=best_epoch,
            seconds=seconds,
            eval_seconds=evaluator.seconds if evaluator else 0.0,
            samples=trained[0] * world,  # the distributed sampler gives every process as many pairs
            steps=state.global_step,
            precision=precision,
            details={"loop": "trainer"},
        )
        return _with_lora(outcome, lora=lora)


def scores_dev_on_rank_zero_only(spec: Spec) -> bool:
    """Whether, under torchrun, the trainer calls the dev scorer on rank 0 only (and shares the metrics itself).

    sentence-transformers 6's trainer runs an evaluator on rank 0 while the other ranks serve its encode calls,
    then broadcasts the metrics; sentence-transformers 5's trainer, embx's own loop and FlagEmbedding's call it
    on every rank, so the scorer broadcasts rank 0's metrics itself.
    """
    if spec.train.backend != "sentence-transformers" or spec.train.loop == "embx":
        return False
    try:
        from sentence_transformers.util.distributed import distributed_evaluation  # noqa: F401
    except ImportError:  # sentence-transformers 5
        return False
    return True


def _with_lora(outcome: TrainOutcome, *, lora: dict | None) -> TrainOutcome:
    """Keep the adapters as trained, fold them into the weights, and say so in the train info."""
    if lora is None:
        return outcome
    outcome.adapter = snapshot_adapter(outcome.model)
    lora["folded_layers"] = fold_lora(outcome.model)
    outcome.details["lora"] = lora
    return outcome
