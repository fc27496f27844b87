"""A query adapter over an API model's cached embeddings (``train.query_adapter.api``).

A team whose corpus is indexed with an API model (OpenAI, Voyage, Cohere, a self-hosted TEI ...) cannot fine-tune
it, and re-embedding the corpus with a tuned open model means re-indexing. A query-side linear adapter needs
neither: passages keep the vectors the index already holds, queries pass through a learned d x d map.

The run scores, mines and trains through an :class:`~runner.embed_api.ApiEmbedder` whose corpus vectors come from
the API embedding cache, which must hold every corpus passage before training starts (``embx select`` with the
model as a candidate puts them there): the adapter learns against exactly the vectors the index holds, and no
passage is sent to the endpoint again. Training queries are embedded through the endpoint once and cached.

The saved model is the adapter (``adapter.safetensors``) beside the endpoint's settings (``embx_api_adapter.json``,
never the key): :meth:`AdaptedApiEmbedder.load` reads it, and its ``encode(..., task="query")`` applies the
adapter to the endpoint's query vectors.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.embed_api import API_ADAPTER_FILE, ApiEmbedder, EmbeddingCache, api_cache_path
from runner.memo import api_embedding_key
from runner.models import FROZEN_DOCUMENTS

if TYPE_CHECKING:
    import torch

    from runner.spec import ApiModelSpec, Spec

ADAPTER_WEIGHTS = "adapter.safetensors"
"""The adapter's weight matrix in a saved API adapter folder (tensor ``weight``, d x d)."""


def api_identity(api: ApiModelSpec) -> str:
    """The model name an API model has in the store: ``api:<model>@<base URL>[#<dimensions>][~<fields>]``.

    ``<fields>`` is a short digest of the extra request fields (``query_extra_body``, ``passage_extra_body``),
    present only when either is set: they change the vectors, so scores made with other fields are not reused.
    """
    name = f"api:{api.model}@{api.base_url}" + (f"#{api.dimensions}" if api.dimensions else "")
    if api.query_extra_body or api.passage_extra_body:
        fields = json.dumps([api.query_extra_body, api.passage_extra_body], sort_keys=True)
        name += "~" + hashlib.sha256(fields.encode()).hexdigest()[:8]
    return name


def over_api(spec: Spec) -> bool:
    """True when the spec trains a query adapter over an API model's embeddings."""
    return spec.train.query_adapter is not None and spec.train.query_adapter.api is not None


def _api_of(spec: Spec) -> ApiModelSpec:
    """The API model of a spec that trains a query adapter over one."""
    assert spec.train.query_adapter is not None and spec.train.query_adapter.api is not None
    return spec.train.query_adapter.api


def api_spec(spec: Spec) -> Spec:
    """The spec as the run scores, mines and trains with: the API model's section in `model:`.

    The model is named by :func:`api_identity` (so base scores and mined negatives are its own in the store and
    the memo) and takes the API's prefixes and its input limit; `model.normalize` stays the spec's.
    """
    from runner.spec import ModelSpec

    api = _api_of(spec)
    model = ModelSpec(
        base=api_identity(api),
        max_seq_length=min(api.max_input_tokens, 8192),
        query_prefix=api.query_prefix,
        passage_prefix=api.passage_prefix,
        normalize=spec.model.normalize,
    )
    return spec.model_copy(update={"model": model})


def load_api_base(spec: Spec, *, corpus: list[str]) -> ApiEmbedder:
    """The API model the adapter trains over, once the cache is known to hold every corpus passage.

    Args:
        spec: The run's spec (``train.query_adapter.api`` set).
        corpus: The corpus passages, as the run evaluates them.

    Raises:
        runner.data.types.DataError: When the cache lacks a passage (it names the cache file, the count and the fix).
        runner.embed_api.ApiError: When the key's environment variable is not set.

    """
    from runner.data.types import DataError

    api = _api_of(spec)
    path = api_cache_path(spec.output.dir)
    texts = [api.passage_prefix + text for text in corpus]
    embedder = ApiEmbedder(api, cache=EmbeddingCache(path), model_key=api_embedding_key(api)) if path.exists() else None
    missing = len(set(texts)) - (embedder.cached(texts, task="document") if embedder is not None else 0)
    if missing:
        raise DataError(
            [
                f"{path}: {missing} of {len(set(texts))} corpus passages have no cached embedding from {api.model} at "
                f"{api.base_url} (train.query_adapter.api): the adapter learns against the vectors your index holds, "
                "so the corpus is embedded once, by the selection; run `embx select` on a spec listing this model as "
                "a candidate (the same base_url, model and dimensions, and this output.dir), then run again"
            ]
        )
    assert embedder is not None
    return embedder


class AdaptedApiEmbedder:
    """An API model with a linear adapter on its query vectors; passages are the endpoint's vectors, unchanged.

    It has the ``device``/``encode``/``parameters`` interface embx's evaluation, training checks and saving use.

    Args:
        embedder: The API model.
        adapter: The d x d map (no bias) applied to query vectors; None: none (the base model, kept).
        normalize: Queries are L2-normalised before the adapter (as the training saw them) and after it.

    """

    def __init__(self, embedder: ApiEmbedder, adapter: torch.nn.Linear | None, *, normalize: bool) -> None:
        self.embedder, self.adapter, self.normalize = embedder, adapter, normalize
        self.device = embedder.device
        self.prompts: dict[str, str] = {}
        setattr(self, FROZEN_DOCUMENTS, True)  # passages are the endpoint's vectors: scoring reuses the base's

    def parameters(self) -> Any:
        """The adapter's parameters (none when it has no adapter)."""
        return self.adapter.parameters() if self.adapter is not None else iter(())

    def eval(self) -> AdaptedApiEmbedder:
        """No-op (the interface of a torch module)."""
        return self

    def encode(
        self, sentences: list[str], *, task: str | None = None, normalize_embeddings: bool = False, **kwargs: Any
    ) -> torch.Tensor:
        """Embed through the endpoint (and its cache); ``task="query"`` texts go through the adapter."""
        import torch
        import torch.nn.functional as F

        out = self.embedder.encode(sentences, normalize_embeddings=self.normalize, task=task, **kwargs)
        if task == "query" and self.adapter is not None:
            with torch.no_grad():
                out = self.adapter(out.to(self.adapter.weight.device)).cpu()
            if self.normalize:
                out = F.normalize(out, dim=-1)
        return F.normalize(out, dim=-1) if normalize_embeddings else out

    def save(self, folder: str | Path) -> None:
        """Write the adapter and the endpoint's settings (the key's variable name, never the key) to `folder`."""
        import torch
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        api = self.embedder.api
        dim = self.embedder.dimension
        weight = self.adapter.weight.detach().cpu() if self.adapter is not None else torch.eye(int(dim or 0))
        save_file({"weight": weight.contiguous()}, str(folder / ADAPTER_WEIGHTS))
        settings = {
            "api": api.model_dump(mode="json"),
            "model_key": self.embedder.model_key,
            "normalize": self.normalize,
            "dim": int(weight.shape[0]),
            "prompts": self.prompts,
            "usage": "runner.api_adapter.AdaptedApiEmbedder.load(folder, cache=...).encode(texts, task='query')",
        }
        (folder / API_ADAPTER_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")
        (folder / "README.md").write_text(_card(api.model, api.base_url, int(weight.shape[0])), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, *, cache: str | Path) -> AdaptedApiEmbedder:
        """A saved adapter over its endpoint, with `cache` as the API embedding cache.

        Raises:
            runner.embed_api.ApiError: When the key's environment variable is not set.

        """
        import torch
        from safetensors.torch import load_file

        from runner.spec import ApiModelSpec

        settings = json.loads((Path(folder) / API_ADAPTER_FILE).read_text(encoding="utf-8"))
        api = ApiModelSpec.model_validate(settings["api"])
        embedder = ApiEmbedder(api, cache=EmbeddingCache(Path(cache)), model_key=api_embedding_key(api))
        weight = load_file(str(Path(folder) / ADAPTER_WEIGHTS))["weight"]
        adapter = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            adapter.weight.copy_(weight)
        adapter.requires_grad_(False)
        model = cls(embedder, adapter, normalize=settings["normalize"])
        model.prompts = settings.get("prompts", {})
        return model


def _card(model: str, base_url: str, dim: int) -> str:
    """The saved folder's README: what it is and how to use it."""
    return f"""# Query adapter over {model}

A {dim} x {dim} linear map trained by embx on the query side of the API model `{model}` ({base_url}).
Passages keep the endpoint's own vectors: a corpus already indexed with `{model}` needs no re-indexing.
Only queries change: embed them through the endpoint, then through the adapter.

```python
from runner.api_adapter import AdaptedApiEmbedder

model = AdaptedApiEmbedder.load("path/to/this/folder", cache="api-embeddings.sqlite")
q = model.encode(["your question"], task="query")  # search your existing index with these vectors
```

`adapter.safetensors` holds the map (tensor `weight`, applied as `q @ weight.T` to the L2-normalised query vector,
then normalised again when `normalize` is true in `{API_ADAPTER_FILE}`); the same file names the endpoint and the
environment variable of its key (never the key).
"""
