"""The `model:` section: the base model and how it embeds text."""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Literal

from pydantic import Field

from runner.spec.base import _Model


class ModelSpec(_Model):
    """The base model to fine-tune and how it turns text into one vector."""

    base: str = Field(
        "all-MiniLM-L6-v2",
        description="Built-in offline alias (all-MiniLM-L6-v2), a local model folder, or a Hugging Face hub id.",
    )
    pooling: Literal["mean", "cls", "last_token"] | None = Field(
        None,
        description="Pooling of token embeddings. null keeps the model's own pooling; a value that differs "
        "from the model's is applied and reported.",
    )
    max_seq_length: int = Field(256, ge=8, le=8192, description="Tokens per text; longer texts are truncated.")
    query_prefix: str = Field("", description="Text put before every query, e.g. a bge retrieval instruction.")
    passage_prefix: str = Field("", description="Text put before every passage.")
    normalize: bool = Field(True, description="L2-normalise embeddings, so dot product is cosine similarity.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")


API_MODELS: dict[str, tuple[str, ...]] = {
    "OpenAI": ("openai/text-embedding-*", "text-embedding-3-*", "text-embedding-ada-*"),
    "Voyage AI": ("voyage-*", "voyageai/voyage-*"),
    "Cohere": ("embed-english-*", "embed-multilingual-*", "embed-v4*", "cohere/embed-*"),
    "Google": ("gemini-embedding-*", "text-embedding-00*", "models/text-embedding-*", "textembedding-gecko*"),
    "Mistral": ("mistral-embed*",),
    "Amazon Bedrock": ("amazon.titan-embed-*",),
}
"""Names of embedding models served only through an API (no weights to fine-tune), by provider."""


def api_provider(name: str) -> str | None:
    """The provider whose API serves the model `name` (case-insensitive), or None for a model with weights."""
    lowered = name.strip().lower()
    return next((who for who, patterns in API_MODELS.items() if any(fnmatch(lowered, p) for p in patterns)), None)
