"""embx's own training loop for the sentence-transformers backend (``train.loop: embx``).

It trains the same SentenceTransformer modules with the same sentence-transformers loss (MNRL or its cached
variant), AdamW with the same parameter groups, linear warm-up/decay schedule and gradient clipping as
SentenceTransformerTrainer, and keeps the no-duplicates guarantee for in-batch negatives. What it changes is how
the work reaches the model (each step measured in bench/README.md):

- every text is tokenised once, before the first epoch, instead of in the collator at every step;
- batches are length-bucketed: pairs are shuffled, cut into windows of ``BUCKET_WINDOW`` batches, sorted by
  length inside a window and batched there, and the batch order is shuffled again, so each batch pads to about
  its own length instead of the longest text in a random batch;
- padding is per column (queries pad to the longest query of the batch, passages to the longest passage);
- autocast (bf16 on GPUs and AMX CPUs) over fp32 master weights, fused AdamW, and no host synchronisation
  per step: the loss is accumulated on the device and read only when it is logged;
- the best epoch's weights are kept in memory for early stopping (no checkpoint written to disk);
- optional ``torch.compile`` of the transformer with dynamic shapes (``train.compile``).

Under torchrun (several processes) the backend uses SentenceTransformerTrainer instead (``train.loop: auto``).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from runner.models import weights_copy
from runner.train.base import DEV_NAME, BestEpoch, DevEval, LogHook, TrainOutcome

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from runner.data.types import Pair
    from runner.spec import Spec

log = logging.getLogger(__name__)

BUCKET_WINDOW = 32
"""Batches per length-sorting window: larger pads less, smaller keeps batches more random."""

LENGTH_JITTER = 0.2
"""Pairs are sorted by positive length times a random factor in [1 - j, 1 + j], drawn anew each epoch. Sorted by
the exact length, a window falls into the same batches every epoch (86% of in-batch neighbours recurred between
two epochs of 2,000 financial_qa_10k pairs), so each query would meet the same in-batch negatives again; with
0.2, 24% recur, and 67% of the padded tokens are real instead of 74%. Measured effect on the medical demo (3
epochs, one window): exact sorting kept dev-best epoch 1 and lost about 0.01 test NDCG@10 to random batches."""


@dataclass
class Columns:
    """The training texts as token ids, each distinct text tokenised once, stored flat for gathering.

    Attributes:
        tokens: Per tokenizer output (input_ids, token_type_ids, ...; not attention_mask): the values of all
            texts, concatenated in text order (truncated to max_seq_length, special tokens included).
        starts: Where each text begins in `tokens`.
        sizes: Token count of each text.
        rows: For each pair, the text indices of its query, positive and negatives (the loss's columns).
        seconds: Time spent tokenising.

    """

    tokens: dict[str, torch.Tensor]
    starts: torch.Tensor
    sizes: torch.Tensor
    rows: list[tuple[int, ...]]
    table: torch.Tensor
    seconds: float = 0.0

    @classmethod
    def build(cls, encoded: dict[str, list[list[int]]], rows: list[tuple[int, ...]], seconds: float = 0.0) -> Columns:
        """From per-text token lists by name (a tokenizer's output without padding) and the pairs' text indices."""
        import torch

        sizes = torch.as_tensor([len(ids) for ids in encoded["input_ids"]], dtype=torch.long)
        starts = torch.zeros_like(sizes)
        starts[1:] = torch.cumsum(sizes, 0)[:-1]
        tokens = {
            name: torch.as_tensor([v for ids in values for v in ids], dtype=torch.long)
            for name, values in encoded.items()
            if name != "attention_mask"
        }
        table = torch.as_tensor(rows, dtype=torch.long).reshape(len(rows), -1)
        return cls(tokens=tokens, starts=starts, sizes=sizes, rows=rows, table=table, seconds=seconds)

    @cached_property
    def _size_list(self) -> list[int]:
        return self.sizes.tolist()

    def lengths(self, row: int) -> tuple[int, ...]:
        """Token counts of one pair's texts."""
        return tuple(self._size_list[t] for t in self.rows[row])


def tokenize_pairs(
    model: SentenceTransformer, pairs: Sequence[Pair], query_prefix: str, passage_prefix: str
) -> Columns:
    """Tokenise every distinct text of `pairs` once, with the model's tokenizer and max_seq_length.

    Pairs must all have the same number of negatives (the caller trims them), so the columns line up.
    """
    started = time.perf_counter()
    width = min((len(p.negatives) for p in pairs), default=0)
    texts: dict[str, int] = {}
    rows = []
    for p in pairs:
        row = [query_prefix + p.query, passage_prefix + p.positive]
        row += [passage_prefix + n for n in p.negatives[:width]]
        rows.append(tuple(texts.setdefault(t, len(texts)) for t in row))
    encoded = model.tokenizer(
        list(texts), truncation="longest_first", max_length=model.max_seq_length, padding=False, verbose=False
    )
    return Columns.build(dict(encoded), rows, time.perf_counter() - started)


def teacher_labels(pairs: Sequence[Pair]) -> torch.Tensor | None:
    """(pairs, 1 + negatives) teacher scores, trimmed as :func:`tokenize_pairs` trims the negatives.

    None when the pairs have none (every loss but distillation).
    """
    import torch

    if not pairs or any(p.teacher_scores is None for p in pairs):
        return None
    width = min(len(p.negatives) for p in pairs)
    return torch.tensor([p.teacher_scores[: 1 + width] for p in pairs], dtype=torch.float32)


def plan_batches(columns: Columns, batch_size: int, rng: random.Random, buckets: bool) -> list[list[int]]:
    """Batches of pair indices for one epoch, no text twice in a batch, length-bucketed when `buckets`.

    Pairs are shuffled; with `buckets`, each window of ``BUCKET_WINDOW`` batches is sorted by positive length,
    jittered by ``LENGTH_JITTER``, before it is cut into batches. A pair whose text is already in the batch being
    filled waits for the next one (as sentence-transformers' NoDuplicatesBatchSampler does). The order of the full
    batches is shuffled, so long and short batches alternate at random. Smaller batches of what is left come last.
    A pair that would be alone in a batch without negatives (nothing to learn from) joins an earlier batch that
    lacks its texts (which then holds batch_size + 1 pairs); only if there is none is it left out of this epoch.
    """
    order = list(range(len(columns.rows)))
    rng.shuffle(order)
    window = batch_size * BUCKET_WINDOW if buckets else len(order)
    batches: list[list[int]] = []
    waiting: list[int] = []
    batch: list[int] = []
    seen: set[int] = set()
    for start in range(0, len(order), window):
        chunk = waiting + batch + order[start : start + window]
        if buckets:
            jitter = {i: 1 + rng.uniform(-LENGTH_JITTER, LENGTH_JITTER) for i in chunk}
            chunk.sort(key=lambda i: columns.lengths(i)[1] * jitter[i])
        waiting, batch, seen = [], [], set()
        for i in chunk:
            waiting += _take(columns, batch, seen, [i], batch_size)
            while len(batch) == batch_size:
                batches.append(batch)
                batch, seen = [], set()
                waiting = _take(columns, batch, seen, waiting, batch_size)  # waiting pairs go first
    rng.shuffle(batches)
    # What is left: pairs that collide with each other go to further, smaller batches at the end of the epoch. A
    # pair left alone without negatives would learn nothing there: it joins an earlier batch that lacks its texts.
    waiting = batch + waiting
    while waiting:
        batch, seen = [], set()
        waiting = _take(columns, batch, seen, waiting, batch_size)
        if len(batch) > 1 or len(columns.rows[batch[0]]) > 2:
            batches.append(batch)
            continue
        texts = set(columns.rows[batch[0]])
        home = next(
            (b for b in batches if len(b) <= batch_size and not any(texts & set(columns.rows[j]) for j in b)), None
        )
        if home is not None:
            home.append(batch[0])
    return batches


def _take(columns: Columns, batch: list[int], seen: set[int], candidates: list[int], size: int) -> list[int]:
    """Add to `batch` (up to `size`) each candidate none of whose texts is in `seen`; return the others."""
    rest = []
    for i in candidates:
        texts = columns.rows[i]
        if len(batch) == size or seen.intersection(texts):
            rest.append(i)
        else:
            batch.append(i)
            seen.update(texts)
    return rest


def collate(
    columns: Columns, batch: list[int], pad_id: int, multiple: int
) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Padded feature dicts, one per column (query, positive, negatives), and the real token count.

    Each column pads to its own longest text in the batch, rounded up to `multiple` (8 on GPUs, for tensor
    cores; 1 on CPU). The rows are gathered from the flat token store with tensor indexing: no Python loop over
    the batch.
    """
    import torch

    texts = columns.table[torch.as_tensor(batch, dtype=torch.long)]
    last = len(columns.tokens["input_ids"]) - 1
    features = []
    tokens = 0
    for col in range(texts.shape[1]):
        which = texts[:, col]
        lengths = columns.sizes[which]
        width = -(-int(lengths.max()) // multiple) * multiple
        position = torch.arange(width)
        mask = position < lengths[:, None]
        index = (columns.starts[which, None] + position).clamp_(max=last)
        feats = {
            "input_ids": torch.where(mask, columns.tokens["input_ids"][index], pad_id),
            "attention_mask": mask.long(),
        }
        for name, values in columns.tokens.items():
            if name != "input_ids":
                feats[name] = torch.where(mask, values[index], 0)
        tokens += int(lengths.sum())
        features.append(feats)
    return features, tokens


def per_column_forwards() -> AbstractContextManager[None]:
    """Embed each column of a batch (queries, positives, each negative) in its own forward pass.

    sentence-transformers 6 merges a batch's columns into one forward, every row padded to the widest column, which
    fills a GPU better; this loop's length buckets already size each column's padding. On the medical demo (2-core
    AMX CPU, bf16) merging padded the queries to the passages' width and trained at 6.62 samples/s against 8.15-8.45
    per column (README, "Dependencies"); the padding this loop reports is also the padding that runs. On GPU the
    merge is unmeasured: bench/gpu/speed_check.sh compares this loop with sentence-transformers' trainer, which
    merges. sentence-transformers 5 never merges.
    """
    try:
        from sentence_transformers.base.losses.merged_forward import column_merging_disabled
    except ImportError:  # sentence-transformers 5
        return nullcontext()
    return column_merging_disabled()


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: str) -> torch.optim.Optimizer:
    """AdamW with the Trainer's parameter groups (no decay on biases and LayerNorm weights), fused if possible."""
    import torch
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    from transformers.trainer_pt_utils import get_parameter_names

    decay = set(get_parameter_names(model, ALL_LAYERNORM_LAYERS))
    decay = {n for n in decay if "bias" not in n}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        log.debug("fused AdamW not available on %s; using the foreach implementation", device)
        return torch.optim.AdamW(groups, lr=lr, foreach=True)


def train_loop(
    model: SentenceTransformer,
    *,
    loss_fn: torch.nn.Module,
    pairs: Sequence[Pair],
    spec: Spec,
    dev: DevEval | None,
    precision: str,
    on_log: LogHook | None = None,
) -> TrainOutcome:
    """Fine-tune `model` with `loss_fn` on `pairs` as `spec.train` says; see the module docstring.

    Args:
        model: The model, on its training device.
        loss_fn: A sentence-transformers loss over (query, positive, negatives...) feature dicts.
        pairs: Training pairs (prefixes not applied).
        spec: The run's spec (train, model prefixes, eval.main).
        dev: Scores the dev split after each epoch (None: no dev split).
        precision: fp32, bf16 or fp16 (resolved for the device).
        on_log: Receives each group of log rows as it is logged (the run's experiment trackers).

    Returns:
        The outcome, with `details` holding tokens, padding efficiency and the loop's settings.

    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    from runner.progress import task

    cfg = spec.train
    device = model.device
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    columns = tokenize_pairs(model, pairs, spec.model.query_prefix, spec.model.passage_prefix)
    labels = teacher_labels(pairs)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pad_id = model.tokenizer.pad_token_id or 0
    multiple = 8 if device.type == "cuda" else 1
    first_epoch = plan_batches(columns, cfg.batch_size, rng, cfg.length_buckets)  # its length sizes the schedule
    steps_per_epoch = len(first_epoch)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = _optimizer(model, cfg.learning_rate, cfg.weight_decay, device.type)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    amp = precision in ("bf16", "fp16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    compiled = None
    if cfg.compile:
        # sentence-transformers calls the transformer's forward method, not the module, so the module's own
        # compile() never ran: the method is compiled in place (weight names unchanged) for the loop's duration.
        compiled = model[0].auto_model
        compiled.forward = torch.compile(compiled.forward, dynamic=True)
    params = [p for p in model.parameters() if p.requires_grad]
    stopping = cfg.early_stopping
    dev_metric = stopping.metric if stopping else spec.eval.main
    logging_steps = max(1, steps_per_epoch // 10)

    log_rows: list[tuple[int, float, str, float]] = []
    best = BestEpoch(stopping.patience) if stopping is not None else None
    step = epochs_run = tokens = padded = samples = largest = 0
    eval_seconds = 0.0
    running = torch.zeros((), device=device)
    running_n = 0
    grad_norm = torch.zeros((), device=device)
    started = time.perf_counter()
    with task("train", total_steps) as (bar, tid):
        for epoch in range(cfg.epochs):
            model.train()
            batches = first_epoch if epoch == 0 else plan_batches(columns, cfg.batch_size, rng, cfg.length_buckets)
            for batch in batches:
                features, n_tokens = collate(columns, batch, pad_id, multiple)
                tokens += n_tokens
                samples += len(batch)  # the planner may leave a pair out or add one to a batch
                batch_tokens = sum(f["input_ids"].numel() for f in features)
                padded += batch_tokens
                largest = max(largest, batch_tokens)
                features = [{k: v.to(device, non_blocking=True) for k, v in f.items()} for f in features]
                with torch.autocast(device.type, dtype=dtype, enabled=amp), per_column_forwards():
                    loss = loss_fn(features, None if labels is None else labels[batch].to(device))
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                running += loss.detach().float()
                running_n += 1
                step += 1
                bar.update(tid, completed=step)
                if step % logging_steps == 0:  # the only host synchronisation: a few times per epoch
                    at = step / steps_per_epoch
                    log_rows.append((step, at, "loss", float(running) / running_n))
                    bar.update(tid, note=f"loss {log_rows[-1][3]:.4f}")
                    log_rows.append((step, at, "learning_rate", scheduler.get_last_lr()[0]))
                    log_rows.append((step, at, "grad_norm", float(grad_norm)))
                    if on_log is not None:
                        on_log(log_rows[-3:])
                    running.zero_()
                    running_n = 0
            epochs_run = epoch + 1
            losses = [row[3] for row in log_rows if row[2] == "loss" and row[1] > epoch]
            if losses:
                log.info("epoch %d: training loss %.4f", epochs_run, sum(losses) / len(losses))
            if dev is None:
                continue
            model.eval()
            dev_started = time.perf_counter()
            metrics = dev(model)
            eval_seconds += time.perf_counter() - dev_started
            dev_rows = [(step, float(epochs_run), f"{DEV_NAME}_{key}", float(value)) for key, value in metrics.items()]
            log_rows += dev_rows
            if on_log is not None:
                on_log(dev_rows)
            score = metrics[dev_metric]
            log.info("epoch %d: dev %s = %.4f", epochs_run, dev_metric, score)
            if best is not None and best.stop_after(epochs_run, score, lambda: weights_copy(model)):
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if cfg.gradient_checkpointing:
        model[0].auto_model.gradient_checkpointing_disable()  # the saved model evaluates and ships without it
    if compiled is not None:
        del compiled.forward  # evaluation and saving use the module's own forward again
    best_epoch = epochs_run
    if best is not None and best.epoch is not None:
        model.load_state_dict(best.weights)
        best_epoch = best.epoch
    model.eval()
    return TrainOutcome(
        model=model.float(),
        log=log_rows,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        seconds=seconds,
        eval_seconds=eval_seconds,
        samples=samples,
        steps=step,
        precision=precision,
        details={
            "loop": "embx",
            "tokens": tokens,
            "padded_tokens": padded,
            "largest_batch_tokens": largest,  # padded, all columns: what sets the peak activation memory
            "padding_efficiency": round(tokens / padded, 4) if padded else None,
            "tokenize_seconds": round(columns.seconds, 3),
            "length_buckets": cfg.length_buckets,
            "compile": cfg.compile,
            "steps_per_epoch": steps_per_epoch,
        },
    )
