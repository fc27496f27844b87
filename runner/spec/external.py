"""Checks of spec values against the libraries that consume them: FlagEmbedding's arguments and mteb's task names.

The spec validators call these so that a bad value fails when the spec is validated, located at its line, not
when a run reaches the library. The libraries (FlagEmbedding, transformers' ``HfArgumentParser``, mteb) are
imported inside the functions only, so importing the spec stays light. :mod:`runner.train.flagembedding` and
:mod:`runner.mteb_eval` use the same functions when they run.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
from typing import TYPE_CHECKING, Any, NamedTuple

from runner.spec.train import trainer_report_to

if TYPE_CHECKING:
    from runner.spec.model import ModelSpec
    from runner.spec.train import TrainSpec

# ------------------------------------------------------------------------------------------ optional parts


class Part(NamedTuple):
    """A part of embx that imports a library only when used, and what to do when that import fails."""

    module: str
    """The module it imports."""
    what: str
    """What needs it, as the user wrote it."""
    why: str
    """Why the import may fail in an environment that has embx."""
    fix: str
    """The command that gives a working environment."""


PARTS: dict[str, Part] = {
    "flagembedding": Part(
        module="FlagEmbedding.finetune.embedder.encoder_only.base",
        what="train.backend: flagembedding",
        why="FlagEmbedding 1.4.2 imports transformers.modeling_attn_mask_utils, which transformers 5.24 removed",
        fix="embx's own requirements select transformers <5.24: pip install torch==2.13.0 -e . (from the embx"
        " checkout)",
    ),
    "onnx": Part(
        module="optimum.onnxruntime",
        what="ONNX export",
        why="optimum-onnx 0.1.0 (the latest release, sentence-transformers' ONNX backend) supports transformers"
        " <4.58 only",
        fix='the onnx extra selects the transformers 4 stack: pip install torch==2.13.0 -e ".[onnx]" (from the embx'
        " checkout; it downgrades transformers to 4.57 and sentence-transformers to 5.7 in that environment)",
    ),
}
"""Parts of embx whose library may be absent or fail to import: name -> what to say then."""

EXTRAS = ("onnx",)
"""The parts whose library is an extra (``pip install -e ".[NAME]"``), not in the main set."""


def require(name: str) -> None:
    """Import the module that the part `name` of embx needs, or say what to install.

    Raises:
        ValueError: The library is absent, or installed but fails to import here (its exception is quoted).

    """
    part = PARTS[name]
    try:
        importlib.import_module(part.module)
    except Exception as exc:  # absent (ImportError) or incompatible: whatever its import raises
        from importlib.metadata import PackageNotFoundError, version

        try:
            stack = f"transformers {version('transformers')}"
        except PackageNotFoundError:
            stack = "no transformers"
        top = part.module.split(".")[0]
        absent = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == top
        found = f"{top} is not installed" if absent else f"`import {part.module}` fails: {type(exc).__name__}: {exc}"
        needs = f"the {name} extra" if name in EXTRAS else top
        raise ValueError(f"{part.what} needs {needs}: {found} (here: {stack}). {part.why}; {part.fix}") from None


# ------------------------------------------------------------------------------------------- FlagEmbedding

DEFAULT_POOLING = "cls"
"""FlagEmbedding's default ``sentence_pooling_method`` (the bge models' pooling)."""

MANAGED: dict[str, str] = {
    "model_name_or_path": "model.base",
    "tokenizer_name": "model.base",
    "config_name": "model.base",
    "train_data": "data (embx writes the JSONL)",
    "cache_path": "nothing: embx keeps FlagEmbedding's data cache in the run's temporary folder",
    "train_group_size": "negatives.per_query (train_group_size = 1 + per_query)",
    "passage_max_len": "model.max_seq_length",
    "query_instruction_for_retrieval": "model.query_prefix",
    "query_instruction_format": "model.query_prefix (prefixes are prepended as plain text)",
    "passage_instruction_for_retrieval": "model.passage_prefix",
    "passage_instruction_format": "model.passage_prefix (prefixes are prepended as plain text)",
    "knowledge_distillation": "train.loss: distill-kl (embx writes the teacher's scores)",
    "kd_loss_type": "train.loss: distill-kl (kl_div)",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "temperature": "train.scale (temperature = 1 / scale)",
    "sentence_pooling_method": "model.pooling",
    "normalize_embeddings": "model.normalize",
    "output_dir": "output.save_model / output.dir",
    "overwrite_output_dir": "output.dir",
    "learning_rate": "train.learning_rate",
    "num_train_epochs": "train.epochs",
    "max_steps": "train.epochs",
    "per_device_train_batch_size": "train.batch_size",
    "warmup_ratio": "train.warmup_ratio",
    "warmup_steps": "train.warmup_ratio",
    "weight_decay": "train.weight_decay",
    "seed": "train.seed",
    "data_seed": "train.seed",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "use_cpu": "nothing: embx picks the device",
    "do_train": "nothing: embx always trains",
    "eval_strategy": "train.early_stopping (embx scores the dev split itself after every epoch)",
    "save_strategy": "train.early_stopping",
    "load_best_model_at_end": "train.early_stopping",
    "metric_for_best_model": "train.early_stopping.metric",
    "report_to": "train.report_to",
    "negatives_cross_device": "train.cross_device_negatives",
    "ddp_backend": "train.distributed.backend",
}
"""FlagEmbedding arguments that a spec field sets; `train.flagembedding` may not set them."""


def _argument_classes() -> tuple[type, type, type]:
    require("flagembedding")
    from FlagEmbedding.finetune.embedder.encoder_only.base import (
        EncoderOnlyEmbedderDataArguments,
        EncoderOnlyEmbedderModelArguments,
        EncoderOnlyEmbedderTrainingArguments,
    )

    return EncoderOnlyEmbedderModelArguments, EncoderOnlyEmbedderDataArguments, EncoderOnlyEmbedderTrainingArguments


def argument_names() -> list[str]:
    """Every argument FlagEmbedding's encoder-only fine-tuning accepts (its three dataclasses)."""
    import dataclasses

    return [f.name for cls in _argument_classes() for f in dataclasses.fields(cls) if f.init]


def _argv(values: dict[str, Any]) -> list[str]:
    """Command-line form of argument values, as FlagEmbedding's own entry point would receive them."""
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [f"--{key}", "true" if value else "false"]
        elif isinstance(value, list | tuple):
            argv += [f"--{key}", *(str(v) for v in value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def parse_arguments(values: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Parse argument values into FlagEmbedding's (model, data, training) argument dataclasses.

    The values go through the ``HfArgumentParser`` that ``python -m FlagEmbedding.finetune.embedder.encoder_only.base``
    uses: types are converted and checked, choices enforced and each class's own ``__post_init__`` checks run.

    Raises:
        ValueError: Naming the argument where it can ("train.flagembedding.<name>: ...").

    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(_argument_classes())
    parser.allow_abbrev = False  # `--temp` must not silently mean `--temperature`

    def error(message: str):
        raise ValueError(message)

    parser.error = error  # argparse would print and exit
    try:
        return tuple(parser.parse_args_into_dataclasses(args=_argv(values), return_remaining_strings=False))
    except ValueError as exc:
        text = str(exc)
        unused = re.search(r"not used by the HfArgumentParser: \[(.*)\]", text)
        if unused:
            names = re.findall(r"'--([^']+)'", unused.group(1))
            name = names[0] if names else "?"
            close = difflib.get_close_matches(name, argument_names(), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"train.flagembedding.{name}: not a FlagEmbedding argument{hint}") from None
        named = re.search(r"argument --([A-Za-z0-9_]+)", text)
        if named:
            raise ValueError(f"train.flagembedding.{named.group(1)}: {text.split(': ', 1)[-1]}") from None
        raise ValueError(f"train.flagembedding: FlagEmbedding rejects the arguments: {text}") from None


def warmup_argument() -> str:
    """The trainer argument that takes a warm-up ratio: transformers 5 folded ``warmup_ratio`` into ``warmup_steps``.

    There, a ``warmup_steps`` below 1 is the ratio of the total steps; transformers 4 has ``warmup_ratio``.
    """
    import dataclasses

    from transformers import TrainingArguments

    return (
        "warmup_ratio" if "warmup_ratio" in {f.name for f in dataclasses.fields(TrainingArguments)} else "warmup_steps"
    )


def spec_values(*, model: ModelSpec, train: TrainSpec) -> dict[str, Any]:
    """FlagEmbedding argument values that the spec's own fields set (device, paths and pooling aside)."""
    cfg = train
    return {
        "passage_max_len": model.max_seq_length,
        "query_max_len": model.max_seq_length,
        "query_instruction_for_retrieval": model.query_prefix or None,
        "passage_instruction_for_retrieval": model.passage_prefix or None,
        "temperature": 1.0 / cfg.scale,
        "normalize_embeddings": model.normalize,
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "per_device_train_batch_size": cfg.batch_size,
        warmup_argument(): cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "knowledge_distillation": cfg.loss == "distill-kl",  # the JSONL then carries the teacher's scores
        "kd_loss_type": "kl_div",
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": trainer_report_to(train.report_to),  # embx logs its own trackers itself
        "disable_tqdm": True,
    }


def check_arguments(*, model: ModelSpec, train: TrainSpec) -> None:
    """Validate `train.flagembedding` against FlagEmbedding's argument classes, before anything runs.

    Raises:
        ValueError: "train.flagembedding.<name>: why" for a key that a spec field sets, that FlagEmbedding
            does not know, or whose value it rejects.

    """
    passed = train.flagembedding
    for key in passed:
        if key in MANAGED:
            raise ValueError(f"train.flagembedding.{key}: set by the spec, not here: use {MANAGED[key]}")
    values = {
        "model_name_or_path": model.base,
        "train_data": [__file__],  # FlagEmbedding checks that the files exist; the real JSONL is written later
        **spec_values(model=model, train=train),
        "sentence_pooling_method": model.pooling or DEFAULT_POOLING,
        "output_dir": "embx-flagembedding-check",
        **passed,
    }
    parse_arguments(values)


# -------------------------------------------------------------------------------------------------- mteb


def _task_names() -> list[str]:
    """Names of every task in mteb's registry (bundled with the package: no network)."""
    from mteb.get_tasks import TASK_LIST

    return sorted(cls.metadata.name for cls in TASK_LIST)


def check_task_names(names: list[str]) -> None:
    """Check that each name is an mteb task, offline.

    Raises:
        ValueError: Naming every unknown task, each with up to three close matches.

    """
    import mteb

    problems = []
    by_lower: dict[str, str] = {}
    for name in names:
        try:
            mteb.get_task(name)
        except KeyError:
            by_lower = by_lower or {n.lower(): n for n in _task_names()}
            close = [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)]
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            problems.append(f"unknown mteb task {name!r}{hint}")
    if problems:
        raise ValueError("; ".join(problems))
