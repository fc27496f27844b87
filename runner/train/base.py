"""What every training backend shares: the Protocol, the outcome, torchrun's environment and the log callback."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from runner.data.types import Pair
    from runner.spec import Spec

log = logging.getLogger(__name__)

DevEval = Callable[["SentenceTransformer"], dict[str, float]]
"""Scores a model on the dev split: returns flat metric keys -> values."""

LogHook = Callable[[list[tuple[int, float, str, float]]], None]
"""Receives training-log rows (step, epoch, name, value) as they are logged (the run's experiment trackers)."""


@dataclass
class TrainOutcome:
    """What a backend returns.

    Attributes:
        model: The selected model (best dev epoch when early stopping is on, else the last), fp32.
        log: Rows of (step, epoch, name, value): train loss, learning rate, dev metrics.
        epochs_run: Epochs actually trained (early stopping may cut them short).
        best_epoch: Epoch whose weights were kept.
        seconds: Wall time of training (evaluation during training included).
        eval_seconds: Part of `seconds` spent scoring the dev split.
        samples: Training examples seen (by all processes together).
        steps: Optimizer steps taken.
        precision: The autocast precision used.
        notes: Things the user must know about how the backend trained (shown as run warnings).
        details: Backend-specific settings actually used (recorded with the run).
        adapter: The LoRA adapters as trained, before they were folded into `model` (see
            :func:`runner.train.lora.snapshot_adapter`); None without ``train.lora``.

    """

    model: SentenceTransformer
    log: list[tuple[int, float, str, float]] = field(default_factory=list)
    epochs_run: int = 0
    best_epoch: int | None = None
    seconds: float = 0.0
    eval_seconds: float = 0.0
    samples: int = 0
    steps: int = 0
    precision: str = "fp32"
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] | None = field(default=None, repr=False)
    learning_rate: float | None = None
    """The peak learning rate trained with (``train.lr_probe``'s choice when it probed), set by the pipeline."""

    def info(self, spec: Spec) -> dict[str, Any]:
        """The run's `train` info section: epochs, best epoch, samples and their rate, precision, backend settings."""
        train_seconds = self.seconds - self.eval_seconds
        return {
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "samples": self.samples,
            "samples_per_s": round(self.samples / train_seconds, 2) if train_seconds > 0 else None,
            "dev_eval_seconds": round(self.eval_seconds, 2),
            "precision": self.precision,
            "backend": spec.train.backend,
            "learning_rate": self.learning_rate if self.learning_rate is not None else spec.train.learning_rate,
            "world_size": 1,
            "per_device_batch": spec.train.batch_size,
            "global_batch": spec.train.batch_size,
            **self.details,
        }


@dataclass
class BestEpoch:
    """Early stopping's bookkeeping in embx's own loops: the best dev score so far, its epoch and weights.

    Attributes:
        patience: Epochs without improvement before training stops.
        score: The best dev score so far (None before the first).
        epoch: Its epoch.
        weights: What `snapshot` returned at that epoch.
        waited: Epochs since it.

    """

    patience: int
    score: float | None = None
    epoch: int | None = None
    weights: Any = field(default=None, repr=False)
    waited: int = 0

    def stop_after(self, epoch: int, score: float, snapshot: Callable[[], Any]) -> bool:
        """Record `epoch`'s dev score (taking a snapshot when it is the best); True when training should stop."""
        if self.score is None or score > self.score:
            self.score, self.epoch, self.weights, self.waited = score, epoch, snapshot(), 0
            return False
        self.waited += 1
        if self.waited >= self.patience:
            log.info("early stopping after epoch %d (best: epoch %d)", epoch, self.epoch)
            return True
        return False


class TrainBackend(Protocol):
    """A fine-tuning backend."""

    name: str

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
        """Fine-tune `model` on `pairs` (each with 0 or `per_query` negatives) as `spec.train` says.

        Pairs come without the model's query/passage prefixes: each backend applies `spec.model`'s prefixes
        in its own way (sentence-transformers in the dataset, FlagEmbedding through its instruction arguments).
        Every row added to the outcome's log is also passed to `on_log` as it is logged.
        """
        ...


def dist_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) of this process as torchrun sets them; (0, 0, 1) outside torchrun."""
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def ddp_backend(spec: Spec, device: str) -> str | None:
    """The torch.distributed backend for this run's training processes (None outside torchrun)."""
    if dist_env()[2] == 1:
        return None
    choice = spec.train.distributed.backend
    if choice == "auto":
        return "nccl" if device == "cuda" else "gloo"
    return choice


def cross_device(spec: Spec) -> bool:
    """Gather embeddings across training processes: asked for, and there is more than one process."""
    return spec.train.cross_device_negatives and dist_env()[2] > 1


DEV_NAME = "dev"


def log_callback(outcome_log: list, dev_metric: str | None, on_log: LogHook | None = None):
    """A transformers TrainerCallback that keeps the training log and drives a rich progress bar.

    Args:
        outcome_log: Rows (step, epoch, name, value) are appended here: loss, learning rate, grad norm and the
            trainer's own dev evaluation (``eval_dev_*``) when it runs one.
        dev_metric: Dev metric to log at INFO level after each trainer evaluation (None: none).
        on_log: Also receives the rows of each log call.

    """
    from transformers import TrainerCallback

    from runner.progress import console

    class LogAndProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.progress = Progress(
                *columns,
                TextColumn("{task.fields[note]}"),
                console=console,
                transient=True,
                disable=not console.is_terminal,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps, note="")

        def on_step_end(self, args, state, control, **kwargs):
            self.progress.update(self.task, completed=state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            self.progress.stop()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in (logs or {}):
                self.progress.update(self.task, note=f"loss {logs['loss']:.4f}")
            rows = []
            for key, value in (logs or {}).items():
                if key in ("loss", "learning_rate", "grad_norm") or key.startswith(f"eval_{DEV_NAME}_"):
                    name = key.removeprefix("eval_")
                    rows.append((state.global_step, float(state.epoch or 0.0), name, float(value)))
                    if dev_metric and name == f"{DEV_NAME}_{dev_metric}":
                        log.info("epoch %.2f: dev %s = %.4f", state.epoch or 0.0, dev_metric, value)
            outcome_log.extend(rows)
            if on_log is not None and rows:
                on_log(rows)

    return LogAndProgress()


def pin_mixed_precision(precision: str) -> None:
    """Make the next transformers Trainer autocast as `precision` says, whatever an earlier one asked for.

    TrainingArguments(bf16=True) writes ACCELERATE_MIXED_PRECISION=bf16 into the environment, and later
    TrainingArguments with bf16=False keep reading it: without this, an fp32 run after a bf16 one in the same
    process (an ablation, a search, the tests) silently trains under bf16 autocast.
    """
    os.environ["ACCELERATE_MIXED_PRECISION"] = {"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")


WORKDIR_PREFIX = "embx-"
"""Training folders are ``<tmp>/embx-<pid>-<run id>-*``: the pid tells whether their owner is still alive."""


def remove_orphan_workdirs() -> None:
    """Remove the training folders of embx processes that died without cleaning up (SIGKILL, power loss)."""
    import re
    import shutil
    import tempfile

    from runner import store

    for folder in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        found = re.match(rf"{WORKDIR_PREFIX}(\d+)-\d{{8}}-\d{{6}}-", folder.name)
        if not found or not folder.is_dir() or store.process_alive(int(found.group(1))):
            continue
        log.info("removing %s, left by a process that no longer runs", folder)
        shutil.rmtree(folder, ignore_errors=True)
