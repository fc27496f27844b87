"""The `select:` section: base-model candidates compared on the spec's own data before any training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from runner.spec.base import _Model, check_api_key_env
from runner.spec.model import ModelSpec


class ApiModelSpec(_Model):
    """An embedding model behind an OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, Azure, vLLM, TEI, ...)."""

    base_url: str = Field("https://api.openai.com/v1", description="Endpoint base URL (the part before /embeddings).")
    model: str = Field(..., description="Model name the endpoint serves, e.g. text-embedding-3-small.")
    dimensions: int | None = Field(
        None,
        ge=1,
        le=16384,
        description="Output dimensions asked for (models that can shorten their vectors); every answer is checked "
        "against it. null: the model's own size, checked to be the same in every answer.",
    )
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="Environment variable holding the API key (read at run time, never stored, logged or cached); "
        "null for an endpoint that needs none. Names must end in _API_KEY (or be listed in EMBX_API_KEY_ENVS).",
    )
    price_per_million_tokens: float = Field(
        0.0, ge=0, description="Price in your currency per million input tokens, for the cost columns (0: free)."
    )
    max_input_tokens: int = Field(8191, ge=1, description="Longest input the endpoint embeds, in its own tokens.")
    batch_size: int = Field(128, ge=1, le=2048, description="Texts per request (OpenAI accepts up to 2048).")
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")
    max_retries: int = Field(
        4, ge=0, le=20, description="Retries per request on timeouts, 429 and 5xx, with exponential backoff."
    )
    timeout_s: float = Field(60.0, gt=0, description="Seconds before a request times out.")
    query_prefix: str = Field("", description="Text put before every query (some models want an instruction).")
    passage_prefix: str = Field("", description="Text put before every passage.")
    query_extra_body: dict[str, str | int | float | bool] | None = Field(
        None,
        description="Fields added to the request body when queries are embedded, for endpoints that embed queries "
        "and passages differently: {input_type: query} (Voyage, NVIDIA NIM), {task: retrieval.query} (Jina). "
        "They take part in the model's name in the store and in the cache address of its vectors. null: none.",
    )
    passage_extra_body: dict[str, str | int | float | bool] | None = Field(
        None,
        description="Fields added to the request body when passages are embedded: {input_type: document} (Voyage), "
        "{input_type: passage} (NVIDIA NIM), {task: retrieval.passage} (Jina). null: none.",
    )

    @field_validator("query_extra_body", "passage_extra_body")
    @classmethod
    def _extra_body(cls, value: dict | None) -> dict | None:
        taken = sorted(set(value or {}) & {"model", "input", "encoding_format", "dimensions"})
        if taken:
            raise ValueError(
                f"{', '.join(taken)}: embx sets model, input, encoding_format and dimensions in every request "
                "itself (set the model and its dimensions with api.model and api.dimensions)"
            )
        return value or None

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, value: str | None) -> str | None:
        return check_api_key_env(value)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url {value!r} is not an http(s) URL")
        return value.rstrip("/")


class Candidate(_Model):
    """One base-model candidate: a local model (`model:`), a run's saved model (`run:`) or an API model (`api:`)."""

    label: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Unique name of the candidate in tables and the store.",
    )
    model: ModelSpec | None = Field(
        None,
        description="A model section as in `model:` (alias, local folder or hub id, pooling, max_seq_length, "
        "prefixes). With `run:`, its settings apply to the run's saved model and `base` is ignored.",
    )
    run: str | None = Field(
        None,
        description="A tuned model saved by an earlier run: a run id (or unique prefix) or an experiment name "
        "(its best saved model) in the results store.",
    )
    api: ApiModelSpec | None = Field(None, description="An API model; see `select.candidates.api` below.")
    languages: list[str] | None = Field(
        None,
        description="ISO 639-1 codes of the languages the model is made for (e.g. [en, zh]); queries detected in "
        "another language are counted in the table. null: not declared.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Candidate:
        kinds = [name for name in ("model", "run", "api") if getattr(self, name) is not None]
        if self.run is not None and self.api is None:
            return self
        if len(kinds) != 1:
            raise ValueError(
                f"candidate {self.label!r}: give exactly one of model (a local or hub model), run (a saved model) "
                f"or api (an endpoint); got {', '.join(kinds) or 'none'}"
            )
        return self

    @field_validator("languages")
    @classmethod
    def _codes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        out = [code.strip().lower() for code in value]
        bad = [code for code in out if not (len(code) in (2, 3) and code.isalpha())]
        if bad:
            raise ValueError(f"languages: {bad} are not ISO 639-1 codes (en, zh, de, ...)")
        return out

    @property
    def kind(self) -> Literal["local", "run", "api"]:
        """Local (a model section), run (an earlier run's saved model) or api."""
        return "api" if self.api is not None else "run" if self.run is not None else "local"


class SelectSpec(_Model):
    """Base-model selection: candidates evaluated side by side on this spec's data (`embx select`)."""

    candidates: list[Candidate] = Field(
        ..., min_length=1, description="The models to compare; each is one run (stage base) in the store."
    )
    queries_per_month: int = Field(
        100_000, ge=0, description="Queries a month the RAG system will serve, for the projected API cost."
    )
    then: Literal["none", "tune"] = Field(
        "none",
        description="tune: after the selection, fine-tune the chosen candidate as `model.base` with this spec's "
        "training (as `embx select --tune`).",
    )
    throughput_sample: int = Field(
        256, ge=8, le=100_000, description="Corpus passages encoded to measure a local model's speed."
    )

    @field_validator("candidates")
    @classmethod
    def _unique(cls, value: list[Candidate]) -> list[Candidate]:
        seen: set[str] = set()
        for candidate in value:
            if candidate.label in seen:
                raise ValueError(f"two candidates have the label {candidate.label!r}: labels must be unique")
            seen.add(candidate.label)
        return value
