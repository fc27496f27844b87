"""LoRA adapters for the sentence-transformers backend, through peft as sentence-transformers adds them.

`add_lora` puts adapters on the model's transformer (``SentenceTransformer.add_adapter``): only they train, the
base weights stay frozen. `fold_lora` merges them into the weights afterwards (peft's own layer merge), so the
saved model is a plain one that every tool, `merge:` and `embx export` handle. `snapshot_adapter` keeps the
adapters as trained, before folding, and `save_adapter` writes them beside the saved model (``lora-adapter/``: peft's
``adapter_config.json`` and ``adapter_model.safetensors``, a few MB), for a user who serves one base model with
several adapters: ``SentenceTransformer(base).load_adapter(folder)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from runner.spec import LoraSpec

log = logging.getLogger(__name__)


def add_lora(model: SentenceTransformer, cfg: LoraSpec) -> dict[str, Any]:
    """Add LoRA adapters to `model` in place; returns the `lora` part of the run's train info.

    Raises:
        ValueError: peft finds none of `cfg.target_modules` in the model.

    """
    from peft import LoraConfig, TaskType

    config = LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
    )
    total = sum(p.numel() for p in model.parameters())
    model.add_adapter(config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("lora: training %d of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total)
    return {"r": cfg.r, "alpha": cfg.alpha, "trainable_parameters": trainable, "parameters": total}


def snapshot_adapter(model: SentenceTransformer) -> dict[str, Any]:
    """The LoRA adapters of `model` as they are now: peft's config and a CPU copy of the adapter weights."""
    transformer = model[0].auto_model
    state = {k: v.detach().to("cpu", copy=True) for k, v in transformer.get_adapter_state_dict().items()}
    return {"config": transformer.peft_config["default"], "state": state}


def save_adapter(adapter: dict[str, Any], folder: Path) -> Path:
    """Write a :func:`snapshot_adapter` as peft saves adapters (loadable with ``load_adapter``); returns the folder."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    adapter["config"].save_pretrained(str(folder))
    save_file({k: v.contiguous() for k, v in adapter["state"].items()}, str(folder / "adapter_model.safetensors"))
    return folder


def fold_lora(model: SentenceTransformer) -> int:
    """Merge every LoRA layer of `model` into its base weights and remove the adapters; returns how many.

    Uses peft's per-layer ``merge`` and puts each layer's base layer back in its place (what peft's
    ``merge_and_unload`` does for a PeftModel; sentence-transformers' adapters live in the transformer itself).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    folded = 0
    for module in model.modules():
        for name, child in list(module.named_children()):
            if isinstance(child, BaseTunerLayer):
                child.merge()
                setattr(module, name, child.get_base_layer())
                folded += 1
    for module in model.modules():  # transformers' adapter bookkeeping: saving must write full weights again
        if getattr(module, "_hf_peft_config_loaded", False):
            module._hf_peft_config_loaded = False
            if hasattr(module, "peft_config"):
                del module.peft_config
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return folded
